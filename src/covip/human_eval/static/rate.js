// Keyboard answers for the rating form: each radio button names its key in data-key
// (1/2/3 for the first question, q/w/e for the second); Enter submits once both are answered.
(function () {
  "use strict";
  const form = document.getElementById("vote");
  if (!form) {
    return;
  }
  const hint = document.getElementById("hint");
  const button = document.getElementById("submit");
  const byKey = {};
  form.querySelectorAll("input[type=radio][data-key]").forEach(function (input) {
    byKey[input.dataset.key] = input;
  });
  let sent = false;

  function complete() {
    return ["context", "image"].every(function (name) {
      return form.querySelector("input[name=" + name + "]:checked") !== null;
    });
  }

  form.addEventListener("submit", function (event) {
    if (sent || !complete()) {
      event.preventDefault();
      hint.hidden = sent;
      return;
    }
    sent = true;  // one submit per page; the server ignores a repeat anyway
    button.disabled = true;
  });

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.repeat) {
      return;
    }
    if (event.key === "Enter") {
      event.preventDefault();
      if (complete()) {
        form.requestSubmit();
      } else {
        hint.hidden = false;
      }
      return;
    }
    const input = byKey[event.key.toLowerCase()];
    if (input) {
      input.checked = true;
      input.focus();
      hint.hidden = true;
    }
  });
})();
