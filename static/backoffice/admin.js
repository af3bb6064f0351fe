// Django's filter_horizontal widget (SelectFilter2.js) names its search icons with aria-label on a bare
// <span>, which assistive technology ignores (axe: aria-prohibited-attr): give those icons the image
// role their label describes. The widget builds them at page load, so watch for them.
(function () {
  "use strict";
  function nameIcons() {
    document.querySelectorAll(".help-tooltip[aria-label]:not([role])").forEach(function (icon) {
      icon.setAttribute("role", "img");
    });
  }
  new MutationObserver(nameIcons).observe(document.documentElement, { childList: true, subtree: true });
  document.addEventListener("DOMContentLoaded", nameIcons);
})();
