"""LoRA training through `train_lora`: the file diffusers loads equals the model trained in memory, loss falls on the
shipped model, resume replays exactly, and every bad input has a message and leaves nothing half-written."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.reference import load_reference_pipeline
from webui.engine.embeddings import read_embedding
from webui.engine.loader import LoadedModel, load_checkpoint
from webui.engine.lora import lora_patches, read_lora
from webui.engine.patching import patched
from webui.shapes import concept_scenes, write_captioned_folder
from webui.training.lora_dataset import DatasetError, make_buckets, nearest_bucket, scan_dataset
from webui.training.train_lora import LoraTrainingSettings, TrainingError, train_lora

pytestmark = pytest.mark.usefixtures("single_torch_thread")

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models/Stable-diffusion/latent-studio-shapes.safetensors"
KOHYA_KEY = r"^lora_(unet|te|te1|te2)_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$"


class Quiet:
    """An observer that keeps what it is told (and prints nothing)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.samples: list[Path] = []
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self.stop_after = stop_after

    def started(self, total_steps, dataset, resumed_from) -> None:
        self.warnings = list(dataset.warnings)

    def stepped(self, progress) -> None:
        self.steps.append(progress.step)
        self.losses.append(progress.loss)

    def sampled(self, step, images, paths) -> None:
        self.samples.extend(paths)

    def message(self, text: str) -> None:
        self.messages.append(text)

    def should_stop(self) -> bool:
        return self.stop_after is not None and bool(self.steps) and self.steps[-1] >= self.stop_after


@pytest.fixture(scope="module")
def concept_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("concept") / "8_rectangle"
    write_captioned_folder(folder, concept_scenes(8))
    return folder.parent


def settings_for(base: Path, data: Path, tmp_path: Path, **changes) -> LoraTrainingSettings:
    values = dict(base=base, data=data, name="trained", output_dir=tmp_path / "Lora", run_dir=tmp_path / "run",
                  sample_every=0, save_every=0, batch_size=2, max_steps=4, rank=4, alpha=4.0, resolution=64,
                  average_runs=1)
    values.update(changes)
    return LoraTrainingSettings(**values)


def _unet_inputs(model: LoadedModel, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, model.latent_channels, 8, 8), generator=g)
    width = sum(e.model.config.hidden_size for e in model.text_encoders)
    context = torch.randn((1, 77, width), generator=g)
    extra = {}
    if model.family.is_sdxl:
        pooled = model.text_encoders[-1].model.config.projection_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn((1, pooled), generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}}
    return latents, torch.tensor([500]), context, extra


