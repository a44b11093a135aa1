// Audit: the admin actions from /api/audit, newest first, as text only.
(function () {
  "use strict";
  const m = window.mopq;
  if (!m) return;
  const REFRESH_GAP_MS = 5000;
  let lastRefresh = 0;

  // target: {queue} | {ids: [...]} | {all_matching, queue, error, state} | {schedule, queue}
  function target(entry) {
    const what = entry.target || {};
    const parts = [];
    if (what.schedule) parts.push("schedule " + what.schedule);
    if (what.ids) parts.push(what.ids.length + " selected id(s)");
    if (what.all_matching) parts.push("all matching");
    if (what.queue) parts.push("queue " + what.queue);
    if (what.error) parts.push("error containing \u201c" + what.error + "\u201d");
    if (what.state && what.all_matching) parts.push(what.state);
    if (what.worker) parts.push("worker " + what.worker);
    return parts.join(" · ") || "everything";
  }

  function row(entry) {
    const who = entry.who || {};
    const outcome = entry.status === "failed" ? "failed: " + (entry.error || "?")
      : entry.status === "started" ? "did not finish" : null;
    return m.el("tr", {},
      m.el("td", {}, m.timeElement(entry.at)),
      m.el("td", {}, String(who.name || "?"), m.el("div", { className: "note" }, String(who.via || ""))),
      m.el("td", {}, m.el("span", { className: "badge" }, String(entry.action || "?")),
        outcome ? m.el("div", { className: "warning-text" }, outcome) : null),
      m.el("td", { className: "wide" }, target(entry)),
      m.el("td", { className: "num" }, entry.count === null || entry.count === undefined
        ? "—" : m.number(entry.count)));
  }

  async function load() {
    lastRefresh = Date.now();
    const status = document.getElementById("audit-status");
    const answer = await m.api("/api/audit?per_page=100");
    if (!answer.ok || !answer.data) {
      status.className = "status-line error";
      status.textContent = "Cannot load the audit log: " +
        ((answer.data && answer.data.error) || "HTTP " + answer.status);
      return;
    }
    const entries = answer.data.items || [];
    status.textContent = "";
    const body = document.getElementById("audit-rows");
    body.replaceChildren(...entries.map(row));
    m.labelCells(body);
    document.getElementById("audit-empty").hidden = entries.length > 0;
    document.getElementById("audit-panel").hidden = entries.length === 0;
  }

  load();
  m.onStats(function (snapshot) {
    if (!snapshot.engine_error && Date.now() - lastRefresh > REFRESH_GAP_MS) load();
  });
})();
