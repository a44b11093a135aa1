// Overview: totals, banners, backlog per queue and the 5-minute throughput
// chart, all kept current from the /live pushes (no polling, no reload).
(function () {
  "use strict";
  const m = window.mopq;
  const charts = window.mopqCharts;
  const root = document.getElementById("overview");
  if (!root || !m) return;

  const WINDOW_SECONDS = 300;
  const chart = document.getElementById("throughput-chart");
  const buckets = new Map(); // epoch second (ms) -> [written, acked, failed]
  let offset = 0; // browser clock minus server clock, ms
  let stats = m.readJSON(root, "stats");
  let statsAt = Date.now();

  function syncClock(generatedAt, receivedAt) {
    const server = Date.parse(generatedAt);
    if (!Number.isNaN(server)) offset = receivedAt - server;
  }

  function seedChart() {
    const series = m.readJSON(root, "throughput");
    if (!series) return;
    series.written.forEach(function (written, index) {
      const at = series.start + index * 1000;
      buckets.set(at, [written, series.acked[index], series.failed[index]]);
    });
  }

  function mergeThroughput(throughput) {
    if (!throughput || !throughput.t) return;
    throughput.t.forEach(function (iso, index) {
      buckets.set(Date.parse(iso), [throughput.written[index], throughput.acked[index],
        throughput.failed[index]]);
    });
  }

  function drawChart() {
    const end = Math.floor((Date.now() - offset) / 1000) * 1000;
    const x = [], written = [], acked = [], failed = [];
    for (let at = end - (WINDOW_SECONDS - 1) * 1000; at <= end; at += 1000) {
      const row = buckets.get(at) || [0, 0, 0];
      x.push(new Date(at + offset));
      written.push(row[0]); acked.push(row[1]); failed.push(row[2]);
    }
    buckets.forEach(function (_row, at) { if (at < end - 2 * WINDOW_SECONDS * 1000) buckets.delete(at); });
    charts.draw(chart, [
      charts.line("written", x, written),
      charts.line("acked", x, acked),
      charts.line("failed", x, failed),
    ], {
      xaxis: charts.timeAxis(x[0], x[x.length - 1], "%H:%M:%S"),
      yaxis: { title: { text: "per second" } },
    });
  }

  function totals(queues) {
    const sum = { written: 0, done: 0, failed: 0, dead: 0, pending: 0, inflight: 0, delayed: 0 };
    Object.values(queues).forEach(function (row) {
      Object.keys(sum).forEach(function (key) { sum[key] += row[key] || 0; });
    });
    sum.backlog = sum.pending + sum.inflight + sum.delayed;
    const attempts = sum.done + sum.failed;
    sum.failure_rate = attempts ? sum.failed / attempts : 0;
    return sum;
  }

  function failureRate(row) {
    const attempts = row.failed + row.done;
    return attempts ? row.failed / attempts : 0;
  }

  function elapsed() { return (Date.now() - statsAt) / 1000; }

  function drawBacklog(queues) {
    const body = document.getElementById("backlog-rows");
    const names = Object.keys(queues);
    document.getElementById("backlog-empty").hidden = names.length > 0;
    document.getElementById("backlog-wrap").hidden = names.length === 0;
    const rows = names.map(function (name) {
      const row = queues[name];
      const age = row.pending ? row.oldest_pending_age_seconds + elapsed() : null;
      return m.el("tr", { dataset: { queue: name } },
        m.el("td", { className: "lead" }, m.el("a", { href: "/queues/" + encodeURIComponent(name) }, name)),
        m.el("td", { className: "num" }, m.number(row.pending)),
        m.el("td", { className: "num" }, m.number(row.inflight)),
        m.el("td", { className: "num" }, m.number(row.delayed)),
        m.el("td", { className: "num" }, m.number(row.dead)),
        m.el("td", { className: "num" }, m.seconds(age)),
        m.el("td", { className: "num" }, m.percent(failureRate(row))));
    });
    body.replaceChildren(...rows);
    m.labelCells(body);
  }

  function drawCollector() {
    if (!stats) return;
    const collector = stats.collector;
    const lag = collector.events_waiting ? collector.lag_seconds + elapsed() : collector.lag_seconds;
    m.setStat("collector.lag", m.seconds(lag));
    const missing = collector.collectors_alive === 0 && collector.events_waiting > 0;
    const behind = !missing && lag > collector.lag_warning_seconds;
    document.getElementById("collector-missing").hidden = !missing;
    document.getElementById("collector-behind").hidden = !behind;
    root.classList.toggle("stale", missing || behind);
  }

  function drawStats() {
    if (!stats) return;
    const sum = totals(stats.queues);
    ["written", "done", "failed", "dead", "backlog", "pending", "inflight", "delayed"]
      .forEach(function (key) { m.setStat("total." + key, m.number(sum[key])); });
    m.setStat("total.failure_rate", m.percent(sum.failure_rate));
    ["alive", "stale", "dead", "zombie"].forEach(function (key) {
      m.setStat("workers." + key, m.number(stats.workers[key]));
    });
    ["events_waiting", "events_total", "collectors_alive"].forEach(function (key) {
      m.setStat("collector." + key, m.number(stats.collector[key]));
    });
    drawBacklog(stats.queues);
    drawCollector();
  }

  if (stats) syncClock(stats.generated_at, Date.now());
  seedChart();
  drawChart();
  m.onStats(function (snapshot, receivedAt) {
    if (snapshot.engine_error) return;
    stats = snapshot;
    statsAt = receivedAt;
    syncClock(snapshot.generated_at, receivedAt);
    mergeThroughput(snapshot.throughput);
    drawStats();
    drawChart();
  });
  setInterval(function () { drawChart(); drawCollector(); }, 1000);
})();