@pytest.mark.parametrize("family", ["tiny_sd1", "tiny_sdxl"])
def test_the_file_diffusers_loads_equals_the_model_trained_in_memory(family: str, request: pytest.FixtureRequest,
                                                                     concept_folder: Path, tmp_path: Path) -> None:
    tiny = request.getfixturevalue(family)
    trained = load_checkpoint(tiny.path)
    result = train_lora(settings_for(tiny.path, concept_folder, tmp_path, learning_rate=2e-2, max_steps=3,
                                     trigger="rectangle", embedding_lr=0.05), Quiet(), model=trained)
    assert result.output == tmp_path / "Lora" / "trained.safetensors" and result.steps == 3
    _check_learned_trigger(trained, tmp_path / "embeddings" / "rectangle.safetensors", family)

    with safe_open(str(result.output), "pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    import re

    assert keys and all(re.match(KOHYA_KEY, key) for key in keys), [k for k in keys if not re.match(KOHYA_KEY, k)][:3]
    unet_keys = [k for k in keys if k.startswith("lora_unet_")]
    # kohya's own spelling per family: diffusers paths in SD1 files, SGM paths in SDXL files
    assert all(("input_blocks" in k or "output_blocks" in k or "middle_block" in k) == (family == "tiny_sdxl")
               for k in unet_keys)
    te_prefixes = {k.split("_text_model")[0] for k in keys if "_text_model_" in k}
    assert te_prefixes == ({"lora_te1", "lora_te2"} if family == "tiny_sdxl" else {"lora_te"})
    for key in ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_output_name",
                "ss_resolution", "ss_num_train_images", "ss_steps", "ss_learning_rate", "ss_tag_frequency",
                "modelspec.architecture", "sshs_model_hash"):
        assert metadata.get(key), key
    assert metadata["ss_network_dim"] == "4" and metadata["ss_steps"] == "3" and metadata["ss_num_train_images"] == "64"
    assert json.loads(metadata["ss_tag_frequency"])["8_rectangle"]
    assert metadata["ss_base_model_version"] == ("sdxl_base_v1-0" if family == "tiny_sdxl" else "sd_v1")

    # diffusers' own loader, on diffusers' own pipeline of the base file, reproduces the trained modules
    pipe = load_reference_pipeline(tiny.path, tiny.model, tmp_path / "ref")
    latents, t, context, extra = _unet_inputs(trained)
    with torch.no_grad():
        base_out = pipe.unet(latents, t, context, **extra).sample
        pipe.load_lora_weights(str(result.output))
        lora_out = pipe.unet(latents, t, context, **extra).sample
        ours = trained.unet(latents, t, context, **extra).sample
        ids = torch.randint(0, 49000, (1, 77), generator=torch.Generator().manual_seed(1))
        te_pairs = [(pipe.text_encoder, trained.text_encoders[0].model)]
        if family == "tiny_sdxl":
            te_pairs.append((pipe.text_encoder_2, trained.text_encoders[1].model))
        for theirs, mine in te_pairs:
            a = theirs(ids, output_hidden_states=True).hidden_states[-2]
            b = mine(ids, output_hidden_states=True).hidden_states[-2]
            assert (a - b).abs().max() < 2e-3 * b.abs().max()
    change = (ours - base_out).abs().max()
    assert change > 1e-3  # the trained LoRA does something
    assert (lora_out - ours).abs().max() < 0.02 * change  # fp16 file vs fp32 training weights

    # our own loader agrees too: base model + the file's patches = the trained model
    base = load_checkpoint(tiny.path)
    with patched(lora_patches(read_lora(result.output), base, 1.0, 1.0)), torch.no_grad():
        patched_out = base.unet(latents, t, context, **extra).sample
    assert (patched_out - ours).abs().max() < 0.02 * change


def _check_learned_trigger(trained: LoadedModel, path: Path, family: str) -> None:
    """Pivotal tuning: the trigger's vectors are an A1111 embedding file, one vector per token of the word, and the
    app's embedding path conditions a prompt exactly as the training hook did."""
    from webui.engine.conditioning import encode_prompts, token_embedding
    from webui.engine.embeddings import embedding_set_for, read_embedding
    from webui.engine.tokenizer import encode_text
    from webui.training.trigger_embedding import TriggerEmbedding

    with safe_open(str(path), "pt") as handle:
        assert set(handle.keys()) == ({"clip_l", "clip_g"} if family == "tiny_sdxl" else {"emb_params"})
        assert handle.metadata()["latent_studio_lora"] == "trained"
    embedding = read_embedding(path)
    emb_set, skipped = embedding_set_for(trained, {"rectangle": embedding})
    assert skipped == [] and embedding.vector_count == len(encode_text("rectangle"))
    for index, encoder in enumerate(trained.text_encoders):  # it moved away from the word's own (untrained) vectors
        own = token_embedding(encoder).weight[encode_text("rectangle")].detach()
        learned = emb_set.vectors("rectangle", index)
        cosine = torch.nn.functional.cosine_similarity(own, learned, dim=-1)
        assert (cosine < 0.9999).all() and learned.norm(dim=-1).min() > own.norm(dim=-1).max()
    prompt = "a red rectangle at the center on a black background"
    with_file = encode_prompts(trained, [prompt], embeddings=emb_set).context
    replay = TriggerEmbedding(trained, "rectangle", [prompt])
    replay.load_state([emb_set.vectors("rectangle", i) for i in range(len(trained.text_encoders))])
    with replay.installed(trained):
        as_trained = encode_prompts(trained, [prompt]).context
    without = encode_prompts(trained, [prompt]).context
    assert torch.allclose(with_file, as_trained, atol=1e-5)
    assert (with_file - without).abs().max() > 1e-3


