// The queue page's operating panels: its policy (each value and where it comes from,
// editable by admins), pause and resume, and a browser of its messages by state with
// cancel, move to the front and move to another queue. Everything goes through the
// JSON API (dashboard/queue_control.py); the page holds no rule of its own.
(function () {
  "use strict";
  const m = window.mopq;
  const policyPanel = document.getElementById("queue-policy");
  const browsePanel = document.getElementById("queue-browse");
  if (!policyPanel || !browsePanel) return;
  const name = policyPanel.dataset.queue;
  const isAdmin = policyPanel.dataset.admin === "yes";
  const base = "/api/queues/" + encodeURIComponent(name);

  const say = m.say;

  function refused(answer) {
    return (answer.data && answer.data.error) || "HTTP " + answer.status;
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  // -- policy -----------------------------------------------------------------------------

  async function loadPolicy() {
    const answer = await m.api(base + "/policy");
    if (!answer.ok) { say(false, "Policy not loaded: " + refused(answer)); return; }
    const view = answer.data;
    const rows = policyPanel.querySelector("#policy-table tbody");
    rows.replaceChildren();
    Object.entries(view.fields).forEach(function ([field, shown]) {
      const source = shown.from === "stored"
        ? "stored by " + shown.by + (shown.who ? " " + shown.who : "") + (shown.at ? ", " + when(shown.at) : "")
        : "default" + (shown.default === null ? " (none)" : "") + ", unless a consumer's code sets it";
      const value = isAdmin
        ? m.el("input", { type: "number", step: "any", name: field, size: 8,
            value: shown.from === "stored" ? String(shown.value) : "",
            placeholder: shown.default === null ? "none" : String(shown.default),
            "aria-label": field })
        : (shown.value === null ? "none" : m.number(shown.value));
      rows.appendChild(m.el("tr", { dataset: { field: field } },
        m.el("td", { className: "lead", title: shown.meaning }, field.replaceAll("_", " ")),
        m.el("td", {}, value), m.el("td", { className: "note" }, source)));
    });
    const badge = document.getElementById("paused-badge");
    badge.hidden = !view.paused;
    if (view.paused) {
      badge.textContent = "paused by " + view.paused.who + " at " + when(view.paused.at) +
        (view.paused.reason ? " (" + view.paused.reason + ")" : "");
    }
    const minute = view.rate_limit.last_minute, hour = view.rate_limit.last_hour;
    document.getElementById("rate-waits").textContent = view.fields.rate_limit_max.value === null
      ? "No rate limit."
      : "Rate limit: " + view.fields.rate_limit_max.value + " claims per " +
        view.fields.rate_limit_per_seconds.value + " s. Claims waited for it " + minute.waited +
        " time(s) in the last minute (" + minute.granted + " granted), " + hour.waited +
        " in the last hour (" + hour.granted + " granted).";
  }

  async function savePolicy() {
    const changes = {};
    policyPanel.querySelectorAll("#policy-table input").forEach(function (input) {
      changes[input.name] = input.value === "" ? null : Number(input.value);
    });
    const answer = await m.api(base + "/policy", { method: "PUT", body: changes });
    say(answer.ok, answer.ok ? "Policy saved." : "Policy refused: " + refused(answer));
    loadPolicy();
  }

  function onClick(action, run) {
    const button = document.querySelector('button[data-action="' + action + '"]');
    if (button && !button.disabled) button.addEventListener("click", run);
  }

  onClick("save-policy", savePolicy);
  onClick("pause", async function () {
    const answer = await m.api(base + "/pause", { body: {} });
    say(answer.ok, answer.ok ? (answer.data.count ? "Paused: no claims until resumed."
      : "It was paused already.") : "Pause refused: " + refused(answer));
    loadPolicy();
  });
  onClick("resume", async function () {
    const answer = await m.api(base + "/resume", { body: {} });
    say(answer.ok, answer.ok ? (answer.data.count ? "Resumed." : "It was not paused.")
      : "Resume refused: " + refused(answer));
    loadPolicy();
  });

  // -- browse -----------------------------------------------------------------------------

  let state = "pending";
  let after = null;
  const table = browsePanel.querySelector("#browse-table tbody");
  const more = document.getElementById("browse-more");
  const documentView = document.getElementById("browse-document");

  async function act(path, body, done) {
    const answer = await m.api(base + path, { body: body });
    say(answer.ok, answer.ok ? done : "Refused: " + refused(answer));
    loadPage(true);
  }

  function actions(row) {
    if (!isAdmin) return null;
    const cell = m.el("td", { className: "actions" });
    const button = function (label, run) {
      cell.appendChild(m.el("button", { type: "button", onclick: run }, label));
    };
    const typed = function (id, missing) {
      const value = document.getElementById(id).value.trim();
      if (!value) say(false, missing);
      return value;
    };
    if (state !== "dead") {
      button("Cancel", async function () {
        const reason = typed("cancel-reason", "Write a cancel reason first: it is kept with the " +
          "message and told to its worker.");
        if (!reason) return;
        const sure = await m.confirmAction("Cancel " + row.id + "?", state === "inflight"
          ? "Its worker is refused at its next extend, progress or acknowledgement."
          : "It is removed and counted as cancelled.");
        if (sure) act("/cancel", { ids: [row.id], reason: reason }, "Cancelled " + row.id + ".");
      });
    }
    if (state === "pending" || state === "delayed") {
      button("To front", function () { act("/messages/" + row.id + "/front", {}, row.id + " is next."); });
    }
    if (state !== "inflight") {
      button("Move", function () {
        const target = typed("move-target", "Write the queue to move it to first.");
        if (target) act("/messages/" + row.id + "/move", { to: target }, "Moved to " + target + ".");
      });
    }
    return cell;
  }

  async function showDocument(id) {
    const answer = await m.api("/api/messages/" + id);
    documentView.hidden = false;
    documentView.textContent = answer.ok ? JSON.stringify(answer.data, null, 2) : refused(answer);
  }

  async function loadPage(fresh) {
    if (fresh) after = null;
    const query = new URLSearchParams({ state: state, limit: "50" });
    const routing = document.getElementById("browse-routing").value.trim();
    if (routing) query.set("routing_key", routing);
    if (after) query.set("after", after);
    const answer = await m.api(base + "/browse?" + query.toString());
    if (!answer.ok) { say(false, "Messages not loaded: " + refused(answer)); return; }
    if (fresh) table.replaceChildren();
    answer.data.items.forEach(function (row) {
      const holder = state === "inflight"
        ? (row.worker || "?") + " until " + when(row.lease_ends_at) +
          (row.progress !== null && row.progress !== undefined ? " · " + m.percent(row.progress) : "")
        : state === "dead" ? (row.last_error || "") : "";
      const link = m.el("a", { href: "#" + row.id, onclick: function (event) {
        event.preventDefault(); showDocument(row.id);
      } }, m.el("code", {}, row.id));
      table.appendChild(m.el("tr", {},
        m.el("td", { className: "lead", dataset: { label: "Id" } }, link),
        m.el("td", { dataset: { label: "Body" } }, m.el("code", {}, row.preview)),
        m.el("td", { className: "num", dataset: { label: "Priority" } }, m.number(row.priority || 0)),
        m.el("td", { className: "num", dataset: { label: "Attempts" } }, m.number(row.attempts || 0)),
        m.el("td", { dataset: { label: "Held by / error" } }, holder),
        actions(row)));
    });
    if (!table.children.length) {
      table.appendChild(m.el("tr", {}, m.el("td", { colSpan: 6, className: "note" },
        "No " + state + " messages" + (routing ? " with routing key " + routing : "") + ".")));
    }
    after = answer.data.next;
    more.hidden = !after;
  }

  document.querySelectorAll("#browse-states button").forEach(function (tab) {
    tab.addEventListener("click", function () {
      document.querySelectorAll("#browse-states button").forEach(function (other) {
        other.setAttribute("aria-pressed", "false");
      });
      tab.setAttribute("aria-pressed", "true");
      state = tab.dataset.state;
      loadPage(true);
    });
  });
  document.getElementById("browse-routing").addEventListener("change", function () { loadPage(true); });
  more.addEventListener("click", function () { loadPage(false); });

  loadPolicy();
  loadPage(true);
})();
