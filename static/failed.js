// Failed page: retry or delete one message, the selected ones, or all that
// match the filters, through the admin API (POST with the CSRF token).
(function () {
  "use strict";
  const m = window.mopq;
  if (!m) return;
  const bulk = document.getElementById("bulk");

  const say = m.say;

  function changedCount(data) {
    if (!data) return 0;
    for (const key of ["count", "changed", "retried", "deleted", "removed"]) {
      if (typeof data[key] === "number") return data[key];
    }
    return 0;
  }

  function markDone(ids, verb) {
    ids.forEach(function (id) {
      const article = document.querySelector('article.message[data-id="' + CSS.escape(id) + '"]');
      if (!article) return;
      article.classList.add("done");
      article.querySelectorAll("button, input").forEach(function (node) { node.disabled = true; });
      const note = article.querySelector(".message-head .spacer");
      if (note) note.before(m.el("span", { className: "badge state-pending" }, verb));
    });
  }

  async function act(kind, body, ids) {
    const answer = await m.api("/api/failed/" + kind, { body: body });
    const verb = kind === "retry" ? "retried" : "deleted";
    if (!answer.ok) {
      say(false, "Refused: " + ((answer.data && answer.data.error) || "HTTP " + answer.status));
      return;
    }
    const count = changedCount(answer.data);
    say(true, m.number(count) + " message(s) " +
      (kind === "retry" ? "back to pending." : "deleted.") +
      (body.all_matching ? " Reload to see what is left." : ""));
    if (ids) markDone(ids, verb);
    else markDone(Array.from(document.querySelectorAll("article.message"))
      .map(function (node) { return node.dataset.id; }), verb);
  }

  function selectedIds() {
    return Array.from(document.querySelectorAll("input.select:checked"))
      .map(function (node) { return node.value; });
  }

  function matching() {
    const body = { all_matching: true };
    if (bulk.dataset.queue) body.queue = bulk.dataset.queue;
    if (bulk.dataset.error) body.error = bulk.dataset.error;
    return body;
  }

  async function onClick(event) {
    const button = event.target.closest("button[data-action]");
    if (!button || button.disabled) return;
    const action = button.dataset.action;
    if (action === "retry") {
      await act("retry", { ids: [button.dataset.id] }, [button.dataset.id]);
    } else if (action === "delete") {
      if (await m.confirmAction("Delete this message?",
        "Message " + button.dataset.id + " is removed for good.")) {
        await act("delete", { ids: [button.dataset.id] }, [button.dataset.id]);
      }
    } else if (action === "retry-selected" || action === "delete-selected") {
      const ids = selectedIds();
      if (!ids.length) { say(false, "Select messages first (the boxes beside their ids)."); return; }
      const kind = action === "retry-selected" ? "retry" : "delete";
      if (kind === "delete" && !await m.confirmAction("Delete " + ids.length + " message(s)?",
        "The selected messages are removed for good.")) return;
      await act(kind, { ids: ids }, ids);
    } else if (action === "retry-all" || action === "delete-all") {
      const kind = action === "retry-all" ? "retry" : "delete";
      const total = m.number(parseInt(bulk.dataset.total, 10) || 0);
      const filters = [bulk.dataset.queue && "queue " + bulk.dataset.queue,
        bulk.dataset.error && "error containing \u201c" + bulk.dataset.error + "\u201d"]
        .filter(Boolean).join(" and ");
      const what = total + " dead message(s)" + (filters ? " with " + filters : "");
      if (!await m.confirmAction((kind === "retry" ? "Retry " : "Delete ") + what + "?",
        kind === "retry" ? "They go back to pending with their attempts reset."
          : "They are removed for good.")) return;
      await act(kind, matching(), null);
    }
  }

  document.addEventListener("click", onClick);
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input.select").forEach(function (box) {
        if (!box.disabled) box.checked = all.checked;
      });
    });
  }
})();
