// Plotly defaults shared by every chart: one look, no mode bar, local times.
(function () {
  "use strict";
  const COLORS = {
    written: "#2e6fdb", acked: "#12a150", failed: "#d92d20", dead: "#7a271a",
    claimed: "#a3a3a3", count: "#2e6fdb", sum: "#e08a00", p50: "#6941c6", p95: "#b692f6",
  };

  function layout(extra) {
    return Object.assign({
      margin: { l: 52, r: 16, t: 28, b: 36 },
      height: 260,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: "system-ui, -apple-system, Segoe UI, sans-serif", size: 12, color: "#344054" },
      xaxis: { type: "date", gridcolor: "#eaecf0", zeroline: false },
      yaxis: { gridcolor: "#eaecf0", zeroline: false, rangemode: "tozero", separatethousands: true },
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      hovermode: "x unified",
      separators: ".,",
    }, extra || {});
  }

  const CONFIG = { displayModeBar: false, responsive: true };

  function line(name, x, y, color, extra) {
    return Object.assign({
      type: "scatter", mode: "lines", name: name, x: x, y: y,
      line: { color: color || COLORS[name], width: 2, shape: "hv" },
    }, extra || {});
  }

  function draw(node, traces, extraLayout) {
    if (typeof Plotly === "undefined" || !node) return;
    const full = layout(extraLayout);
    if (full.yaxis2) full.margin = Object.assign({}, full.margin, { r: 64 });
    Plotly.react(node, traces, full, CONFIG);
  }

  window.mopqCharts = { COLORS: COLORS, layout: layout, line: line, draw: draw };
})();
