// Keyboard shortcuts A1111 users reach for: Ctrl+Enter (Cmd+Enter on a Mac) generates and Esc interrupts, in the
// open generating tab (txt2img, img2img, Inpaint).
// JavaScript because Gradio has no page-wide key bindings: its key events belong to one component (a Textbox's
// `submit` is a plain Enter in a one-line box), and a key pressed in any control must reach the open tab's buttons.
(() => {
  const TABS = ["txt2img", "img2img", "inpaint"];

  // The button of this kind in the tab that is showing; hidden tabs are display:none, so they have no offsetParent.
  function visibleButton(kind) {
    for (const prefix of TABS) {
      const button = document.getElementById(`${prefix}_${kind}`);
      if (button && button.offsetParent !== null && !button.disabled) return button;
    }
    return null;
  }

  // Esc also closes dropdown lists and the gallery's full-size view; leave those to Gradio.
  function escapeBelongsToWidget(target) {
    if (!(target instanceof Element)) return false;
    return Boolean(target.closest('[aria-expanded="true"], [role="listbox"], [role="dialog"], .preview'));
  }

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.isComposing) return;
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !event.altKey && !event.shiftKey) {
      const generate = visibleButton("generate");
      if (!generate) return;
      event.preventDefault();
      const active = document.activeElement;
      if (active instanceof HTMLInputElement && active.type === "number") {
        active.dispatchEvent(new Event("change", { bubbles: true })); // a typed number reaches Gradio on change
      }
      generate.click();
    } else if (event.key === "Escape" && !event.ctrlKey && !event.metaKey && !event.altKey) {
      if (escapeBelongsToWidget(event.target)) return;
      const interrupt = visibleButton("interrupt");
      if (interrupt) interrupt.click();
    }
  }, true);
})();
