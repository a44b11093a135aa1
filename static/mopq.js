// The dashboard's own script: one Socket.IO connection to /live, shared by pages.
(function () {
  "use strict";
  const state = document.getElementById("live-state");
  function show(name, text) {
    if (!state) return;
    state.dataset.state = name;
    state.textContent = text;
  }
  if (typeof io !== "function") {
    show("disconnected", "live: socket.io client missing (run make install)");
    return;
  }
  const socket = io("/live", { transports: ["websocket"] });
  socket.on("connect", function () { show("connected", "live: connected"); });
  socket.on("disconnect", function () { show("disconnected", "live: disconnected"); });
  socket.on("connect_error", function () { show("disconnected", "live: cannot connect"); });
  window.mopq = { socket: socket };
})();
