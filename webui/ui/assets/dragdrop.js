// Dropping (or pasting) an image on a prompt box fills the tab's fields from the image's generation parameters, and
// pasting an infotext into a prompt box fills them as the ↙ button does (A1111's dragdrop.js behaviour).
// JavaScript because the drop and paste events of a textarea never reach Gradio. The image goes to the tab's hidden
// file field (`<tab>_prompt_image`), so the server reads its `parameters` chunk with the same upload checks as any
// upload; pasted text is left to the browser unless it is an infotext (its last line holds at least 3 `Key: value`
// pairs, A1111's rule), so an ordinary prompt is never replaced.
(() => {
  const PROMPTS = ["txt2img", "img2img", "inpaint"];
  const MAX_CHARS = 10000;
  // A1111's parameter pattern (key: word character, then word characters, spaces, '-' or '/'; value: a JSON string or
  // everything up to the next comma), applied to one line of bounded length.
  const PARAM = /\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;

  function promptTab(target) {
    if (!(target instanceof Element)) return null;
    for (const prefix of PROMPTS) {
      if (target.closest(`#${prefix}_prompt`)) return prefix;
    }
    return null;
  }

  function isInfotext(text) {
    if (!text || text.length >= MAX_CHARS) return false;
    const lines = text.trim().split(/\r\n|\r|\n/);
    const last = lines[lines.length - 1];
    let count = 0;
    for (const match of last.matchAll(PARAM)) {
      if (match[0].length === 0) break;
      if (++count >= 3) return true;
    }
    return false;
  }

  function imageFile(list) {
    for (const file of list || []) {
      if (file && file.type && file.type.startsWith("image/")) return file;
    }
    return null;
  }

  function sendImage(prefix, file) {
    const input = document.querySelector(`#${prefix}_prompt_image input[type=file]`);
    if (!input) return false;
    const transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  }

  document.addEventListener("dragover", (event) => {
    const prefix = promptTab(event.target);
    if (!prefix || !event.dataTransfer || !Array.from(event.dataTransfer.types || []).includes("Files")) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  }, true);

  document.addEventListener("drop", (event) => {
    const prefix = promptTab(event.target);
    if (!prefix || !event.dataTransfer) return;
    const file = imageFile(event.dataTransfer.files);
    if (!file) return;
    event.preventDefault();
    event.stopPropagation();
    sendImage(prefix, file);
  }, true);

  document.addEventListener("paste", (event) => {
    const prefix = promptTab(event.target);
    if (!prefix || !event.clipboardData) return;
    const file = imageFile(event.clipboardData.files);
    if (file) {
      event.preventDefault();
      sendImage(prefix, file);
      return;
    }
    const text = event.clipboardData.getData("text/plain");
    if (!isInfotext(text)) return; // ordinary text: the browser pastes it where the cursor is
    const box = event.target.closest(`#${prefix}_prompt`).querySelector("textarea");
    const paste = document.getElementById(`${prefix}_paste`);
    if (!box || !paste) return;
    event.preventDefault();
    box.value = text;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    setTimeout(() => paste.click(), 100); // after Gradio has taken the new value
  }, true);
})();
