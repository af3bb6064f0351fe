/* Tollgate dashboard: a few progressive enhancements. Every page works without them. */
(function () {
  "use strict";

  // Phone navigation drawer.
  document.addEventListener("click", function (event) {
    var toggle = event.target.closest("[data-nav-toggle]");
    if (toggle) {
      var open = document.body.classList.toggle("nav-open");
      toggle.setAttribute("aria-expanded", String(open));
    } else if (event.target.closest("[data-nav-close]")) {
      document.body.classList.remove("nav-open");
    }
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") document.body.classList.remove("nav-open");
  });

  // Selects that submit their form on change (organization switcher, role changes).
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    var button = select.form && select.form.querySelector("[data-autosubmit-button]");
    if (button) button.hidden = true;
    select.addEventListener("change", function () { select.form.submit(); });
  });

  // Quick amounts on the recharge form.
  document.querySelectorAll("[data-fill]").forEach(function (chip) {
    chip.addEventListener("click", function () {
      var input = document.getElementById(chip.getAttribute("data-fill"));
      if (!input) return;
      input.value = chip.getAttribute("data-value");
      document.querySelectorAll("[data-fill]").forEach(function (c) { c.setAttribute("aria-pressed", String(c === chip)); });
      input.focus();
    });
  });

  // Copy buttons (the API key secret).
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      var label = button.querySelector("[data-copy-label]") || button;
      var text = source ? source.textContent.trim() : "";
      var done = function () {
        label.textContent = "Copied";
        setTimeout(function () { label.textContent = "Copy"; }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { selectText(source); });
      } else {
        selectText(source);
        try { if (document.execCommand("copy")) done(); } catch (e) { /* the text stays selected */ }
      }
    });
  });

  function selectText(node) {
    if (!node) return;
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // Pending payments: poll their status every 2 s until they settle, then update the page in place.
  var POLL_MS = 2000;
  var GIVE_UP_MS = 15 * 60 * 1000;
  var TONES = ["success", "warning", "danger", "info", "neutral", "accent"];
  var NOTES = {
    succeeded: "The funds were added to your balance.",
    failed: "The payment did not go through.",
    canceled: "This payment was canceled."
  };

  document.querySelectorAll("[data-poll-url]").forEach(function (element) {
    var url = element.getAttribute("data-poll-url");
    var started = Date.now();

    function apply(data) {
      var badge = element.querySelector("[data-status]");
      if (badge && badge.textContent !== data.status_label) {
        TONES.forEach(function (tone) { badge.classList.remove("badge-" + tone); });
        badge.classList.add("badge-" + data.tone);
        badge.textContent = data.status_label;
      }
      if (data.final) {
        element.querySelectorAll("[data-pending-only]").forEach(function (node) { node.hidden = true; });
        var note = element.querySelector("[data-status-note]");
        if (note && NOTES[data.status]) note.textContent = NOTES[data.status];
        document.querySelectorAll("[data-balance]").forEach(function (node) {
          if (node.textContent !== data.balance_display) {
            node.textContent = data.balance_display;
            node.title = data.balance_exact + " " + data.currency;
            node.classList.add("updated");
          }
        });
        document.querySelectorAll("[data-available]").forEach(function (node) {
          node.textContent = data.available_display;
          node.title = data.available_exact + " " + data.currency;
        });
      }
    }

    function poll() {
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.status >= 400 && response.status < 500) return { final: true, gone: true }; // signed out, or not ours
          return response.ok ? response.json() : null;
        })
        .then(function (data) {
          if (data && !data.gone) apply(data);
          if ((!data || !data.final) && Date.now() - started < GIVE_UP_MS) setTimeout(poll, POLL_MS);
        })
        .catch(function () {
          if (Date.now() - started < GIVE_UP_MS) setTimeout(poll, POLL_MS * 2);
        });
    }

    setTimeout(poll, POLL_MS);
  });
})();
