// The inpaint mask editor (issue #16): what Gradio 6.31's ImageEditor cannot do from Python.
//
// - The default brush and eraser size follows the image: a stroke about 1/10 of its shorter side wide. Gradio's
//   `gr.Brush(default_size=...)` is one number for every image, and changing it from the server after an upload
//   would replace the session's copy of the editor with a fresh one (Gradio rebuilds a component from its constructor
//   arguments on every update), dropping the header check that `guard_editor` installs on the instance.
// - "Clear mask" empties the mask layer and keeps the image, as one step of the editor's own undo history: its Undo
//   button brings the strokes back. Gradio's own "Clear canvas" removes the image too and forgets the history, and
//   Gradio has no per-layer clear.
// - The brush-size popup closes once a size is picked with the pointer (see closeOnRelease).
//
// The editor's canvas core is private to Gradio's bundle, which assigns each one to `window.editor` as it mounts (the
// last one wins); every assignment is recorded here, and a core is found by the element its canvas is drawn in. The
// Pixi classes are private too, so the ones needed are taken from objects the editor itself created.
(() => {
  const cores = new Set();
  let latest = window.editor;
  if (latest) cores.add(latest);
  Object.defineProperty(window, "editor", {
    configurable: true,
    get: () => latest,
    set: (core) => {
      latest = core;
      if (core && typeof core === "object") cores.add(core);
    },
  });

  // The canvas core drawing inside the element with this id; null before that editor has mounted.
  function coreFor(elemId) {
    const root = document.getElementById(elemId);
    if (!root) return null;
    for (const core of cores) {
      const target = core && core.target_element;
      if (target && target.isConnected && root.contains(target)) return core;
    }
    return null;
  }

  // Gradio's brush size is a radius in image pixels, and its size slider runs from 1 to 100.
  function fittedRadius(width, height) {
    return Math.max(1, Math.min(100, Math.round(Math.min(width, height) / 20)));
  }

  // Gradio keeps the size popup open until a press outside it, and the popup lies over the image (over most of it
  // on a phone): a stroke begun where it lies lands on the popup and draws nothing. Once a size is picked with the
  // pointer (the thumb is let go), close it the way Gradio does, with a press outside it, so the next stroke draws.
  // Keyboard steps keep it open; the press that starts the next stroke closes it.
  function closeOnRelease(slider) {
    let byPointer = false;
    slider.addEventListener("pointerdown", () => { byPointer = true; });
    slider.addEventListener("keydown", () => { byPointer = false; });
    slider.addEventListener("change", () => {
      if (!byPointer) return;
      requestAnimationFrame(() => document.body.dispatchEvent(new MouseEvent("mousedown", { bubbles: true })));
    });
  }

  // The size slider only exists while its popup is open and shows Gradio's own state, which does not know about
  // `fitBrush`; set it to the tool's size when it appears, through the input event Gradio listens to.
  const watched = new WeakSet();
  function keepSliderInStep(root, elemId) {
    if (watched.has(root)) return;
    watched.add(root);
    const sync = () => {
      const slider = root.querySelector('input[type="range"]:not([data-ls-fitted])');
      const brush = coreFor(elemId)?.tools?.get("brush");
      if (!slider || !brush) return;
      slider.dataset.lsFitted = "1";
      closeOnRelease(slider);
      const size = brush.get_current_size();
      if (Number(slider.value) !== size) {
        slider.value = String(size);
        slider.dispatchEvent(new Event("input", { bubbles: true }));
      }
    };
    // after the frame, so Gradio has bound the new slider to its state before it hears the event
    new MutationObserver(() => requestAnimationFrame(sync)).observe(root, { childList: true, subtree: true });
  }

  // Called on the editor's upload event (a new image from a file, the clipboard or "Send to inpaint").
  function fitBrush(elemId) {
    const core = coreFor(elemId);
    const brush = core?.tools?.get("brush");
    if (!brush || !core.width || !core.height) return;
    const radius = fittedRadius(core.width, core.height);
    brush.set_brush_size(radius);
    brush.set_eraser_size(radius);
    keepSliderInStep(document.getElementById(elemId), elemId);
  }

  // Render `source` (a texture, or nothing to empty it) into `target`, replacing what was there.
  function paint(core, target, source) {
    const layer = core.layer_manager.get_layers()[0];
    const Container = core.image_container.constructor;
    const container = new Container();
    if (source) {
      const Sprite = layer.container.children[0].constructor; // each layer shows its draw texture in one sprite
      container.addChild(new Sprite(source));
    }
    core.app.renderer.render({ container, target, clear: true });
    container.destroy({ children: true });
  }

  function copyOf(core, texture) {
    const RenderTexture = texture.constructor;
    const copy = RenderTexture.create({
      width: texture.width, height: texture.height, resolution: texture.source?.resolution || window.devicePixelRatio || 1,
    });
    paint(core, copy, texture);
    return copy;
  }

  // A command in the editor's history: execute empties every mask layer, undo puts the strokes back.
  class ClearMask {
    constructor(core) {
      this.name = "ClearMask";
      this.core = core;
      this.saved = new Map();
    }

    async execute() {
      this.release();
      const manager = this.core.layer_manager;
      for (const layer of manager.get_layers()) {
        const textures = manager.get_layer_textures(layer.id);
        if (!textures) continue;
        this.saved.set(layer.id, copyOf(this.core, textures.draw));
        paint(this.core, textures.draw, null);
      }
    }

    undo() {
      const manager = this.core.layer_manager;
      for (const [id, copy] of this.saved) {
        const textures = manager.get_layer_textures(id);
        if (textures) paint(this.core, textures.draw, copy);
      }
    }

    release() {
      for (const copy of this.saved.values()) copy.destroy(true);
      this.saved.clear();
    }
  }

  async function clearMask(elemId) {
    const core = coreFor(elemId);
    if (!core?.command_manager || !core.layer_manager?.get_layers().length) return;
    await core.command_manager.execute(new ClearMask(core), core.context);
    core.notify("change"); // the editor then sends its canvas, not the image it was given, with the next Generate
  }

  window.latentStudioBrush = { fitBrush, clearMask };
})();
