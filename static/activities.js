// Activities: definitions as chains of steps with their figures, instances
// (stuck first), and batches' stacked progress bars (widths set through the
// CSSOM, which the CSP allows, never through style attributes), refreshed from
// /api/activities when a /live push says something changed.
(function () {
  "use strict";
  const m = window.mopq;
  if (!m) return;
  const REFRESH_GAP_MS = 2000;
  let lastRefresh = 0;
  let busy = false;

  function share(part, total) { return total ? Math.min(100, (part / total) * 100) : 0; }

  function drawBar(section) {
    const total = parseInt(section.dataset.total, 10) || 0;
    const done = parseInt(section.dataset.done, 10) || 0;
    const failed = parseInt(section.dataset.failed, 10) || 0;
    section.querySelector(".bar .done").style.width = share(done, total) + "%";
    section.querySelector(".bar .failed").style.width = share(failed, total) + "%";
  }

  function field(name, text) {
    return m.el("strong", { dataset: { field: name } }, text);
  }

  // How long the rate is averaged over (the server's, in data-rate-minutes).
  function rateMinutes() {
    const list = document.getElementById("activities");
    return (list && parseInt(list.dataset.rateMinutes, 10)) || 5;
  }

  // "Time left at that rate": none once finished; a dash, and why, without a rate.
  function timeLeft(a) {
    if (a.complete) return [field("seconds_left", "none"), " \u2014 finished"];
    const parts = [field("seconds_left", m.seconds(a.seconds_left))];
    if (a.seconds_left === null || a.seconds_left === undefined) {
      parts.push(m.el("span", { className: "note why" }, "nothing was done in the last " +
        rateMinutes() + " minutes, so there is no rate to estimate from"));
    }
    return parts;
  }

  function buildSection(a) {
    const percent = a.total ? ((a.done + a.failed) / a.total) * 100 : 100;
    const section = m.el("section", {
      className: "panel activity",
      dataset: { activity: a.activity, done: a.done, failed: a.failed, total: a.total },
    },
    m.el("div", { className: "panel-head" },
      m.el("h2", {}, a.activity),
      m.el("span", { className: "badge state-" + (a.complete ? "done" : "running") },
        a.complete ? "done" : "running"),
      m.el("span", { className: "spacer" }),
      m.el("span", { className: "note", dataset: { field: "percent" } }, percent.toFixed(1) + " %")),
    m.el("div", { className: "bar", role: "img",
      "aria-label": a.done + " done, " + a.failed + " failed of " + a.total },
    m.el("span", { className: "done" }), m.el("span", { className: "failed" })),
    m.el("div", { className: "activity-meta" },
      m.el("span", {}, field("done", m.number(a.done)), " done"),
      m.el("span", {}, field("failed", m.number(a.failed)), " dead"),
      m.el("span", {}, field("left", m.number(a.left)), " left of ", field("total", m.number(a.total)))),
    m.el("dl", { className: "facts activity-rate" },
      m.el("dt", {}, "Rate"),
      m.el("dd", {}, field("done_per_second", m.number(a.done_per_second)),
        " done per second over the last " + rateMinutes() + " minutes"),
      m.el("dt", {}, "Time left at that rate"),
      m.el("dd", {}, ...timeLeft(a))));
    drawBar(section);
    return section;
  }

  // A step's figures, as the template's figures() macro writes them.
  function figures(f) {
    const cell = function (label, name, text, bad) {
      return m.el("div", {}, m.el("dt", {}, label),
        m.el("dd", { dataset: { field: name }, className: bad ? "bad" : "" }, text));
    };
    return m.el("dl", { className: "step-figures" },
      cell("waiting", "waiting", m.number(f.waiting)), cell("running", "running", m.number(f.running)),
      cell("done", "done", m.number(f.done)), cell("failed", "failed", m.number(f.failed)),
      cell("dead", "dead", m.number(f.dead), f.dead > 0),
      cell("done/s", "done_per_second", m.number(f.done_per_second)),
      cell("p95", "p95_seconds", m.seconds(f.p95_seconds)));
  }

  function buildStep(step) {
    const item = m.el("li", { className: "step", dataset: { step: step.name } },
      m.el("div", { className: "step-head" }, m.el("strong", {}, step.name),
        step.fan_out ? " " : null, step.fan_out ? m.el("span", { className: "badge" }, "fan-out") : null),
      m.el("div", { className: "mono note" }, step.queue), figures(step));
    if (step.compensation) {
      item.appendChild(m.el("div", { className: "undo" },
        m.el("span", { className: "note" }, "undo: ", m.el("span", { className: "mono" }, step.compensation.queue)),
        figures(step.compensation)));
    }
    (step.warnings || []).forEach(function (w) { item.appendChild(m.el("div", { className: "warning-text" }, w)); });
    return item;
  }

  function buildDefinition(d) {
    const head = m.el("div", { className: "panel-head" }, m.el("h2", {}, d.name), m.el("span", { className: "spacer" }));
    Object.entries(d.instances || {}).forEach(function ([status, count]) {
      if (count) head.append(m.el("span", { className: "badge state-" + status, dataset: { status: status } },
        m.number(count) + " " + status), " ");
    });
    return m.el("section", { className: "panel definition", dataset: { definition: d.name } }, head,
      m.el("ol", { className: "chain" }, ...d.steps.map(buildStep)));
  }

  function buildInstance(i) {
    const link = m.el("a", { href: "/activities/" + encodeURIComponent(i.activity) + "/" + encodeURIComponent(i.key) },
      i.activity + " \u00b7 " + i.key);
    return m.el("tr", { dataset: { status: i.status } },
      m.el("td", {}, m.el("span", { className: "badge state-" + i.status }, i.status)),
      m.el("td", { className: "lead" }, link),
      m.el("td", {}, i.step || "\u2014"),
      m.el("td", { className: "num" }, m.number(i.attempts)),
      m.el("td", {}, m.timeElement(i.started_at)),
      m.el("td", {}, m.timeElement(i.updated_at)),
      m.el("td", { className: "wide" }, i.last_error || ""));
  }

  function showSequences(answer) {
    const definitions = answer.definitions || [];
    const instances = answer.instances || [];
    document.getElementById("definitions").replaceChildren(...definitions.map(buildDefinition));
    const rows = document.getElementById("instance-rows");
    rows.replaceChildren(...instances.map(buildInstance));
    m.labelCells(rows);
    document.getElementById("instances-panel").hidden = instances.length === 0;
    return definitions.length;
  }

  // At most one read per REFRESH_GAP_MS, and never none after the last push: a push
  // that arrives during the gap is answered once the gap is over.
  let later = null;
  function refreshSoon() {
    const wait = lastRefresh + REFRESH_GAP_MS - Date.now();
    if (wait <= 0 && !busy) { refresh(); return; }
    if (!later) later = setTimeout(function () { later = null; refreshSoon(); }, Math.max(wait, 100));
  }

  async function refresh() {
    busy = true;
    lastRefresh = Date.now();
    const answer = await m.api("/api/activities?per_page=200");
    busy = false;
    if (!answer.ok || !answer.data) return;
    const rows = Array.isArray(answer.data) ? answer.data : answer.data.items;
    if (!Array.isArray(rows)) return;
    document.getElementById("activities").replaceChildren(...rows.map(buildSection));
    const sequences = showSequences(answer.data);
    document.getElementById("activities-empty").hidden = rows.length + sequences > 0;
  }

  const list = document.getElementById("activities");
  if (!list) return;
  list.querySelectorAll("section.activity").forEach(drawBar);
  m.onStats(function (snapshot) { if (!snapshot.engine_error) refreshSoon(); });
})();
