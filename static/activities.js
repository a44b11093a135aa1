// Activities: stacked progress bars (widths set through the CSSOM, which the
// CSP allows, never through style attributes), refreshed from /api/activities
// when a /live push says something changed.
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

  async function refresh() {
    const now = Date.now();
    if (busy || now - lastRefresh < REFRESH_GAP_MS) return;
    busy = true;
    lastRefresh = now;
    const answer = await m.api("/api/activities?per_page=200");
    busy = false;
    if (!answer.ok || !answer.data) return;
    const rows = Array.isArray(answer.data) ? answer.data : answer.data.items;
    if (!Array.isArray(rows)) return;
    document.getElementById("activities").replaceChildren(...rows.map(buildSection));
    document.getElementById("activities-empty").hidden = rows.length > 0;
  }

  const list = document.getElementById("activities");
  if (!list) return;
  list.querySelectorAll("section.activity").forEach(drawBar);
  m.onStats(function (snapshot) { if (!snapshot.engine_error) refresh(); });
})();
