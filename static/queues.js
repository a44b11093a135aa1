// Queues list and one queue's page: counts kept current from the /live
// pushes, rates and warnings refreshed from /api/queues when a push says
// something changed, the history chart, and the confirmed purge.
(function () {
  "use strict";
  const m = window.mopq;
  const charts = window.mopqCharts;
  if (!m) return;

  const COUNT_FIELDS = ["pending", "inflight", "delayed", "done", "failed", "dead"];
  const REFRESH_GAP_MS = 5000;
  let lastRefresh = 0;
  let refreshing = false;

  function queueUrl(name) { return "/queues/" + encodeURIComponent(name); }

  function cellText(field, row) {
    if (field === "oldest_pending_age_seconds") {
      return row.pending ? m.seconds(row.oldest_pending_age_seconds) : "—";
    }
    if (field === "drain_seconds") return m.seconds(row.drain_seconds);
    if (field === "warnings") return (row.warnings || []).join("; ");
    return m.number(row[field]);
  }

  // Queues list: one row per queue, rebuilt from /api/queues rows.
  // As templates/queues.html draws it: who paused the queue, and when.
  function pausedBadge(paused) {
    if (!paused) return null;
    return m.el("span", { className: "badge paused", title: "paused by " + paused.who + " at " +
      m.absolute(new Date(paused.at)) + (paused.reason ? ": " + paused.reason : "") },
    "paused by " + paused.who + ", " + m.ago(new Date(paused.at)));
  }

  function buildRow(row) {
    const deadCell = row.dead
      ? m.el("a", { href: "/failed?queue=" + encodeURIComponent(row.name) }, m.number(row.dead))
      : "0";
    return m.el("tr", { dataset: { queue: row.name } },
      m.el("td", { className: "lead" }, m.el("a", { href: queueUrl(row.name) }, row.name),
        pausedBadge(row.paused)),
      ...["pending", "inflight", "delayed", "done", "failed"].map(function (field) {
        return m.el("td", { className: "num", dataset: { field: field } }, cellText(field, row));
      }),
      m.el("td", { className: "num", dataset: { field: "dead" } }, deadCell),
      ...["oldest_pending_age_seconds", "done_per_second", "drain_seconds", "workers"].map(
        function (field) {
          return m.el("td", { className: "num", dataset: { field: field } }, cellText(field, row));
        }),
      m.el("td", { className: "warning-text wide", dataset: { field: "warnings" } },
        cellText("warnings", row)));
  }

  function updateCounts(queues) {
    document.querySelectorAll("tr[data-queue]").forEach(function (tr) {
      const row = queues[tr.dataset.queue];
      if (!row) return;
      COUNT_FIELDS.concat(["oldest_pending_age_seconds"]).forEach(function (field) {
        const cell = tr.querySelector('[data-field="' + field + '"]');
        if (cell && !cell.querySelector("a")) cell.textContent = cellText(field, row);
      });
    });
  }

  async function refreshList() {
    const now = Date.now();
    if (refreshing || now - lastRefresh < REFRESH_GAP_MS) return;
    refreshing = true;
    lastRefresh = now;
    const answer = await m.api("/api/queues?per_page=200");
    refreshing = false;
    if (!answer.ok || !answer.data) return;
    const rows = Array.isArray(answer.data) ? answer.data : answer.data.items;
    if (!Array.isArray(rows)) return;
    const body = document.getElementById("queue-rows");
    body.replaceChildren(...rows.map(buildRow));
    m.labelCells(body);
    document.getElementById("queues-empty").hidden = rows.length > 0;
    document.getElementById("queues-panel").hidden = rows.length === 0;
  }

  function setupList() {
    if (!document.getElementById("queue-rows")) return;
    m.onStats(function (snapshot) {
      if (snapshot.engine_error) return;
      updateCounts(snapshot.queues);
      const known = document.querySelectorAll("tr[data-queue]").length;
      if (Object.keys(snapshot.queues).length !== known) lastRefresh = 0;
      refreshList();
    });
  }

  // One queue: its cards follow the pushes.
  function setupCards() {
    const cards = document.getElementById("queue-cards");
    if (!cards) return;
    const name = cards.dataset.queue;
    m.onStats(function (snapshot) {
      const row = snapshot.queues && snapshot.queues[name];
      if (!row) return;
      COUNT_FIELDS.concat(["oldest_pending_age_seconds"]).forEach(function (field) {
        const node = cards.querySelector('[data-field="' + field + '"]');
        if (node) node.textContent = cellText(field, row);
      });
    });
  }

  function setupHistory() {
    const node = document.getElementById("history-chart");
    const history = node && m.readJSON(node, "history");
    if (!history || !charts) return;
    // Every bucket of the window, those without events too: each series is a step
    // line on the same times (a count holds from its bucket's start to the next),
    // and the axis spans exactly the window the range button names.
    const step = history.step;
    const first = Math.floor(history.since / step) * step;
    const x = [];
    const at = new Map();
    for (let t = first; t <= history.until; t += step) { at.set(t, x.length); x.push(new Date(t)); }
    function dense(values, missing) {
      const out = x.map(function () { return missing; });
      history.t.forEach(function (t, index) {
        if (at.has(t)) out[at.get(t)] = values[index];
      });
      return out;
    }
    const counts = ["written", "acked", "failed", "dead"].map(function (kind) {
      return charts.line(kind, x, dense(history.counts[kind], 0), charts.COLORS[kind]);
    });
    const durations = ["p50", "p95"].map(function (name) {
      return charts.line("handler " + name, x, dense(history.duration_seconds[name], null),
        charts.COLORS[name], { yaxis: "y2", mode: "lines+markers", marker: { size: 4 },
          connectgaps: false,
          line: { color: charts.COLORS[name], width: 1.5, dash: "dot", shape: "hv" } });
    });
    charts.draw(node, counts.concat(durations), {
      height: 300,
      xaxis: charts.timeAxis(history.since, history.until,
        step >= charts.HOUR ? "%b %-d, %H:00" : "%b %-d, %H:%M"),
      yaxis: { title: { text: "messages per " + (step >= charts.HOUR ? "hour" : "minute") } },
      yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false,
        zeroline: false, title: { text: "handler seconds" }, tickformat: ".2~f" },
    });
  }

  function setupPurge() {
    const button = document.querySelector('button[data-action="purge"]');
    const status = document.getElementById("action-status");
    if (!button || button.disabled) return;
    button.addEventListener("click", async function () {
      const name = button.dataset.queue;
      const sure = await m.confirmAction("Purge " + name + "?",
        "Every pending, delayed and dead message of this queue is removed (messages in flight are " +
        "left to finish). This cannot be undone.", name);
      if (!sure) return;
      button.disabled = true;
      const answer = await m.api(queueUrl(name).replace("/queues/", "/api/queues/") + "/purge",
        { body: { confirm: name } });
      button.disabled = false;
      if (status) {
        status.className = "status-line " + (answer.ok ? "ok" : "error");
        status.textContent = answer.ok
          ? "Purged: " + m.number((answer.data && (answer.data.removed ?? answer.data.count)) || 0) +
            " message(s) removed."
          : "Purge refused: " + ((answer.data && answer.data.error) || "HTTP " + answer.status);
      }
    });
  }

  setupList();
  setupCards();
  setupHistory();
  setupPurge();
})();
