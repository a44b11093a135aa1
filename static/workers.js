// Workers: the table follows the /live "workers" pushes (a worker that starts
// after the page loaded appears without a reload, with what it holds and how
// far along it is), and admins ask a worker to go quiet, resume or stop
// (POST /api/workers/<id>/<command> with the CSRF token). Rows are built as
// templates/workers.html renders them, with textContent / createElement only.
(function () {
  "use strict";
  const m = window.mopq;
  const panel = document.getElementById("workers-panel");
  if (!m || !panel) return;
  const rows = document.getElementById("worker-rows");
  const reason = panel.dataset.adminReason || "";
  const CONFIRM = {
    stop: ["Stop this worker?", "It takes no new messages, finishes the ones it holds, then exits. " +
      "A stop cannot be undone: start a new worker to consume again."],
  };
  const DONE = { stop: "asked to stop", quiet: "asked to go quiet", resume: "asked to resume" };

  const say = m.say;

  function badge(state) { return m.el("span", { className: "badge state-" + state }, state); }

  function adminButton(label, action, classes, worker) {
    const button = m.el("button", { type: "button", className: classes, dataset: { action: action, worker: worker } }, label);
    const wrap = m.el("span", { className: "admin-action" }, button);
    if (reason) { button.disabled = true; button.title = reason; wrap.title = reason; }
    return wrap;
  }

  function working(w) {
    if (!w.current || !w.current.length) return [m.el("span", { className: "note" }, "idle")];
    return w.current.map(function (c) {
      const line = m.el("div", { className: "current" },
        m.el("a", { className: "mono", href: "/search?id=" + encodeURIComponent(c.message_id) }, c.message_id),
        " ", m.el("span", { className: "note" }, "for " + m.seconds(c.seconds)));
      if (c.progress && typeof c.progress.fraction === "number") {
        const bar = m.el("progress", { max: 1 });
        bar.value = c.progress.fraction;
        line.appendChild(m.el("div", { className: "progress-line" }, bar,
          m.el("span", { className: "note" }, m.percent(c.progress.fraction) +
            (c.progress.note ? " \u00b7 " + c.progress.note : ""))));
      }
      return line;
    });
  }

  function controls(w, live, asked) {
    if (!live || asked === "stop" || w.reported_state === "stopping") {
      return [m.el("span", { className: "note" }, "\u2014")];
    }
    const quiet = asked === "quiet" || w.reported_state === "quiet";
    return [m.el("div", { className: "worker-controls" },
      quiet ? adminButton("Resume", "resume", "small secondary", w.id)
        : adminButton("Quiet", "quiet", "small secondary", w.id),
      adminButton("Stop", "stop", "small danger", w.id))];
  }

  function row(w) {
    const asked = w.control ? w.control.command : null;
    const live = w.state !== "stopped" && w.state !== "dead" && w.reported_state !== "stopped";
    const state = m.el("td", {}, badge(w.state));
    if (live && (w.reported_state === "quiet" || w.reported_state === "stopping")) {
      state.append(" ", badge(w.reported_state));
    }
    if (w.zombie_reason) state.appendChild(m.el("div", { className: "warning-text" }, w.zombie_reason));
    if (live && (asked === "stop" || asked === "quiet")) {
      state.appendChild(m.el("div", { className: "note asked" }, asked + " asked by " +
        ((w.control.by && w.control.by.name) || "someone") + " ", m.timeElement(w.control.at)));
    }
    const queues = m.el("td", {}, (w.queues || []).join(", "));
    if (w.concurrency) queues.appendChild(m.el("div", { className: "note" }, w.concurrency + " thread(s)"));
    const id = m.el("td", { className: "mono lead" }, w.id);
    if (w.hostname) id.appendChild(m.el("div", { className: "note" }, w.hostname));
    return m.el("tr", { dataset: { worker: w.id, reported: w.reported_state || "" } },
      id, state, queues,
      m.el("td", { className: "wide" }, ...working(w)),
      m.el("td", { className: "num" }, m.number(w.processed)),
      m.el("td", { className: "num" }, m.number(w.failed)),
      m.el("td", {}, m.timeElement(w.heartbeat_at)),
      m.el("td", {}, m.timeElement(w.started_at)),
      m.el("td", { className: "worker-actions" }, ...controls(w, live, asked)));
  }

  function show(push) {
    if (!push || !Array.isArray(push.workers)) return;
    rows.replaceChildren(...push.workers.map(row));
    m.labelCells(rows);
    document.getElementById("workers-empty").hidden = push.workers.length > 0;
    panel.hidden = push.workers.length === 0;
    const more = document.getElementById("workers-more");
    more.hidden = push.total === push.workers.length;
    more.querySelector('[data-field="shown"]').textContent = m.number(push.workers.length);
    more.querySelector('[data-field="total"]').textContent = m.number(push.total);
  }

  async function act(command, worker) {
    if (CONFIRM[command] && !await m.confirmAction(CONFIRM[command][0] + " " + worker,
      CONFIRM[command][1])) return;
    const answer = await m.api("/api/workers/" + encodeURIComponent(worker) + "/" + command, { body: {} });
    if (!answer.ok) {
      say(false, "Refused: " + ((answer.data && answer.data.error) || "HTTP " + answer.status));
      return;
    }
    say(true, "Worker " + worker + " " + DONE[command] + (answer.data.count ? "" : " already") +
      "; it acts at its next heartbeat.");
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("#worker-rows button[data-action]");
    if (button && !button.disabled) act(button.dataset.action, button.dataset.worker);
  });

  if (m.socket) {
    const follow = function () { m.socket.emit("follow", "workers"); };
    m.socket.on("connect", follow);
    if (m.socket.connected) follow();
    m.socket.on("workers", show);
  }
})();