def test_trigger_embedding_is_optional_and_never_replaces_someone_elses(concept_folder: Path, tmp_path: Path) -> None:
    train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path, trigger="zx", trigger_embedding=False,
                            max_steps=1), Quiet())
    assert not (tmp_path / "embeddings").exists()
    train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path, trigger="zx", max_steps=1), Quiet())
    first = (tmp_path / "embeddings" / "zx.safetensors").read_bytes()
    train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path, trigger="zx", max_steps=2), Quiet())
    assert (tmp_path / "embeddings" / "zx.safetensors").read_bytes() != first  # the same LoRA retrained: replaced
    with pytest.raises(TrainingError, match="an embedding named 'zx' already exists"):
        train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path, name="other", trigger="zx", max_steps=1),
                   Quiet())
    assert not (tmp_path / "Lora" / "other.safetensors").exists()


def test_default_model_loss_falls_and_samples_are_drawn(concept_folder: Path, tmp_path: Path) -> None:
    observer = Quiet()
    settings = settings_for(DEFAULT_MODEL, concept_folder, tmp_path, max_steps=40, batch_size=4, sample_every=20,
                            sample_steps=4,
                            sample_prompts=["a large red rectangle at the center on a black background"])
    result = train_lora(settings, observer)
    assert result.output is not None and result.output.exists()
    early, late = np.mean(observer.losses[:8]), np.mean(observer.losses[-8:])
    assert late < 0.7 * early, (early, late)
    assert [p.name for p in observer.samples] == ["step000020-00.png", "step000040-00.png"]
    assert Image.open(observer.samples[0]).size == (64, 64)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "step" in entry] == list(range(1, 41))


@pytest.mark.parametrize("network_dropout", [0.0, 0.3])
def test_interrupt_then_resume_gives_the_uninterrupted_result(network_dropout: float, concept_folder: Path,
                                                              tmp_path: Path) -> None:
    straight = train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path / "a", max_steps=6, save_every=2,
                                       trigger="rectangle", network_dropout=network_dropout), Quiet())

    observer = Quiet(stop_after=3)
    first = settings_for(DEFAULT_MODEL, concept_folder, tmp_path / "b", max_steps=6, save_every=2, trigger="rectangle",
                         network_dropout=network_dropout)
    stopped = train_lora(first, observer, should_stop=observer.should_stop)
    assert stopped.interrupted and stopped.output is None and stopped.steps == 3
    assert not (tmp_path / "b" / "Lora").exists() or not list((tmp_path / "b" / "Lora").iterdir())
    assert torch.load(tmp_path / "b" / "run" / "checkpoint-latest.pt", weights_only=True)["step"] == 3
    assert (tmp_path / "b" / "run" / "trained-step000002.safetensors").exists()

    assert not (tmp_path / "b" / "embeddings").exists()  # nothing under a final name until training completes
    resumed = train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path / "b", max_steps=6, save_every=2,
                                      trigger="rectangle", resume=True, network_dropout=network_dropout), Quiet())
    assert resumed.steps == 6 and resumed.output is not None
    a, b = read_lora(straight.output), read_lora(resumed.output)
    assert a.layers.keys() == b.layers.keys()
    for name in a.layers:
        for key, tensor in a.layers[name].tensors.items():
            assert torch.allclose(tensor.float(), b.layers[name].tensors[key].float(), atol=2e-3), (name, key)
    learned = [read_embedding(tmp_path / run / "embeddings" / "rectangle.safetensors").vectors[""] for run in "ab"]
    assert torch.allclose(*learned, atol=1e-5)


