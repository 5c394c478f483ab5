// Keyboard shortcuts of the review UI. Progressive enhancement: every page works without this
// file (forms and links do the work); it only presses them. No inline script anywhere: the
// Content-Security-Policy allows this file and nothing else.
//
// List:   j / k move the selection, Enter or o opens it, x ticks it for a bulk decision,
//         a approves / r rejects the selected proposal (after a confirmation), e opens its editor.
// Detail: a approve, r reject (after a confirmation), e open the editor, u back to the queue.
(function () {
  "use strict";

  function typing(event) {
    var t = event.target;
    if (!t || !t.tagName) return false;
    if (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT") return true;
    return t.tagName === "INPUT" && t.type !== "checkbox" && t.type !== "radio";
  }

  function post(action, fields) {
    var form = document.createElement("form");
    form.method = "post";
    form.action = action;
    Object.keys(fields).forEach(function (name) {
      var input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = fields[name];
      form.appendChild(input);
    });
    document.body.appendChild(form);
    form.submit();
  }

  function title(row) {
    var link = row.querySelector("td.title a");
    return link ? link.textContent : row.dataset.id;
  }

  function listPage(bulk) {
    var rows = Array.prototype.slice.call(document.querySelectorAll("table.queue tbody tr[data-id]"));
    var selected = -1;

    function select(index) {
      if (!rows.length) return;
      index = Math.max(0, Math.min(rows.length - 1, index));
      if (selected >= 0) {
        rows[selected].classList.remove("selected");
        rows[selected].removeAttribute("aria-selected");
      }
      selected = index;
      rows[index].classList.add("selected");
      rows[index].setAttribute("aria-selected", "true");
      rows[index].scrollIntoView({ block: "nearest" });
    }

    function decide(action) {
      var row = rows[selected];
      if (!row || row.dataset.status !== "pending" || !document.getElementById("bulk-approve")) return;
      var verb = action === "approve" ? "Approve" : "Reject";
      if (!window.confirm(verb + " “" + title(row) + "”?")) return;
      var comment = document.getElementById("bulk-comment");
      post("/ui/bulk", {
        csrf: bulk.querySelector("input[name=csrf]").value,
        back: bulk.querySelector("input[name=back]").value,
        action: action,
        comment: comment ? comment.value : "",
        pick: row.dataset.id + ":" + row.dataset.version,
      });
    }

    rows.forEach(function (row, index) {
      row.addEventListener("click", function () { select(index); });
    });

    return function (key) {
      var row = rows[selected];
      switch (key) {
        case "j": select(selected + 1); return true;
        case "k": select(selected < 0 ? 0 : selected - 1); return true;
        case "Enter":
        case "o": if (row) { window.location.href = row.dataset.href; return true; } return false;
        case "e": if (row) { window.location.href = row.dataset.href + "#edit"; return true; } return false;
        case "x": {
          var box = row && row.querySelector("input[name=pick]");
          if (box) { box.checked = !box.checked; box.dispatchEvent(new Event("change", { bubbles: true })); }
          return Boolean(row);
        }
        case "a": decide("approve"); return true;
        case "r": decide("reject"); return true;
        default: return false;
      }
    };
  }

  function detailPage() {
    var edit = document.getElementById("edit");
    function openEditor() {
      if (!edit) return;
      edit.open = true;
      var field = edit.querySelector("textarea, input:not([type=hidden])");
      if (field) field.focus();
    }
    if (window.location.hash === "#edit") openEditor();

    function press(id, verb) {
      var button = document.getElementById(id);
      if (!button) return;
      if (!window.confirm(verb + " this proposal?")) return;
      button.click();
    }

    return function (key) {
      switch (key) {
        case "a": press("approve", "Approve"); return true;
        case "r": press("reject", "Reject"); return true;
        case "e": openEditor(); return Boolean(edit);
        case "u": window.location.href = "/ui/"; return true;
        default: return false;
      }
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    var bulk = document.getElementById("bulk");
    var handle = bulk ? listPage(bulk) : document.getElementById("status") ? detailPage() : null;
    if (!handle) return;
    var help = document.getElementById("key-help");
    if (help) help.hidden = false;
    document.addEventListener("keydown", function (event) {
      if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || typing(event)) return;
      if (event.key === "Enter" && event.target && /^(BUTTON|A)$/.test(event.target.tagName)) return;
      if (handle(event.key)) event.preventDefault();
    });
  });
})();
