// Bosun dashboard: small progressive enhancements (no inline script; CSP script-src 'self').
(function () {
  "use strict";
  var csrf = function () {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  };

  // Confirm every action before it is sent.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // Elapsed times tick.
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function span(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + "s";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m " + pad(seconds % 60) + "s";
    return Math.floor(seconds / 3600) + "h " + pad(Math.floor(seconds % 3600 / 60)) + "m";
  }
  setInterval(function () {
    document.querySelectorAll("time[data-since]").forEach(function (el) {
      var since = Date.parse(el.getAttribute("data-since"));
      if (!isNaN(since)) el.textContent = span((Date.now() - since) / 1000);
    });
  }, 1000);

  // Live log: follow, search.
  function log() { return document.getElementById("log"); }
  function follow() {
    var box = document.getElementById("autoscroll");
    var el = log();
    if (el && box && box.checked) el.scrollTop = el.scrollHeight;
  }
  function filter() {
    var input = document.getElementById("logsearch");
    var el = log();
    if (!input || !el) return;
    var needle = input.value.toLowerCase();
    var shown = 0, total = 0;
    el.querySelectorAll(".line").forEach(function (line) {
      total += 1;
      var hit = !needle || line.textContent.toLowerCase().indexOf(needle) >= 0;
      line.hidden = !hit;
      if (hit) shown += 1;
    });
    var count = document.getElementById("logcount");
    if (count) count.textContent = needle ? shown + " of " + total + " lines match" : "";
  }
  document.addEventListener("input", function (event) {
    if (event.target && event.target.id === "logsearch") filter();
  });
  document.addEventListener("change", function (event) {
    if (event.target && event.target.id === "autoscroll") follow();
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.target && event.target.id === "log") {
      filter();
      follow();
    }
  });
  document.addEventListener("htmx:sseOpen", function () {
    var note = document.getElementById("live-note");
    if (note) note.textContent = "Updates live";
  });
  document.addEventListener("htmx:sseError", function () {
    var note = document.getElementById("live-note");
    if (note) note.textContent = "Reconnecting…";
  });
  document.addEventListener("DOMContentLoaded", function () {
    follow();
    // Diff: a file named in the tree opens (and loads) when followed.
    document.querySelectorAll("[data-open]").forEach(function (link) {
      link.addEventListener("click", function () {
        var target = document.getElementById(link.getAttribute("data-open"));
        if (target && !target.open) target.open = true;
      });
    });
    document.querySelectorAll("[data-open-all]").forEach(function (button) {
      button.addEventListener("click", function () {
        document.querySelectorAll("details.file").forEach(function (d) { d.open = true; });
      });
    });
    board();
  });

  // Board: drag to order (saved), drag from To do to Running to start a run.
  function board() {
    if (typeof Sortable === "undefined") return;
    var dialog = document.getElementById("start-dialog");
    document.querySelectorAll("ol.cards").forEach(function (list) {
      var column = list.getAttribute("data-column");
      Sortable.create(list, {
        group: {
          name: "board",
          pull: column === "todo" ? "clone" : false,
          put: column === "running" ? ["board"] : false
        },
        sort: true,
        animation: 120,
        onSort: function (event) {
          if (event.from !== event.to || event.to !== list) return;
          var ids = Array.prototype.map.call(list.querySelectorAll("li[data-task]"), function (li) {
            return Number(li.getAttribute("data-task"));
          });
          fetch("/board/order", {
            method: "POST",
            credentials: "same-origin",
            headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
            body: JSON.stringify({ tasks: ids })
          });
        },
        onAdd: function (event) {
          var item = event.item;
          var task = item.getAttribute("data-task");
          item.remove(); // the card moves for real once the run has started
          if (!dialog) return;
          dialog.querySelector('input[name="task_id"]').value = task;
          var what = dialog.querySelector("#start-what");
          if (what) what.textContent = (item.querySelector("h3") || item).textContent.trim();
          dialog.showModal();
        }
      });
    });
    if (dialog) {
      dialog.querySelectorAll("[data-close]").forEach(function (b) {
        b.addEventListener("click", function () { dialog.close(); });
      });
    }
  }

  // htmx requests carry the CSRF token too.
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrf();
  });
})();