def _delta(layer) -> torch.Tensor:
    """kohya's definition of a LoRA layer's weight change: (alpha / rank) x up @ down."""
    down, up = layer.tensors["lora_down.weight"].float(), layer.tensors["lora_up.weight"].float()
    alpha = layer.alpha if layer.alpha is not None else down.shape[0]
    return alpha / down.shape[0] * (up.flatten(1) @ down.flatten(1))


def test_averaged_runs_write_the_exact_mean_of_single_runs_and_resume_in_the_run_that_stopped(
        concept_folder: Path, tmp_path: Path) -> None:
    """*Runs to average* (automatic on the shipped model: 2) trains the runs on consecutive seeds and writes their
    exact mean; its progress counts on across the runs; an interrupt in the second run resumes there."""
    singles = [train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path / f"seed{seed}", max_steps=3,
                                       trigger="rectangle", seed=seed), Quiet()) for seed in (5, 6)]
    observer = Quiet()
    averaged = train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path / "avg", max_steps=3, name="rectangle",
                                       trigger="rectangle", seed=5, average_runs=0), observer)  # named like its word
    assert averaged.output == tmp_path / "avg" / "Lora" / "rectangle.safetensors" and averaged.steps == 6
    assert observer.steps == [1, 2, 3, 4, 5, 6]
    mean, parts = read_lora(averaged.output), [read_lora(single.output) for single in singles]
    assert mean.layers.keys() == parts[0].layers.keys()
    for name, layer in mean.layers.items():
        expected = (_delta(parts[0].layers[name]) + _delta(parts[1].layers[name])) / 2
        assert torch.allclose(_delta(layer), expected, atol=1e-3), name
    words = [read_embedding(tmp_path / run / "embeddings" / "rectangle.safetensors").vectors[""]
             for run in ("seed5", "seed6", "avg")]
    assert torch.allclose((words[0] + words[1]) / 2, words[2], atol=1e-3)
    with safe_open(str(averaged.output), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["ss_network_dim"], metadata["latent_studio.average_of_runs"]) == ("8", "2")
    assert (metadata["latent_studio.run_seeds"], metadata["ss_steps"]) == ("[5, 6]", "6")

    stopping = Quiet(stop_after=4)
    settings = settings_for(DEFAULT_MODEL, concept_folder, tmp_path / "resumed", max_steps=3, trigger="rectangle",
                            seed=5, average_runs=2, save_every=1)
    stopped = train_lora(settings, stopping, should_stop=stopping.should_stop)
    assert stopped.interrupted and stopped.output is None and stopped.steps == 4
    assert not (tmp_path / "resumed" / "Lora").exists() and not (tmp_path / "resumed" / "embeddings").exists()
    again = Quiet()
    resumed = train_lora(replace(settings, resume=True), again)
    assert again.steps == [5, 6]  # the first run was not trained again
    for name, layer in read_lora(resumed.output).layers.items():
        assert torch.allclose(_delta(layer), _delta(mean.layers[name]), atol=2e-3), name


def test_buckets_keep_the_aspect_ratio(tmp_path: Path) -> None:
    buckets = make_buckets(64, 16)
    assert (64, 64) in buckets and all(w % 16 == 0 and h % 16 == 0 and w * h <= 64 * 64 for w, h in buckets)
    assert nearest_bucket((300, 200), buckets) == (80, 48)  # 1.5 -> 1.67 is the nearest ratio with area <= 64²
    assert nearest_bucket((200, 300), buckets) == (48, 80)
    data = tmp_path / "data"
    data.mkdir()
    for index, size in enumerate([(96, 64), (64, 64), (64, 96)]):
        Image.new("RGB", size, (0, 200, 220)).save(data / f"{index}.png")
        (data / f"{index}.txt").write_text("a cyan block")
    result = train_lora(settings_for(DEFAULT_MODEL, data, tmp_path, max_steps=2, batch_size=1), Quiet())
    with safe_open(str(result.output), "pt") as handle:
        info = json.loads(handle.metadata()["ss_bucket_info"])["buckets"]
    assert info == {"80x48": 1, "64x64": 1, "48x80": 1}


