// Business metrics: one chart per event name (count per bucket as bars, sum
// as a line), a range picker and a tag filter per chart, from /api/metrics.
(function () {
  "use strict";
  const m = window.mopq;
  const charts = window.mopqCharts;
  if (!m || !charts) return;
  const range = document.getElementById("range");
  const REFRESH_GAP_MS = 5000;
  const SPANS_MS = { "-1h": charts.HOUR, "-1d": charts.DAY, "-90d": 90 * charts.DAY };
  const STEP_MS = { s: charts.SECOND, m: charts.MINUTE, h: charts.HOUR };
  const HOVER = { s: "%b %-d, %H:%M:%S", m: "%b %-d, %H:%M", h: "%b %-d, %H:00" };
  let lastRefresh = 0;

  function query(section) {
    const [resolution, since] = range.value.split("|");
    const params = new URLSearchParams({ resolution: resolution, since: since });
    const tag = section.querySelector(".tag-filter").value;
    if (tag) params.set("tags", tag);
    return "/api/metrics/" + encodeURIComponent(section.dataset.name) + "?" + params.toString();
  }

  function fillTags(select, available) {
    if (select.dataset.filled) return;
    Object.entries(available || {}).forEach(function ([key, values]) {
      values.forEach(function (value) {
        const text = key + ":" + value;
        select.appendChild(m.el("option", { value: text }, text));
      });
    });
    select.dataset.filled = "1";
  }

  async function load(section) {
    const summary = section.querySelector(".metric-summary");
    const answer = await m.api(query(section));
    if (!answer.ok || !answer.data) {
      summary.textContent = "Cannot load: " + ((answer.data && answer.data.error) || "HTTP " + answer.status);
      return;
    }
    const data = answer.data;
    fillTags(section.querySelector(".tag-filter"), data.available_tags);
    const count = data.count.reduce(function (a, b) { return a + b; }, 0);
    const sum = data.sum.reduce(function (a, b) { return a + b; }, 0);
    summary.textContent = m.number(count) + " event(s), sum " + m.number(sum) + " in this range";
    const [resolution, since] = range.value.split("|");
    const step = STEP_MS[resolution];
    // Each bucket is drawn over its own time (bar and sum point in its middle), so a
    // sparse series keeps bars as wide as their bucket and the axis its whole range.
    const x = data.t.map(function (t) { return new Date(Date.parse(t) + step / 2); });
    charts.draw(section.querySelector(".chart"), [
      { type: "bar", name: "count", x: x, y: data.count, width: step * 0.9,
        marker: { color: charts.COLORS.count } },
      charts.line("sum", x, data.sum, charts.COLORS.sum, { yaxis: "y2", mode: "lines+markers",
        line: { color: charts.COLORS.sum, width: 2, shape: "linear" }, marker: { size: 5 } }),
    ], {
      // the window the range names, to the end of the bucket still being counted
      xaxis: charts.timeAxis(Date.now() - SPANS_MS[since], Math.ceil(Date.now() / step) * step,
        HOVER[resolution]),
      yaxis: { title: { text: "count" } },
      yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false,
        zeroline: false, title: { text: "sum" }, nticks: 5 },
    });
  }

  function loadAll() {
    lastRefresh = Date.now();
    document.querySelectorAll("section.metric").forEach(load);
  }

  document.querySelectorAll("section.metric .tag-filter").forEach(function (select) {
    select.addEventListener("change", function () { load(select.closest("section.metric")); });
  });
  range.addEventListener("change", loadAll);
  loadAll();
  m.onStats(function (snapshot) {
    if (!snapshot.engine_error && Date.now() - lastRefresh > REFRESH_GAP_MS) loadAll();
  });
})();
