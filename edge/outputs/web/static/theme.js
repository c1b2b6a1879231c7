// Light/dark: follows the system unless the person chose with the ◐ button (kept in localStorage).
(function () {
  var root = document.documentElement;
  var saved = null;
  try { saved = localStorage.getItem("dawnchorus-theme"); } catch (e) {}
  if (saved === "light" || saved === "dark") root.setAttribute("data-theme", saved);
  document.addEventListener("DOMContentLoaded", function () {
    var b = document.getElementById("theme");
    if (!b) return;
    b.addEventListener("click", function () {
      var dark = root.getAttribute("data-theme") ? root.getAttribute("data-theme") === "dark"
        : window.matchMedia("(prefers-color-scheme: dark)").matches;
      var next = dark ? "light" : "dark";
      root.setAttribute("data-theme", next);
      try { localStorage.setItem("dawnchorus-theme", next); } catch (e) {}
    });
  });
})();