def test_dataset_folder_rules_and_their_warnings(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "3_cyanthing").mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(data / "a.png")
    (data / "a.txt").write_text("a red  square\n")
    Image.new("RGB", (64, 64), "blue").save(data / "3_cyanthing" / "b.jpg")  # no caption: the folder's class word
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (data / "notes.pdf").write_bytes(b"%PDF-1.4")
    dataset = scan_dataset(data, trigger="sks")
    assert [(i.path.name, i.caption, i.repeats) for i in dataset.images] == [
        ("a.png", "sks, a red square", 1), ("b.jpg", "sks, cyanthing", 3)]
    text = "\n".join(dataset.warnings)
    assert "broken.png: cannot be read as an image" in text and "skipped" in text
    assert "notes.pdf: not an image" in text
    assert "b.jpg: no caption file" in text and "'cyanthing'" in text
    assert dataset.tag_frequency() == {"data": {"sks": 1, "a red square": 1}, "3_cyanthing": {"sks": 1, "cyanthing": 1}}


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", "does not exist"),
    ("empty", "has no usable images"),
    ("only_broken", "has no usable images (1 file(s) could not be used: broken.png: cannot be read"),
])
def test_unusable_folders_are_refused(setup: str, message: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    if setup != "missing":
        data.mkdir()
    if setup == "only_broken":
        (data / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_lora(settings_for(DEFAULT_MODEL, data, tmp_path), Quiet())
    assert not (tmp_path / "Lora").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"rank": 0}, "rank must be at least 1"),
    ({"learning_rate": float("nan")}, "learning rate must be a number"),
    ({"learning_rate": -1.0}, "learning rate must be above 0"),
    ({"train_unet": False, "train_text_encoder": False}, "neither is selected"),
    ({"optimizer": "SGD"}, "optimizer 'SGD' is not one of AdamW, AdamW8bit, Prodigy"),
    ({"mixed_precision": "fp16"}, "fp16 mixed precision needs a CUDA GPU"),
    ({"name": "../escape"}, "name '../escape' must be"),
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"resume": True}, "nothing to resume"),
    ({"trigger": "../up", "trigger_embedding": True}, "trigger word '../up' becomes the embedding's file name"),
    ({"embedding_lr": float("nan")}, "embedding learning rate must be a number"),
    ({"network_dropout": 1.0}, "network dropout must be in"),
    ({"weight_decay": -0.1}, "weight decay must be 0"),
])
def test_impossible_settings_are_refused_before_anything_is_written(change: dict, message: str, concept_folder: Path,
                                                                    tmp_path: Path) -> None:
    if torch.cuda.is_available() and "mixed_precision" in change:
        pytest.skip("this machine has CUDA, so fp16 is possible")  # never on CI (no GPU)
    with pytest.raises(TrainingError, match=message.replace("(", r"\(")):
        train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path, **change), Quiet())
    assert not (tmp_path / "Lora").exists()


def test_a_loss_that_explodes_stops_with_advice_and_keeps_the_saved_state(concept_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="lower the learning rate; the last saved state"):
        train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path, learning_rate=1e30, max_steps=6, save_every=1),
                   Quiet())
    assert not (tmp_path / "Lora").exists()


def test_prodigy_trains(concept_folder: Path, tmp_path: Path) -> None:
    observer = Quiet()
    result = train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path, optimizer="Prodigy", learning_rate=1.0,
                                     lr_scheduler="cosine", max_steps=3), observer)
    assert result.output is not None and len(observer.losses) == 3 and all(np.isfinite(observer.losses))


