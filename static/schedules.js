// Schedules: the list from /api/schedules (text only), and the admin actions
// (pause, resume, run now, delete, define) through the admin API with the CSRF token.
(function () {
  "use strict";
  const m = window.mopq;
  if (!m) return;
  const REFRESH_GAP_MS = 5000;
  const panel = document.getElementById("schedules-panel");
  const form = document.getElementById("define-form");
  const mayAct = panel.dataset.admin === "yes";
  const whyNot = panel.dataset.whyNot || "";
  let lastRefresh = 0;
  let shown = {};

  const say = m.say;

  function refused(answer) {
    return (answer.data && answer.data.error) || "HTTP " + answer.status;
  }

  function path(name, action) {
    return "/api/schedules/" + encodeURIComponent(name) + (action ? "/" + action : "");
  }

  function timing(schedule) {
    const when = schedule.every
      ? m.el("span", {}, "every " + m.seconds(schedule.every))
      : m.el("span", {}, m.el("code", {}, schedule.cron || "?"), " " + (schedule.timezone || "UTC"));
    return [when, m.el("div", { className: "note" }, "catch-up " + schedule.catch_up)];
  }

  function outcome(schedule) {
    const parts = [];
    if (schedule.last_outcome) {
      const kind = schedule.last_outcome === "error" ? "dead"
        : schedule.last_outcome === "written" ? "done" : "delayed";
      parts.push(m.el("span", { className: "badge state-" + kind }, schedule.last_outcome));
    } else {
      parts.push(m.el("span", { className: "note" }, "not run yet"));
    }
    if (schedule.last_error) parts.push(m.el("div", { className: "warning-text" }, schedule.last_error));
    const skipped = schedule.last_skipped;
    if (skipped) {
      parts.push(m.el("div", { className: "note" }, "skipped " + m.number(skipped.count) +
        " missed tick(s) ", m.timeElement(skipped.at)));
    }
    return parts;
  }

  function button(label, action, name, classes) {
    const node = m.el("button", { type: "button", className: "small " + (classes || ""),
      dataset: { action: action, name: name } }, label);
    if (!mayAct) { node.disabled = true; node.title = whyNot; }
    return node;
  }

  function row(schedule) {
    const name = schedule.name;
    const state = schedule.paused ? m.el("span", { className: "badge state-stopped" }, "paused")
      : schedule.firing ? m.el("span", { className: "badge state-inflight" }, "firing")
        : m.el("span", { className: "badge state-running" }, "active");
    const next = schedule.paused ? m.el("span", { className: "note" }, "paused")
      : schedule.next_run ? m.timeElement(schedule.next_run)
        : m.el("span", { className: "note" }, "never (no such time comes)");
    const message = schedule.last_message
      ? m.el("a", { className: "mono", href: "/search?id=" + encodeURIComponent(schedule.last_message) },
        schedule.last_message)
      : m.el("span", { className: "note" }, "—");
    return m.el("tr", { dataset: { schedule: name } },
      m.el("td", { className: "lead" }, m.el("strong", {}, name),
        m.el("div", { className: "note" }, "from " + schedule.source)),
      m.el("td", {}, ...timing(schedule)),
      m.el("td", {}, m.el("a", { href: "/queues/" + encodeURIComponent(schedule.queue) }, schedule.queue)),
      m.el("td", { className: "next-run" }, next),
      m.el("td", { className: "last-run" }, m.timeElement(schedule.last_run),
        schedule.last_trigger === "manual" ? m.el("div", { className: "note" }, "run now") : null),
      m.el("td", { className: "last-message" }, message),
      m.el("td", { className: "outcome" }, ...outcome(schedule)),
      m.el("td", { className: "state" }, state),
      m.el("td", {}, m.el("div", { className: "schedule-actions" },
        schedule.paused ? button("Resume", "resume", name) : button("Pause", "pause", name, "secondary"),
        button("Run now", "run", name),
        button("Edit", "edit", name, "secondary"),
        button("Delete", "delete", name, "secondary"))));
  }

  async function load() {
    lastRefresh = Date.now();
    const line = document.getElementById("schedules-status");
    const answer = await m.api("/api/schedules?per_page=200");
    if (!answer.ok || !answer.data) {
      line.className = "status-line error";
      line.textContent = "Cannot load the schedules: " + refused(answer);
      return;
    }
    const items = answer.data.items || [];
    shown = {};
    items.forEach(function (schedule) { shown[schedule.name] = schedule; });
    line.className = "status-line";
    line.textContent = "";
    const body = document.getElementById("schedule-rows");
    body.replaceChildren(...items.map(row));
    m.labelCells(body);
    document.getElementById("schedules-empty").hidden = items.length > 0;
    panel.hidden = items.length === 0;
  }

  const VERBS = { pause: "paused", resume: "resumed", run: "run now", delete: "deleted" };

  async function act(action, name) {
    if (action === "delete" && !await m.confirmAction("Delete schedule " + name + "?",
      "It stops firing and its definition is removed; messages it wrote stay.")) return;
    const answer = action === "delete"
      ? await m.api(path(name), { method: "DELETE", body: {} })
      : await m.api(path(name, action), { body: {} });
    if (!answer.ok) { say(false, "Refused: " + refused(answer)); return; }
    const count = (answer.data && answer.data.count) || 0;
    if (action === "run") {
      say(count > 0, count > 0 ? "Schedule " + name + ": message written."
        : "Schedule " + name + ": the message could not be written (see its outcome).");
    } else {
      say(true, "Schedule " + name + (count > 0 ? " " + VERBS[action] + "."
        : ": nothing to change (already " + VERBS[action] + ")."));
    }
    await load();
  }

  function showKind() {
    const kind = form.elements.kind.value;
    form.querySelectorAll("[data-kind]").forEach(function (node) {
      node.hidden = node.dataset.kind !== kind;
    });
  }

  function edit(name) {
    const schedule = shown[name];
    if (!schedule) return;
    const fields = form.elements;
    fields.name.value = schedule.name;
    fields.queue.value = schedule.queue;
    fields.kind.value = schedule.every ? "every" : "cron";
    if (schedule.every) fields.every.value = schedule.every;
    else { fields.cron.value = schedule.cron; fields.timezone.value = schedule.timezone || "UTC"; }
    fields.catch_up.value = schedule.catch_up;
    fields.routing_key.value = schedule.routing_key || "";
    fields.priority.value = schedule.priority || 0;
    fields.body.value = JSON.stringify(schedule.body || {}, null, 2);
    showKind();
    document.getElementById("define-title").textContent = "Replace schedule " + name;
    form.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function definition() {
    const fields = form.elements;
    let body;
    try { body = JSON.parse(fields.body.value || "{}"); } catch (error) {
      throw new Error("the body is not valid JSON: " + error.message);
    }
    const wanted = { queue: fields.queue.value.trim(), body: body, catch_up: fields.catch_up.value };
    if (fields.kind.value === "every") {
      wanted.every = Number(fields.every.value);
    } else {
      wanted.cron = fields.cron.value.trim().split(/\s+/).join(" ");
      wanted.timezone = fields.timezone.value.trim() || "UTC";
    }
    if (fields.routing_key.value.trim()) wanted.routing_key = fields.routing_key.value.trim();
    if (fields.priority.value.trim()) wanted.priority = Number(fields.priority.value);
    return wanted;
  }

  async function define() {
    const name = form.elements.name.value.trim();
    if (!name) { say(false, "Give the schedule a name."); return; }
    let wanted;
    try { wanted = definition(); } catch (error) { say(false, error.message); return; }
    const answer = await m.api(path(name), { method: "PUT", body: wanted });
    if (!answer.ok) { say(false, "Refused: " + refused(answer)); return; }
    say(true, "Schedule " + name + " defined.");
    await load();
  }

  document.addEventListener("click", function (event) {
    const target = event.target.closest("button[data-action]");
    if (!target || target.disabled) return;
    const action = target.dataset.action;
    if (action === "define") define();
    else if (action === "edit") edit(target.dataset.name);
    else if (VERBS[action]) act(action, target.dataset.name);
  });
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  form.elements.kind.addEventListener("change", showKind);
  showKind();
  load();
  m.onStats(function (snapshot) {
    if (!snapshot.engine_error && Date.now() - lastRefresh > REFRESH_GAP_MS) load();
  });
})();
