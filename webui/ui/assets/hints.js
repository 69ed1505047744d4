// Tooltips: one sentence per control, shown as the `title` of its label, its block and its button (as A1111's
// hints.js does). One table, keyed by the text the user sees; icon-only buttons and counters by their element id.
// JavaScript because Gradio has no tooltip option for labels, buttons or tabs, and it re-renders elements (a changed
// label, a reopened accordion), so titles are set again whenever the page changes.
(() => {
  const BY_TEXT = {
    // checkpoint bar
    "Stable Diffusion checkpoint": "The model that generates images; choosing one loads it.",
    "Refresh": "Look for new or removed files in the models folder and say what was found.",
    "SD VAE": "The decoder that turns latents into pixels; Automatic uses the one in the checkpoint.",
    "Outputs": "Open the folder with the generated images in this computer's file manager.",
    // tabs
    "txt2img": "Make images from a text prompt.",
    "img2img": "Make a new image from an uploaded image and a prompt.",
    "Inpaint": "Repaint the masked part of an image, or extend its borders.",
    "PNG Info": "Read the generation parameters stored in an image file.",
    "Extras": "Upscale single images or a batch with the upscalers in the models folder.",
    "Settings": "Options of the app and its extensions.",
    "Extensions": "Enable, disable and install extensions.",
    "ControlNet": "Try ControlNet preprocessors on an image and see their maps.",
    "LoRA training": "Train a LoRA on your own images.",
    "Models": "Settings per checkpoint, such as its prediction type.",
    "Brush mask": "Paint over the part of the image to change.",
    "Upload mask": "Use a black-and-white mask file, where white is repainted.",
    "Outpaint": "Extend the image beyond its borders.",
    // prompts and buttons
    "Prompt": "What the image should show; Ctrl+Enter generates from anywhere in the tab.",
    "Negative prompt": "What the image should not show.",
    "Generate": "Start generating with these settings (Ctrl+Enter).",
    "Interrupt": "Stop your running and waiting jobs; finished images are kept (Esc).",
    "Skip": "Drop the batch being sampled and go on with the next one.",
    "Send to img2img": "Open the selected image and its parameters in the img2img tab.",
    "Send to inpaint": "Open the selected image and its parameters in the Inpaint tab.",
    "Send to txt2img": "Copy this image's parameters into the txt2img tab.",
    "Send to outpaint": "Open the selected image in the Inpaint tab's Outpaint sub-tab, to extend it.",
    "Send to ControlNet": "Use this image as the control image of txt2img's first ControlNet unit.",
    "Unload the chosen checkpoint": "Free the memory the chosen checkpoint takes; the next job that needs it loads it again.",
    "Send to extras": "Open the selected image in the Extras tab, to upscale it.",
    // sampling
    "Sampling method": "The algorithm that removes noise step by step.",
    "Schedule type": "How the noise levels are spaced over the steps; Automatic picks the sampler's usual one.",
    "Sampling steps": "How many denoising steps to run; more is slower and often a little more detailed.",
    "Width": "Image width in pixels, a multiple of 8.",
    "Height": "Image height in pixels, a multiple of 8.",
    "Width (0 = the input's)": "Output width in pixels; 0 keeps the input image's width.",
    "Height (0 = the input's)": "Output height in pixels; 0 keeps the input image's height.",
    "Batch count": "How many batches to make one after another.",
    "Batch size": "How many images to make at once in one batch (uses more memory).",
    "CFG Scale": "How strictly the image follows the prompt; higher is stricter, too high looks harsh.",
    "Seed (-1 = random)": "The random number that fixes the image; the same seed and settings give the same image.",
    "Extra": "Show the variation seed, resize seed from and noise source options; they count only while ticked.",
    "Variation seed (-1 = random)": "A second seed whose noise is mixed in; image i of a job uses this seed plus i.",
    "Variation strength": "How far the noise moves towards the variation seed's; 0 is the seed alone, 1 the variation seed alone.",
    "Resize seed from width": "Draw the seed's noise at this width and centre it, to keep a composition at a new size (0 = off).",
    "Resize seed from height": "Draw the seed's noise at this height and centre it, to keep a composition at a new size (0 = off).",
    "Noise source (RNG)": "Where the noise comes from: Setting follows Settings, and NV reproduces NVIDIA cards' seeds on any machine.",
    "Override settings": "Settings a pasted infotext asks for (Clip skip, ENSD, Emphasis), used by this tab's jobs only; remove one to use your own setting.",
    "Denoising strength": "How much of the input image to change; 0 keeps it, 1 ignores it.",
    "Resize mode": "How the input image is fitted to a different output size.",
    "Script": "Run a script instead of a plain generation, such as an X/Y/Z plot or prompts from a file.",
    // results
    "Preview": "The image as it forms during sampling.",
    "Output": "The finished images; click one to see its parameters.",
    "Generation parameters": "The parameters stored in the selected image, as A1111 writes them.",
    // styles, pasting parameters and the image browser (A1111 workflow)
    "Styles": "Saved prompt styles to add to the prompts when generating, in the order chosen.",
    "Style name": "The style to edit; type a new name to make a new style.",
    "Style prompt ({prompt} marks where your prompt goes)": "Text added to the prompt; {prompt} marks where your prompt goes, else it is appended.",
    "Style negative prompt": "Text added to the negative prompt in the same way.",
    "Copy prompts": "Fill the style from the prompt boxes.",
    "Save style": "Save this style to styles.csv.",
    "Delete style": "Remove this style from styles.csv.",
    "Close": "Close the style editor.",
    "Image with parameters": "An image whose generation parameters fill the fields.",
    "Image Browser": "Your saved images, newest first, searchable by prompt.",
    "Folder": "Show the images of one output folder, or all of them.",
    "Search prompts": "Show only images whose prompt contains these words (press Enter).",
    "Previous page": "Show the newer images before this page.",
    "Next page": "Show the older images after this page.",
    "Page": "The page of images shown (press Enter to go there).",
    "Your images": "Your saved images; click one to see its parameters and send it to a tab.",
    // img2img and inpaint inputs
    "Image": "The image to start from.",
    "Image and mask (paint over what to change)": "Upload an image, then paint over the part to repaint.",
    "Mask (white = repaint)": "A black-and-white image of the same size, where white marks what to repaint.",
    "Extend left (px)": "How many pixels to add on the left side.",
    "Extend right (px)": "How many pixels to add on the right side.",
    "Extend up (px)": "How many pixels to add at the top.",
    "Extend down (px)": "How many pixels to add at the bottom.",
    "New area starts from": "What the added area holds before it is painted: stretched edge pixels or noise.",
    "Clear mask": "Remove the painted mask and keep the image.",
    "Mask blur": "How many pixels the mask's edge is softened, so the repainted part blends in.",
    "Mask mode": "Repaint the masked part, or everything except it.",
    "Masked content": "What the masked part holds before repainting: the original, fill, noise or nothing.",
    "Inpaint area": "Repaint at the whole picture's size, or zoom in on the masked part for more detail.",
    "Only masked padding, pixels": "How much context around the mask is included when only the masked part is repainted.",
    "Depth map for SD 2 depth models (brighter = nearer; empty: estimated with depth_midas)":
      "A depth map for SD 2 depth models; left empty, one is estimated from the image.",
    // PNG Info
    "Source": "An image whose generation parameters you want to read.",
    "Parameters": "The text stored in the image, exactly as written.",
    // ControlNet
    "Enable": "Use this ControlNet unit in the next generation.",
    "Control image": "The image whose composition (edges, depth, pose) the ControlNet follows.",
    "Control image (empty: the img2img input is used)": "The image whose composition the ControlNet follows; empty uses the img2img input.",
    "Pixel Perfect": "Let the preprocessor work at the output size instead of its own resolution.",
    "Preprocessor preview": "What the preprocessor made of the control image.",
    "Preprocessor": "Turns the control image into the map the ControlNet reads (edges, depth, pose and so on).",
    "Model": "The ControlNet model that steers the generation with the map.",
    "Run preprocessor": "Run the preprocessor on the image and show its map.",
    "Control Weight": "How strongly the ControlNet steers the image.",
    "Starting Control Step": "The fraction of the steps after which the ControlNet starts to act.",
    "Ending Control Step": "The fraction of the steps after which the ControlNet stops acting.",
    "Preprocessor Resolution (-1: default)": "The size the preprocessor works at; -1 uses its default.",
    "Preprocessor Resolution": "The size the preprocessor works at.",
    "Threshold A (-1: default)": "The preprocessor's first setting, such as a low edge threshold; -1 uses its default.",
    "Threshold B (-1: default)": "The preprocessor's second setting, such as a high edge threshold; -1 uses its default.",
    "Control Mode": "Whether the prompt or the ControlNet matters more.",
    "Resize Mode": "How the control image is fitted to the output size.",
    "Detected map": "The map the preprocessor produced.",
    // models tab and extensions tab
    "Checkpoint": "The checkpoint whose settings to change.",
    "Prediction type (SD2 files cannot always tell)": "What the model predicts; set it when an SD2 file loads with the wrong one.",
    "Apply": "Save this setting for the chosen checkpoint.",
    "Enabled extensions": "Tick the extensions to load at the next start.",
    "Save": "Save which extensions are enabled.",
    "Git URL": "The address of an extension's git repository.",
    "or a .zip archive": "An extension packed as a .zip file.",
    "I trust this code: copy it into my extensions folder": "Extensions run with the app's rights, so install only code you trust.",
    "Install": "Copy the extension into the extensions folder.",
    "Apply settings": "Save the changed settings.",
    // LoRA training
    "Base model": "The checkpoint the LoRA is trained on and made for.",
    "Start training": "Start training the LoRA as a job.",
    "Samples": "Images made with the LoRA during training.",
    "Messages and warnings": "What the training run reported.",
    "LoRA name (file: models/Lora/<name>.safetensors)": "The name of the LoRA file to write.",
    "Dataset folder (images + .txt captions; 10_name sub-folders repeat 10x)": "The folder of training images with their captions.",
    "Trigger word": "A word that calls up what the LoRA learned.",
    "Learn the trigger word too (pivotal tuning: models/embeddings/<trigger>.safetensors)": "Also train an embedding for the trigger word, saved beside the LoRA.",
    "Regularisation folder (optional: images + captions of what should stay as it is)": "Images of what the model should keep drawing as before.",
    "Prior loss weight (regularisation images)": "How much the regularisation images count.",
    "Prior guidance (0 = noise target; a CFG scale = hold the base model's guided prediction)": "0 trains regularisation images towards the noise as kohya does; a CFG scale holds what the base model draws for their prompts at that scale.",
    "Preservation words (optional, comma-separated: captions with the trigger swapped for each must draw what the base model draws)": "Words the new concept must not leak into, such as its neighbours.",
    "Preservation weight": "How much output preservation counts.",
    "Preserve the empty prompt (CFG's unconditional branch)": "Also hold the prompt-less prediction to the base model's.",
    "Resolution (0 = the model's own)": "The training image size; 0 uses the model's native size.",
    "Aspect-ratio buckets": "Train on images of several aspect ratios without cropping them square.",
    "Rank (network dim)": "The LoRA's size; higher learns more detail and makes a bigger file.",
    "Alpha": "Scales the LoRA's updates; half the rank is a common choice.",
    "Train the U-Net": "Train the part that paints the image.",
    "Train the text encoder": "Also train the part that reads the prompt.",
    "U-Net layers (attention+conv = LoCon)": "Which image-model layers the LoRA trains; attention+conv (LoCon) also trains the convolutions that draw shapes, and learns new shapes best.",
    "Conv rank (LoCon conv_dim; 0 = rank)": "The size of the convolution layers' part of a LoCon; lower changes other prompts less.",
    "Conv alpha (0 = alpha)": "Scales the convolution layers' updates; 0 uses Alpha.",
    "Optimizer": "The algorithm that updates the weights.",
    "Learning rate (0 = automatic: 1e-4 for SD-sized models, 1e-3 for small ones, 1 for Prodigy)": "How big each training update is; 0 picks a value for the model.",
    "Text-encoder learning rate (0 = same)": "The text encoder's learning rate; 0 uses the main one.",
    "Trigger-word learning rate (0 = automatic: 5e-3, 1 for Prodigy)": "The trigger-word embedding's learning rate; 0 picks one.",
    "LR schedule": "How the learning rate changes during training.",
    "Warm-up steps": "Steps at the start during which the learning rate rises from zero.",
    "Epochs": "How many times to go through the dataset.",
    "Max steps (0 = use epochs)": "Stop after this many steps; 0 uses the epochs instead.",
    "Gradient accumulation": "Add up this many batches before each update, to train as with a bigger batch.",
    "Caption dropout": "The share of steps trained without a caption.",
    "Network dropout": "The share of each LoRA layer's input left out at random while training (kohya's network_dropout; 0.1 is common).",
    "Weight decay": "AdamW's decoupled weight decay of the LoRA layers (0.01 is torch's and kohya's default); the trigger word's vectors get none.",
    "Noise offset": "Adds a little overall brightness noise so the LoRA can learn very dark and bright images.",
    "Min-SNR γ (0 = off)": "Balances the training over noise levels; 5 is common and 0 turns it off.",
    "Cache latents": "Encode the images once instead of at every step (faster, no random flips).",
    "Gradient checkpointing": "Save memory by recomputing parts of the model (slower).",
    "Mixed precision (CUDA only)": "Train in 16-bit floats on an NVIDIA GPU to save memory and time.",
    "Seed": "The random number that makes a training run repeatable.",
    "Runs to average (0 = automatic: 2 for small models, 1 for SD-sized; each run takes the next seed, and the file is their exact mean)": "Train this many runs on consecutive seeds and save their average, which keeps what they share and drops each run's noise.",
    "Sample prompts (one per line; empty = two dataset captions)": "Prompts for the sample images made during training.",
    "Sample every N steps (0 = never)": "How often to make sample images.",
    "Save a resumable state every N steps (0 = only at the end)": "How often to save a state the run can resume from.",
    "Resume the saved run of this name": "Continue the saved run of this LoRA name instead of starting over.",
    // core settings
    "Output folder for txt2img images": "Where txt2img images are saved.",
    "Output folder for img2img and inpaint images": "Where img2img and inpaint images are saved.",
    "Output folder for txt2img grids": "Where grids of txt2img batches are saved.",
    "Output folder for img2img grids": "Where grids of img2img batches are saved.",
    "File-name pattern (after the NNNNN- number)": "How saved files are named after their number.",
    "Save a grid of each batch of more than one image": "Also save one image with every image of a batch side by side.",
    "File format for images": "The file type generated images are saved as.",
    "JPEG/WebP quality": "The quality of JPEG and WebP files; higher is bigger and sharper.",
    "Save the generation parameters in the file (PNG info / EXIF)": "Store the prompt and settings inside each image file.",
    "Show live previews while sampling": "Show the image as it forms.",
    "Live preview every N sampling steps": "How often the live preview is updated.",
    "Live preview method": "How live previews are drawn from the latents.",
    "Default sampling method": "The sampler the tabs start with.",
    "Default sampling steps": "The step count the tabs start with.",
    "Default CFG scale": "The CFG scale the tabs start with.",
    "Default txt2img width (0 = the model's own size)": "The width txt2img starts with; 0 uses the model's size.",
    "Default txt2img height (0 = the model's own size)": "The height txt2img starts with; 0 uses the model's size.",
    "Theme (applies on the next page load)": "Light or dark pages.",
    "Eta for DDIM (noise multiplier)": "How much fresh noise DDIM adds at each step.",
    "Eta noise seed delta (ENSD) for ancestral and SDE samplers": "A number added to the seed of the extra noise, to match other apps' images.",
    "Sigma churn (Euler)": "How much noise Euler adds back at each step.",
    "Random number generator source": "Where seeds' noise comes from: GPU as in A1111, CPU the same everywhere, NV NVIDIA's on any machine.",
    "Checkpoints to keep in RAM": "How many recently used checkpoints stay in memory for a quick switch.",
    "ControlNet models to keep loaded": "How many ControlNet models stay loaded between generations.",
  };

  // Texts that carry a number or a name: matched by their start.
  const BY_PREFIX = [
    ["LoRA (", "LoRA files in models/Lora; click a card to add its tag to the prompt."],
    ["Textual Inversion (", "Embeddings in models/embeddings; click a card to add its name to the prompt."],
    ["ControlNet Unit", "One ControlNet: a control image, a preprocessor and a model that steer the composition."],
  ];

  // Icon-only buttons and counters, by element id (the tab prefix before the first "_" may be left out).
  const BY_ID = {
    random_seed: "Use a new random seed for every image (-1).",
    paste: "Read generation parameters from the prompt box, or from your last image if it is empty, into the fields.",
    apply_styles: "Write the selected styles into the prompt boxes and clear the selection.",
    edit_style: "Open the style editor to save the prompts as a style, or change or delete one.",
    browser_refresh: "List your saved images again.",
    reuse_seed: "Use the seed of the image shown in Generation parameters (the selected one).",
    token_counter: "Tokens in the prompt / room in its 75-token chunks; a longer prompt gets another chunk.",
    neg_token_counter: "Tokens in the negative prompt / room in its 75-token chunks.",
    open_outputs: "Open the folder with the generated images in this computer's file manager.",
    refresh_checkpoints: "Look for new or removed checkpoints and VAEs and say what was found.",
    lora_refresh: "Look for new or removed LoRA files.",
    ti_refresh: "Look for new or removed embedding files.",
    refresh: "Look for new or removed ControlNet models.",
    loaded_refresh: "Show again which checkpoints are loaded, where, and how much memory each takes.",
    run: "Run the preprocessor on the control image and show its map.",
  };

  const clean = (text) => (text || "").replace(/\s+/g, " ").trim();

  function byId(id) {
    if (!id) return undefined;
    if (BY_ID[id]) return BY_ID[id];
    const parts = id.split("_");
    for (let i = 1; i < parts.length; i++) {
      const hint = BY_ID[parts.slice(i).join("_")];
      if (hint) return hint;
    }
    return undefined;
  }

  function byText(text) {
    if (!text) return undefined;
    if (Object.prototype.hasOwnProperty.call(BY_TEXT, text)) return BY_TEXT[text];
    const prefixed = BY_PREFIX.find(([start]) => text.startsWith(start));
    return prefixed ? prefixed[1] : undefined;
  }

  function setTitle(element, hint) {
    if (element && hint && element.title !== hint) element.title = hint;
  }

  function apply() {
    document.querySelectorAll("button").forEach((button) => {
      const text = clean(button.textContent);
      const hint = byId(button.id) || byText(text);
      if (!hint) return;
      setTitle(button, hint);
      if (!text && !button.getAttribute("aria-label")) button.setAttribute("aria-label", hint);
    });
    // Labels of textboxes, sliders, numbers, dropdowns, radios, images and galleries; the whole block gets the
    // title too, so hovering the control itself shows it.
    document.querySelectorAll('[data-testid="block-info"], [data-testid="block-label"], label > span').forEach((label) => {
      const hint = byText(clean(label.textContent));
      if (!hint) return;
      setTitle(label, hint);
      setTitle(label.closest(".block"), hint);
    });
    document.querySelectorAll('[id$="token_counter"]').forEach((counter) => setTitle(counter, byId(counter.id)));
  }

  let scheduled = false;
  function schedule() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      apply();
    });
  }

  function start() {
    apply();
    new MutationObserver(schedule).observe(document.body, { childList: true, subtree: true, characterData: true });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