def test_regularization_images_fill_an_epoch_and_are_recorded(concept_folder: Path, tmp_path: Path) -> None:
    from webui.shapes import eval_scenes
    from webui.training.lora_dataset import with_regularization

    reg = tmp_path / "reg"
    write_captioned_folder(reg, eval_scenes(4))
    combined = with_regularization(scan_dataset(concept_folder, "zx"), scan_dataset(reg))  # as train_lora does
    train = [i for i in combined.images if not i.regularization]
    extra = [i for i in combined.images if i.regularization]
    assert combined.total_repeats == 64 and len(extra) == 4 and all(i.repeats == 16 for i in extra)
    assert all(i.caption.startswith("zx, ") for i in train) and not any("zx" in i.caption for i in extra)
    assert list(combined.tag_frequency()) == ["8_rectangle"]
    result = train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path, reg_data=reg, prior_loss_weight=0.5,
                                     max_steps=2), Quiet())
    with safe_open(str(result.output), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_num_reg_images"] == "4" and metadata["ss_prior_loss_weight"] == "0.5"
    assert json.loads(metadata["ss_reg_dataset_dirs"]) == {"reg": {"n_repeats": 16, "img_count": 4}}


def test_cross_attention_kv_layers_train_only_the_keys_and_values_of_cross_attention(tiny_sd1) -> None:
    """Custom Diffusion's choice of U-Net layers: the attn2 to_k/to_v Linear layers and nothing else."""
    from webui.training.lora_network import LoraNetwork, LoraShape, LoraShapeError

    everything = LoraNetwork(load_checkpoint(tiny_sd1.path), LoraShape(rank=2, alpha=2, train_text_encoder=False))
    kv = LoraNetwork(load_checkpoint(tiny_sd1.path),
                     LoraShape(rank=2, alpha=2, train_text_encoder=False, unet_layers="cross-attention-kv"))
    (all_targets,), (kv_targets,) = [[p.targets for p in n.parts] for n in (everything, kv)]
    assert kv_targets and all(t.endswith(("attn2.to_k", "attn2.to_v")) for t in kv_targets)
    assert set(kv_targets) == {t for t in all_targets if t.endswith(("attn2.to_k", "attn2.to_v"))}
    assert len(kv_targets) < len(all_targets)
    with pytest.raises(LoraShapeError, match="unet_layers must be one of"):
        LoraShape(unet_layers="everything").check()


def test_locon_layers_with_their_own_rank_and_alpha_load_back_as_trained(tiny_sd1, concept_folder: Path,
                                                                         tmp_path: Path) -> None:
    """"attention+conv" (kohya's LoCon): the ResNet and sampler 3x3 convolutions train too, with kohya's conv_dim
    and conv_alpha. The file's conv layers carry that rank and alpha, and both diffusers' loader and ours give back
    the model as trained."""
    trained = load_checkpoint(tiny_sd1.path)
    settings = settings_for(tiny_sd1.path, concept_folder, tmp_path, learning_rate=2e-2, max_steps=3,
                            train_text_encoder=False, unet_layers="attention+conv", conv_rank=2, conv_alpha=1.0)
    result = train_lora(settings, Quiet(), model=trained)
    with safe_open(str(result.output), "pt") as handle:
        conv_down = handle.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight")
        conv_alpha = handle.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.alpha")
        attention = [k for k in handle.keys() if k.endswith("attn1_to_q.lora_down.weight")][0]
        attention_rank = handle.get_tensor(attention).shape[0]
        metadata = handle.metadata()
    assert conv_down.shape[0] == 2 and conv_down.shape[2:] == (3, 3) and float(conv_alpha) == 1.0
    assert attention_rank == 4
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1"}

    latents, t, context, extra = _unet_inputs(trained)
    base = load_checkpoint(tiny_sd1.path)
    with torch.no_grad():
        base_out = base.unet(latents, t, context).sample
        ours = trained.unet(latents, t, context).sample
        with patched(lora_patches(read_lora(result.output), base, 1.0, 1.0)):
            patched_out = base.unet(latents, t, context).sample
        pipe = load_reference_pipeline(tiny_sd1.path, tiny_sd1.model, tmp_path / "ref")
        pipe.load_lora_weights(str(result.output))
        theirs = pipe.unet(latents, t, context).sample
    change = (ours - base_out).abs().max()
    assert change > 1e-3
    assert (patched_out - ours).abs().max() < 0.02 * change
    assert (theirs - ours).abs().max() < 0.02 * change


def test_network_dropout_drops_only_while_training_and_is_recorded(tiny_sd1, concept_folder: Path,
                                                                  tmp_path: Path) -> None:
    """kohya's network_dropout: each LoRA layer's input is dropped at random in training; sampling sees all of it."""
    trained = load_checkpoint(tiny_sd1.path)
    settings = settings_for(tiny_sd1.path, concept_folder, tmp_path, learning_rate=2e-2, max_steps=3,
                            network_dropout=0.5)
    result = train_lora(settings, Quiet(), model=trained)
    with safe_open(str(result.output), "pt") as handle:
        assert handle.metadata()["ss_network_dropout"] == "0.5"
    latents, t, context, _ = _unet_inputs(trained)
    with torch.no_grad():
        trained.unet.train()
        first, second = (trained.unet(latents, t, context).sample for _ in range(2))
        trained.unet.eval()
        third, fourth = (trained.unet(latents, t, context).sample for _ in range(2))
    assert (first - second).abs().max() > 1e-4  # a different half of the inputs dropped each time
    assert torch.equal(third, fourth)


def test_weight_decay_shrinks_the_lora_layers_and_is_recorded(tiny_sd1, concept_folder: Path,
                                                              tmp_path: Path) -> None:
    """AdamW's decoupled decay: each step takes lr x decay of every LoRA weight away (here half, three times)."""
    norms, optimizers = {}, {}
    for decay in (0.0, 50.0):
        settings = settings_for(tiny_sd1.path, concept_folder, tmp_path / str(decay), learning_rate=1e-2, max_steps=3,
                                weight_decay=decay, trigger_embedding=False, lr_scheduler="constant", warmup_steps=0)
        output = train_lora(settings, Quiet(), model=load_checkpoint(tiny_sd1.path)).output
        state = read_lora(output)
        norms[decay] = sum(float(layer.tensors["lora_down.weight"].float().norm()) for layer in state.layers.values())
        with safe_open(str(output), "pt") as handle:
            optimizers[decay] = handle.metadata()["ss_optimizer"]
    assert norms[50.0] < 0.5 * norms[0.0]
    assert optimizers == {0.0: "torch.optim.adamw.AdamW(weight_decay=0)",
                          50.0: "torch.optim.adamw.AdamW(weight_decay=50)"}


def test_dropout_masks_never_share_a_seed_with_any_batchs_noise() -> None:
    """One seed for both would draw the masks from the same random stream as the noise and timesteps."""
    from webui.training.train_lora import _BatchPlan

    plan = _BatchPlan(bucket_of=[(64, 64)] * 8, repeats=[1] * 8, global_batch=4, world=4, seed=3)
    noise = {plan.noise_seed(epoch, position) for epoch in range(3) for position in range(40)}
    dropout = [plan.dropout_seed(epoch, position, rank) for epoch in range(3) for position in range(40)
               for rank in range(4)]
    assert len(noise) == 120 and not noise & set(dropout)
    assert len(set(dropout)) == len(dropout)  # each process and batch its own masks


def test_output_preservation_keeps_the_swapped_word_and_the_empty_prompt_where_the_base_model_had_them(
        concept_folder: Path, tmp_path: Path) -> None:
    """With a preservation word, captions saying "square" where the trigger was keep the base model's prediction
    (ai-toolkit's output preservation), and so does the empty prompt (CFG's unconditional branch); the same run
    without preservation pulls both along with the new concept."""
    from webui.training.lora_step import caption_ids, encode_batch, swap_word

    assert swap_word("a Rectangle, two rectangles; rectangle.", "rectangle", "square") == \
        "a square, two rectangles; square."
    with pytest.raises(TrainingError, match="trigger word"):
        settings_for(DEFAULT_MODEL, concept_folder, tmp_path, preserve_words="square").check()
    common = dict(max_steps=8, learning_rate=1e-2, train_text_encoder=False, trigger="rectangle",
                  trigger_embedding=False)
    plain = train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path / "plain", **common), Quiet())
    kept = train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path / "kept", preserve_words="square",
                                   preserve_unconditional=True, preservation_weight=4.0, **common), Quiet())
    model = load_checkpoint(DEFAULT_MODEL)
    captions = {"square": [swap_word(scene.caption, "rectangle", "square") for scene in concept_scenes(8)],
                "empty": [""] * 8}
    g = torch.Generator().manual_seed(1)
    latents = torch.randn((8, model.latent_channels, 16, 16), generator=g)
    timesteps = torch.full((8,), 400)
    drift: dict[tuple[str, str], float] = {}
    with torch.no_grad():
        for prompt, texts in captions.items():
            context = encode_batch(model, caption_ids(model, texts)).context
            base = model.unet(latents, timesteps, context).sample
            for name, result in (("plain", plain), ("kept", kept)):
                with patched(lora_patches(read_lora(result.output), model, 1.0, 1.0)):
                    drift[name, prompt] = (model.unet(latents, timesteps, context).sample - base).pow(2).mean().item()
    for prompt in captions:
        assert drift["plain", prompt] > 0 and drift["kept", prompt] < 0.5 * drift["plain", prompt], drift


