// The dashboard's own script, shared by every page: one Socket.IO connection
// to /live, formatting that matches the server's filters, relative times that
// stay current, a confirm dialog and a JSON helper that carries the CSRF token.
// Data from the server is only ever written with textContent / createElement.
(function () {
  "use strict";

  const numberFormat = new Intl.NumberFormat("en-US");
  const DASH = "—";

  function number(value, decimals) {
    if (value === null || value === undefined || Number.isNaN(value)) return DASH;
    if (decimals !== undefined) {
      return new Intl.NumberFormat("en-US", {
        minimumFractionDigits: decimals, maximumFractionDigits: decimals,
      }).format(value);
    }
    if (Number.isInteger(value)) return numberFormat.format(value);
    const places = Math.abs(value) < 100 ? 2 : 1;
    return new Intl.NumberFormat("en-US", { maximumFractionDigits: places }).format(value);
  }

  function percent(fraction) {
    if (fraction === null || fraction === undefined) return DASH;
    return (fraction * 100).toFixed(1) + " %";
  }

  function seconds(value) {
    if (value === null || value === undefined) return DASH;
    if (value < 10) return value.toFixed(1) + " s";
    let rest = Math.round(value);
    const days = Math.floor(rest / 86400); rest -= days * 86400;
    const hours = Math.floor(rest / 3600); rest -= hours * 3600;
    const minutes = Math.floor(rest / 60); const secs = rest - minutes * 60;
    if (days) return days + " d " + hours + " h";
    if (hours) return hours + " h " + minutes + " min";
    if (minutes) return minutes + " min " + secs + " s";
    return secs + " s";
  }

  function ago(date) {
    const delta = (Date.now() - date.getTime()) / 1000;
    if (Math.abs(delta) < 1) return "just now";
    const text = seconds(Math.abs(delta)).replace(".0 s", " s");
    return delta > 0 ? text + " ago" : "in " + text;
  }

  function absolute(date) {
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  // <time data-ago datetime=...> elements: keep "3 s ago" current.
  function refreshTimes(root) {
    (root || document).querySelectorAll("time[data-ago]").forEach(function (node) {
      const date = new Date(node.getAttribute("datetime"));
      if (!Number.isNaN(date.getTime())) node.textContent = ago(date);
    });
  }

  function timeElement(iso) {
    if (!iso) return document.createTextNode(DASH);
    const date = new Date(iso);
    const node = document.createElement("time");
    node.setAttribute("datetime", iso);
    node.dataset.ago = "";
    node.title = absolute(date);
    node.textContent = ago(date);
    return node;
  }

  // el("td", {className: "num"}, "text", childNode, ...)
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.entries(props || {}).forEach(function ([key, value]) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key in node) node[key] = value;
      else node.setAttribute(key, value);
    });
    children.forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" || typeof child === "number"
        ? document.createTextNode(String(child)) : child);
    });
    return node;
  }

  // Rows a script builds get their column's label (shown above each value on a
  // phone, see mopq.css) from the table's header, as the templates write it.
  // Every page's rows get them by themselves (see labelAddedRows below).
  function labelCells(tbody) {
    const table = tbody && tbody.closest("table");
    if (!table) return;
    const labels = Array.from(table.querySelectorAll("thead th"))
      .map(function (th) { return th.textContent.trim(); });
    tbody.querySelectorAll("tr").forEach(function (tr) {
      Array.from(tr.children).forEach(function (cell, index) {
        if (!cell.dataset.label && labels[index]) cell.dataset.label = labels[index];
      });
    });
    requestAnimationFrame(fitTables); // once the caller has shown or hidden its panel
  }

  // A table wider than its panel becomes cards (table.data.cards in mopq.css)
  // instead of scrolling sideways, a phone turned sideways or a tablet included;
  // up to 640 px wide mopq.css makes every table cards by itself.
  function fitTables() {
    document.querySelectorAll(".table-wrap > table.data").forEach(function (table) {
      const wrap = table.parentElement;
      table.classList.remove("cards");
      if (wrap.clientWidth && table.scrollWidth > wrap.clientWidth + 1) table.classList.add("cards");
    });
  }

  function readJSON(node, name) {
    const raw = node && node.dataset[name];
    if (!raw) return null;
    try { return JSON.parse(raw); } catch (error) { return null; }
  }

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // fetch JSON; admin POSTs carry the CSRF token. Resolves {ok, status, data}.
  async function api(path, options) {
    const init = { credentials: "same-origin", headers: { Accept: "application/json" } };
    if (options && options.body !== undefined) {
      init.method = options.method || "POST";
      init.headers["Content-Type"] = "application/json";
      init.headers["X-CSRF-Token"] = csrfToken();
      init.body = JSON.stringify(options.body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      return { ok: false, status: 0, data: { error: "the dashboard cannot be reached" } };
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    return { ok: response.ok, status: response.status, data: data };
  }

  // The result of an action, in the page's status line (#action-status), ok or refused.
  function say(ok, text) {
    const status = document.getElementById("action-status");
    if (!status) return;
    status.className = "status-line " + (ok ? "ok" : "error");
    status.textContent = text;
  }

  // The page's confirm dialog (never window.confirm). With `typed`, the user
  // must type that text (a queue name) before Confirm is enabled.
  function confirmAction(title, text, typed) {
    const dialog = document.getElementById("confirm-dialog");
    if (!dialog || typeof dialog.showModal !== "function") return Promise.resolve(false);
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    const label = document.getElementById("confirm-typed-label");
    const input = document.getElementById("confirm-typed");
    const ok = document.getElementById("confirm-ok");
    label.hidden = !typed;
    input.value = "";
    document.getElementById("confirm-expected").textContent = typed || "";
    ok.disabled = Boolean(typed);
    input.oninput = function () { ok.disabled = input.value !== typed; };
    return new Promise(function (resolve) {
      dialog.addEventListener("close", function () {
        resolve(dialog.returnValue === "ok" && (!typed || input.value === typed));
      }, { once: true });
      dialog.returnValue = "";
      dialog.showModal();
      if (typed) input.focus();
    });
  }

  // Writes `text` into every [data-stat=key] element.
  function setStat(key, text) {
    document.querySelectorAll('[data-stat="' + key + '"]').forEach(function (node) {
      node.textContent = text;
    });
  }

  const listeners = [];
  let latest = null;
  let receivedAt = 0;

  function onStats(listener) {
    listeners.push(listener);
    if (latest) listener(latest, receivedAt);
  }

  // The engine banner follows the pushes: shown on {engine_error}, hidden after.
  function showEngine(snapshot) {
    const banner = document.getElementById("engine-banner");
    if (!banner) return;
    if (snapshot.engine_error) {
      document.getElementById("engine-banner-reason").textContent = snapshot.engine_error;
      banner.hidden = false;
    } else if (!banner.hidden) {
      // The page was rendered without figures; now there are some.
      window.location.reload();
    }
  }

  const state = document.getElementById("live-state");
  function show(name, text) {
    if (!state) return;
    state.dataset.state = name;
    state.textContent = text;
  }

  let socket = null;
  if (typeof io !== "function") {
    show("disconnected", "live: socket.io client missing (run make install)");
  } else {
    socket = io("/live", { transports: ["websocket"] });
    socket.on("connect", function () { show("connected", "live"); });
    socket.on("disconnect", function () { show("disconnected", "live: disconnected"); });
    socket.on("connect_error", function (error) {
      const refused = error && error.data && error.data.message;
      show("disconnected", refused ? "live: refused: " + refused : "live: cannot connect");
    });
    socket.on("stats", function (snapshot) {
      latest = snapshot;
      receivedAt = Date.now();
      showEngine(snapshot);
      listeners.forEach(function (listener) {
        try { listener(snapshot, receivedAt); } catch (error) { console.warn(error); }
      });
    });
  }

  // Whatever script adds rows or cells to a table, whenever, they are labelled
  // from its header, so no page can leave a phone without its column names.
  function labelAddedRows(records) {
    const bodies = new Set();
    records.forEach(function (record) {
      const body = record.target.closest && record.target.closest("tbody");
      if (body) bodies.add(body);
      record.addedNodes.forEach(function (node) {
        if (node.querySelectorAll) node.querySelectorAll("tbody").forEach((b) => bodies.add(b));
      });
    });
    bodies.forEach(labelCells);
  }

  refreshTimes();
  setInterval(refreshTimes, 1000);
  document.querySelectorAll("tbody").forEach(labelCells);
  new MutationObserver(labelAddedRows).observe(document.body, { childList: true, subtree: true });
  fitTables();
  let fitting = null;
  window.addEventListener("resize", function () {
    clearTimeout(fitting);
    fitting = setTimeout(fitTables, 150);
  });
  document.addEventListener("toggle", function (event) {
    if (event.target.open && event.target.querySelector(".table-wrap")) fitTables();
  }, true);

  window.mopq = {
    socket: socket, onStats: onStats, api: api, el: el, number: number, percent: percent,
    seconds: seconds, ago: ago, absolute: absolute, timeElement: timeElement,
    refreshTimes: refreshTimes, readJSON: readJSON, confirmAction: confirmAction,
    setStat: setStat, labelCells: labelCells, fitTables: fitTables, say: say,
  };
})();
