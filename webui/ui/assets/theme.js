/* Theme: the Settings tab's light / dark / system choice (core.theme), applied on every page load and after Apply.
   The Settings tab calls window.latentStudioTheme(mode) with the saved value; a `?__theme=light|dark` in the URL
   (Gradio's own switch) still wins. Gradio marks dark mode with the `dark` class on <body>. */
(() => {
  const media = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  let chosen = "system";

  function apply() {
    const forced = new URL(window.location.href).searchParams.get("__theme");
    const mode = forced === "light" || forced === "dark" ? forced : chosen;
    const dark = mode === "dark" || (mode === "system" && !!media && media.matches);
    if (document.body) {
      document.body.classList.toggle("dark", dark);
    }
    document.documentElement.dataset.latentTheme = mode; // what was applied, for CSS and tests
  }

  window.latentStudioTheme = (mode) => {
    chosen = mode === "light" || mode === "dark" ? mode : "system";
    apply();
  };
  if (media && media.addEventListener) {
    // Gradio follows the system on a change too; run after it, so a fixed light/dark choice stays.
    media.addEventListener("change", () => setTimeout(apply, 0));
  }
})();
