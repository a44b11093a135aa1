// Plotly defaults shared by every chart: one look, no mode bar, local times,
// a time axis that shows exactly the window asked for, and a layout that fits
// the chart's own width (fewer ticks, smaller margins on a phone).
(function () {
  "use strict";
  const COLORS = {
    written: "#2e6fdb", acked: "#12a150", failed: "#d92d20", dead: "#7a271a",
    claimed: "#a3a3a3", count: "#2e6fdb", sum: "#e08a00", p50: "#6941c6", p95: "#b692f6",
  };
  const NARROW_PX = 560; // below this a chart is on a phone (or in a narrow column)
  const SECOND = 1000, MINUTE = 60 * SECOND, HOUR = 60 * MINUTE, DAY = 24 * HOUR;

  // One line per tick label, chosen by the distance between ticks: plotly's own
  // default adds the date under the first tick, which a narrow chart cuts off.
  // The hover label carries the full date.
  const TICK_FORMATS = [
    { dtickrange: [null, SECOND - 1], value: "%H:%M:%S.%L" },
    { dtickrange: [SECOND, MINUTE - 1], value: "%H:%M:%S" },
    { dtickrange: [MINUTE, 3 * HOUR - 1], value: "%H:%M" },
    { dtickrange: [3 * HOUR, DAY - 1], value: "%a %H:%M" },
    { dtickrange: [DAY, null], value: "%b %-d" },
  ];

  // A date axis over exactly [start, end] (Dates or epoch ms), whatever the data
  // covers: a sparse series still shows the whole window its button names.
  function timeAxis(start, end, hoverformat) {
    return {
      type: "date", autorange: false, range: [new Date(start), new Date(end)],
      tickformatstops: TICK_FORMATS, hoverformat: hoverformat || "%b %-d, %H:%M:%S",
    };
  }

  function merged(base, extra) {
    const out = Object.assign({}, base);
    Object.entries(extra || {}).forEach(function ([key, value]) {
      const both = value && typeof value === "object" && !Array.isArray(value) &&
        out[key] && typeof out[key] === "object" && !Array.isArray(out[key]);
      out[key] = both ? Object.assign({}, out[key], value) : value;
    });
    return out;
  }

  function layout(extra, narrow) {
    const axis = { gridcolor: "#eaecf0", zeroline: false, automargin: true };
    const base = {
      margin: narrow ? { l: 40, r: 10, t: 24, b: 30 } : { l: 52, r: 16, t: 28, b: 36 },
      height: 260,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: "system-ui, -apple-system, Segoe UI, sans-serif", size: narrow ? 11 : 12,
        color: "#344054" },
      // Time labels a little lower than plotly puts them: the first and last, at the
      // plot's corners, otherwise sit on the y axes' "0".
      xaxis: Object.assign({ type: "date", tickformatstops: TICK_FORMATS, tickangle: 0,
        nticks: narrow ? 4 : 9, ticklabelstandoff: 6 }, axis),
      yaxis: Object.assign({ rangemode: "tozero", separatethousands: true,
        nticks: narrow ? 5 : 7 }, axis),
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      hovermode: "x unified",
      separators: ".,",
    };
    const full = merged(base, extra);
    ["xaxis", "yaxis", "yaxis2"].forEach(function (name) {
      if (!full[name]) return;
      full[name] = Object.assign({ automargin: true }, full[name]);
      if (narrow && full[name].title && full[name].title.text) {
        full[name].title = Object.assign({ font: { size: 11 }, standoff: 4 }, full[name].title);
      }
    });
    if (narrow) {
      full.xaxis.nticks = Math.min(full.xaxis.nticks || 4, 4);
      if (full.yaxis2) full.yaxis2.nticks = Math.min(full.yaxis2.nticks || 4, 4);
    }
    if (full.yaxis2) full.margin = Object.assign({}, full.margin, { r: narrow ? 44 : 64 });
    return full;
  }

  const CONFIG = { displayModeBar: false, responsive: true };

  function line(name, x, y, color, extra) {
    return Object.assign({
      type: "scatter", mode: "lines", name: name, x: x, y: y,
      line: { color: color || COLORS[name], width: 2, shape: "hv" },
    }, extra || {});
  }

  // What each chart was last drawn with, to lay it out again when its width changes
  // (a phone turned sideways): margins and ticks depend on the width.
  const drawn = new Map();

  function draw(node, traces, extraLayout) {
    if (typeof Plotly === "undefined" || !node) return;
    const narrow = (node.clientWidth || window.innerWidth) < NARROW_PX;
    drawn.set(node, { traces: traces, extra: extraLayout, narrow: narrow });
    const full = layout(extraLayout, narrow);
    if (narrow && traces.length > 3) {
      // Two legend entries a row, rather than one a row eating the plot's height.
      full.legend = Object.assign({}, full.legend, { entrywidth: 0.5, entrywidthmode: "fraction" });
    }
    Plotly.react(node, traces, full, CONFIG);
  }

  let resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      drawn.forEach(function (last, node) {
        if (!node.isConnected) { drawn.delete(node); return; }
        const narrow = node.clientWidth < NARROW_PX;
        if (narrow !== last.narrow) draw(node, last.traces, last.extra);
      });
    }, 200);
  });

  window.mopqCharts = {
    COLORS: COLORS, layout: layout, line: line, draw: draw, timeAxis: timeAxis,
    SECOND: SECOND, MINUTE: MINUTE, HOUR: HOUR, DAY: DAY,
  };
})();