def test_prior_guidance_holds_the_guided_prediction_of_the_regularisation_prompts(concept_folder: Path,
                                                                                 tmp_path: Path) -> None:
    """With prior guidance 6, the regularisation captions' CFG-6 prediction (6 x cond - 5 x uncond, what sampling
    uses) stays near the base model's; the same run with kohya's noise target lets it drift further."""
    from webui.shapes import eval_scenes, render
    from webui.training.models import sd_noise_scheduler
    from webui.training.lora_step import caption_ids, encode_batch

    with pytest.raises(TrainingError, match="prior guidance"):
        settings_for(DEFAULT_MODEL, concept_folder, tmp_path, prior_guidance=0.5).check()
    reg = tmp_path / "reg"
    scenes = eval_scenes(4)
    write_captioned_folder(reg, scenes)
    common = dict(max_steps=24, learning_rate=3e-3, train_text_encoder=False, trigger="rectangle",
                  trigger_embedding=False, reg_data=reg)
    plain = train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path / "plain", **common), Quiet())
    held = train_lora(settings_for(DEFAULT_MODEL, concept_folder, tmp_path / "held", prior_guidance=6.0, **common),
                      Quiet())
    model = load_checkpoint(DEFAULT_MODEL)
    g = torch.Generator().manual_seed(2)
    timesteps = torch.tensor([200, 400, 600, 800])
    with torch.no_grad():  # the regularisation images themselves, noised, as training saw them
        pixels = torch.stack([torch.from_numpy(np.array(render(scene, 64))) for scene in scenes])
        clean = model.vae.encode(pixels.permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist.mean * model.vae_scale
        latents = sd_noise_scheduler().add_noise(clean, torch.randn(clean.shape, generator=g), timesteps)
        cond = encode_batch(model, caption_ids(model, [scene.caption for scene in scenes])).context
        uncond = encode_batch(model, caption_ids(model, [""] * 4)).context

        def guided() -> torch.Tensor:
            return 6 * model.unet(latents, timesteps, cond).sample - 5 * model.unet(latents, timesteps, uncond).sample

        base = guided()
        drift = {}
        for name, result in (("plain", plain), ("held", held)):
            with patched(lora_patches(read_lora(result.output), model, 1.0, 1.0)):
                drift[name] = (guided() - base).pow(2).mean().item()
    assert drift["plain"] > 0 and drift["held"] < 0.5 * drift["plain"], drift
