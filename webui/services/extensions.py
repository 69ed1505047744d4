"""Extensions: discovery, loading with containment, the API object handed to each extension, and hook dispatch.

An extension is a folder with `extension.toml` (name, version, description, requires_app, entry, requirements) and an
entry module defining `register(api)`. Nothing runs at import time on our side and an extension must not rely on it
either: everything goes through the `ExtensionAPI` it receives. Any failure (import, registration, UI build, a hook,
an app-version mismatch) disables only that extension, and is shown in the Extensions tab and the log.

Extensions import only from `webui.services` (never `webui.engine`): the types their hooks receive or return are
re-exported here (`DenoiseExtension`, `DenoiseContext`, `CfgRescale`, `UNetCall`, `StepState`, `SamplerSpec`,
`LoadedModel`, `GenerationRequest`, `RequestError`, `ExtraNetworkActivation`, `ExtraNetworkTag`, and for selectable
scripts `Script`, `ScriptArgs`, `ScriptRunner`); see `__all__`.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Literal, Mapping

import torch
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version
from PIL import Image

from webui.engine.denoise import DenoiseContext, DenoiseExtension, UNetCall
from webui.engine.denoise_extensions import CfgRescale, StepHook, StepState
from webui.engine.loader import LoadedModel
from webui.engine.samplers import SamplerRegistry, SamplerSpec
from webui.engine.tokenizer import count_tokens
from webui.services.extra_networks import ExtraNetworkActivation, ExtraNetworkTag, group_by_kind, unhandled
from webui.services.model_manager import ModelManager
from webui.services.requests import GenerationRequest, RequestError
from webui.services.scripts import Script, ScriptArgs, ScriptRunner
from webui.services.settings import SettingKind, SettingSpec, SettingsStore

__all__ = [
    # what the app uses
    "ExtensionAPI", "ExtensionError", "ExtensionManager", "ExtensionRecord", "Manifest", "Registrations",
    "read_manifest", "endpoint_prefix",
    # what extensions use in their hooks (re-exported so that they never import the engine)
    "CfgRescale", "DenoiseContext", "DenoiseExtension", "ExtraNetworkActivation", "ExtraNetworkTag",
    "GenerationRequest", "LoadedModel", "RequestError", "SamplerSpec", "SettingKind", "StepState", "UNetCall",
    "Script", "ScriptArgs", "ScriptRunner",
]

log = logging.getLogger("webui.extensions")
MANIFEST = "extension.toml"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
RESERVED_NAMES = frozenset({"script"})  # the txt2img/img2img Script dropdown's values travel under this name
LOCAL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a setting's or an endpoint's name inside its extension
Mode = Literal["txt2img", "img2img"]


def endpoint_prefix(extension: str) -> str:
    """`my-ext` -> `my_ext`: what starts the names of an extension's Gradio endpoints and API parameters (Gradio
    turns every other character into `_` as well, which is why names differing only in `-`/`_` clash)."""
    return re.sub(r"\W", "_", extension)


class ExtensionError(Exception):
    """An extension broke a rule; the message is shown to the user."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    description: str = ""
    requires_app: str = ""
    entry: str = "main.py"
    requirements: tuple[str, ...] = ()


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    if not path.is_file():
        raise ExtensionError(f"{folder.name}: no {MANIFEST}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ExtensionError(f"{folder.name}: {MANIFEST} is not valid TOML ({exc})") from exc
    name = str(data.get("name", ""))
    if not NAME_PATTERN.match(name):
        raise ExtensionError(f"{folder.name}: name {name!r} must be lowercase letters, digits, '-' or '_'")
    if name in RESERVED_NAMES:
        raise ExtensionError(f"{folder.name}: name {name!r} is reserved by the app (its Script dropdown); rename it")
    entry = str(data.get("entry", "main.py"))
    if Path(entry).is_absolute() or ".." in Path(entry).parts:
        raise ExtensionError(f"{name}: entry {entry!r} must be a file inside the extension folder")
    return Manifest(
        name=name,
        version=str(data.get("version", "0")),
        description=str(data.get("description", "")),
        requires_app=str(data.get("requires_app", "")),
        entry=entry,
        requirements=tuple(str(r) for r in data.get("requirements", [])),
    )


@dataclass(frozen=True)
class TabSpec:
    title: str
    build: Callable[[Any], None]  # build(ui) runs inside a gr.Tab; `ui` is the UI bridge (send-to buttons)


@dataclass(frozen=True)
class SectionSpec:
    title: str
    build: Callable[[Mode], dict[str, Any]]  # returns {control name: Gradio component}
    modes: tuple[Mode, ...]


@dataclass(frozen=True)
class RouteSpec:
    path: str
    handler: Callable[..., Any]
    methods: tuple[str, ...]


# (tags of this kind, request) -> patches/infotext/warnings for the job (e.g. LoRAs from `<lora:name:w>`)
ExtraNetworkHandler = Callable[[list[ExtraNetworkTag], GenerationRequest], "ExtraNetworkActivation | None"]

# (request, model, controls) -> denoise extensions for this job (ControlNet units, custom guidance, ...)
DenoiseFactory = Callable[
    [GenerationRequest, LoadedModel, dict[str, Any]], "DenoiseExtension | list[DenoiseExtension] | None"
]


@dataclass
class Registrations:
    tabs: list[TabSpec] = field(default_factory=list)
    sections: list[SectionSpec] = field(default_factory=list)
    before_generate: list[Callable[[GenerationRequest, dict[str, Any]],
                                   GenerationRequest | None]] = field(default_factory=list)
    on_step: list[Callable[[StepState, dict[str, Any]], None]] = field(default_factory=list)
    denoise: list[DenoiseFactory] = field(default_factory=list)
    after_decode: list[Callable[[list[Image.Image], GenerationRequest, dict[str, Any]],
                                list[Image.Image] | None]] = field(default_factory=list)
    on_save: list[Callable[[dict[str, Any], GenerationRequest, dict[str, Any]], None]] = field(default_factory=list)
    routes: list[RouteSpec] = field(default_factory=list)
    samplers: list[SamplerSpec] = field(default_factory=list)
    extra_networks: dict[str, ExtraNetworkHandler] = field(default_factory=dict)
    scripts: list[Script] = field(default_factory=list)


@dataclass
class ExtensionRecord:
    """What the Extensions tab shows for one folder."""

    folder: Path
    builtin: bool
    manifest: Manifest | None = None
    enabled: bool = True
    status: Literal["active", "disabled", "failed"] = "disabled"
    error: str | None = None
    traceback: str | None = None
    registrations: Registrations = field(default_factory=Registrations)

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.folder.name

    @property
    def endpoint_prefix(self) -> str:
        return endpoint_prefix(self.name)

    def fail(self, where: str, exc: BaseException) -> None:
        self.status = "failed"
        self.error = f"{where}: {type(exc).__name__}: {exc}"
        self.traceback = "".join(traceback.format_exception(exc))
        log.error("extension %s disabled after an error %s\n%s", self.name, where, self.traceback)


class ExtensionAPI:
    """The one object an extension receives. Everything it adds is recorded, namespaced by its name."""

    def __init__(
        self,
        record: ExtensionRecord,
        settings: SettingsStore,
        app_version: str,
        models: ModelManager | None,
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self._record = record
        self._settings = settings
        self.models = models  # the app's model manager: list, inspect and switch checkpoints
        # The app's shared services by name (e.g. "controlnet", "uploads"); read-only for extensions.
        self.services: Mapping[str, Any] = MappingProxyType(dict(services or {}))
        self.name = record.name
        self.app_version = app_version
        self.folder = record.folder
        self.log = logging.getLogger(f"webui.extensions.{self.name}")

    @property
    def _reg(self) -> Registrations:
        return self._record.registrations

    def add_tab(self, title: str, build: Callable[[Any], None]) -> None:
        """A top-level tab; `build(ui)` runs inside it and creates its components. `ui.send_buttons(image, parsed)`
        adds "Send to txt2img/img2img/..." buttons for an image and its parsed infotext. The Gradio endpoints it
        creates are named `<extension>_<name>` (see `api_name`); its element ids must be unique in the app."""
        self._reg.tabs.append(TabSpec(title, build))

    def add_section(
        self, title: str, build: Callable[[Mode], dict[str, Any]], modes: Iterable[Mode] = ("txt2img", "img2img")
    ) -> None:
        """An always-visible group of controls in txt2img/img2img. `build(mode)` returns {name: component};
        at generation time the values arrive in hooks as `controls[name]`. It is built once per generation tab
        (txt2img, img2img, Inpaint; `mode` is "img2img" in the last two), and its element ids are made to start
        with the tab's name."""
        self._reg.sections.append(SectionSpec(title, build, tuple(modes)))

    def on_before_generate(self, hook: Callable[[GenerationRequest, dict[str, Any]], GenerationRequest | None]) -> None:
        """`hook(request, controls)` may return an edited request (or None to keep it)."""
        self._reg.before_generate.append(hook)

    def on_step(self, hook: Callable[[StepState, dict[str, Any]], None]) -> None:
        """`hook(state, controls)` runs every sampling step; it may replace `state.denoised` (the CFG result)."""
        self._reg.on_step.append(hook)

    def on_denoise(self, factory: DenoiseFactory) -> None:
        """`factory(request, model, controls)` runs once per job, before sampling, and returns `DenoiseExtension`s
        (webui.engine.denoise) that act inside the denoising loop: before each U-Net call (add ControlNet residuals,
        input channels), after CFG, after each step. Raise `RequestError` for a bad control value: the job does not
        start and the user sees the message; any other failure disables the extension, never the job."""
        self._reg.denoise.append(factory)

    def add_extra_network(self, kind: str, handler: ExtraNetworkHandler) -> None:
        """Handle `<kind:name:args>` prompt tags (A1111's extra networks). The app removes every tag from the prompt
        before encoding; `handler(tags, request)` gets this kind's tags of the job (positive and negative prompt) and
        returns an `ExtraNetworkActivation`: weight patches (applied only while the job runs), infotext fields and
        warnings. Raise `RequestError` for a bad tag (unknown name, bad number): the job does not start."""
        if not kind.isidentifier():
            raise ExtensionError(f"{self.name}: extra-network kind {kind!r} must be a word (letters, digits, _)")
        self._reg.extra_networks[kind] = handler

    def on_after_decode(
        self, hook: Callable[[list[Image.Image], GenerationRequest, dict[str, Any]], list[Image.Image] | None]
    ) -> None:
        """`hook(images, request, controls)` may return edited images."""
        self._reg.after_decode.append(hook)

    def on_save(self, hook: Callable[[dict[str, Any], GenerationRequest, dict[str, Any]], None]) -> None:
        """`hook(params, request, controls)` may add or change infotext parameters in place."""
        self._reg.on_save.append(hook)

    def add_setting(
        self,
        name: str,
        default: Any,
        label: str,
        kind: SettingKind = "text",
        choices: Iterable[Any] = (),
        minimum: float | None = None,
        maximum: float | None = None,
        step: float | None = None,
        *,
        restart_required: bool = False,
        integer: bool = False,
        help: str = "",
    ) -> str:
        """Register a persisted setting shown in the Settings tab under this extension's name; returns its key
        `<extension>.<name>`. `restart_required`: read only at start-up (Apply then says a restart is needed);
        `integer`: a number setting that refuses fractions; `help`: a line under the field (and, for text, what
        it accepts in validation messages). See docs/settings.md."""
        if not LOCAL_NAME.match(name):
            raise ExtensionError(f"{self.name}: setting name {name!r} must be letters, digits, '-' or '_'")
        spec = SettingSpec(f"{self.name}.{name}", default, label, kind, tuple(choices), minimum, maximum, step,
                           self.name, restart_required=restart_required, integer=integer, help=help)
        self._settings.register(spec)
        return spec.key

    def _key(self, name: str) -> str:
        """A bare name is one of this extension's settings; a dotted key (`<owner>.<name>`) is anyone's."""
        return name if "." in name else f"{self.name}.{name}"

    def setting(self, name: str) -> Any:
        """The current value: the last one saved (Settings tab, `set_setting`, `POST /sdapi/v1/options`), else the
        default given to `add_setting`. `name` is one of yours, or a full key such as `"controlnet.units"`."""
        key = self._key(name)
        try:
            return self._settings.get(key)
        except KeyError:
            raise KeyError(f"{self.name}: no setting {key!r}; register it first with "
                           f"api.add_setting({name!r}, default, label)") from None

    def set_setting(self, name: str, value: Any) -> Any:
        """Change one of this extension's own settings: checked like the Settings tab (a bad value raises ValueError
        naming the setting) and saved at once. Returns the stored value (e.g. `"0.5"` becomes 0.5 for a number)."""
        key = self._key(name)
        if not key.startswith(f"{self.name}."):
            raise ExtensionError(f"{self.name}: may change only its own settings, not {key!r}")
        if key not in self._settings.specs:
            raise KeyError(f"{self.name}: no setting {key!r}; register it first with api.add_setting")
        self._settings.update({key: value})
        return self._settings.get(key)

    def api_name(self, name: str) -> str:
        """The Gradio endpoint name for `name`: `<extension>_<name>` (`-` in the extension's name becomes `_`).

        Every endpoint your UI code creates is renamed this way when the UI is built, whether or not you pass
        `api_name=api.api_name(...)`; calling it tells you the name API clients see (`client.predict(...,
        api_name="/" + api.api_name("count"))`)."""
        if not LOCAL_NAME.match(name):
            raise ExtensionError(f"{self.name}: endpoint name {name!r} must be letters, digits, '-' or '_'")
        prefix = self._record.endpoint_prefix
        return name if name == prefix or name.startswith(f"{prefix}_") else f"{prefix}_{name}"

    @staticmethod
    def count_tokens(prompt: str, steps: int = 20, positive: bool = True) -> tuple[int, int]:
        """(tokens used, capacity): the prompt's CLIP tokens and the room in its 75-token chunks (A1111's `n/75`),
        counted as the text encoder sees them: emphasis brackets and weights removed, `AND` parts (positive prompts
        only) and prompt editing over `steps` steps taken apart, the longest text counted, BREAK padding included."""
        return count_tokens(prompt, steps, positive=positive)

    def add_route(self, path: str, handler: Callable[..., Any], methods: Iterable[str] = ("GET",)) -> None:
        """An HTTP route served at `/ext/<extension>/<path>`, for logged-in users only (as the UI).

        `handler` is a FastAPI endpoint, plain or `async`: FastAPI fills its parameters from the query string, a JSON
        body (a pydantic model or `dict`), `request: fastapi.Request`, `file: fastapi.UploadFile`, or the caller with
        `user: webui.services.users.User = fastapi.Depends(webui.api.auth.current_user)`; it returns anything JSON
        can encode, and raises `fastapi.HTTPException` for an error status."""
        clean = path.strip("/")
        if ".." in clean.split("/"):
            raise ExtensionError(f"{self.name}: route {path!r} must stay under /ext/{self.name}/")
        self._reg.routes.append(RouteSpec(clean, handler, tuple(m.upper() for m in methods)))

    def add_sampler(self, spec: SamplerSpec) -> None:
        self._reg.samplers.append(spec)

    def add_script(self, script: Script) -> None:
        """A selectable script (the "Script" dropdown of txt2img/img2img, `script_name` in the API): a `Script`
        instance with a title, an argument schema and `run(request, args, runner)`; see docs/extensions.md."""
        if not isinstance(script, Script) or not script.title:
            raise ExtensionError(f"{self.name}: add_script takes a Script instance with a title, "
                                 f"not {_describe(script)}")
        if any(other.name == script.name for other in self._reg.scripts):
            raise ExtensionError(f"{self.name}: a script titled {script.title!r} is already registered")
        self._reg.scripts.append(script)


def _private_copy(request: GenerationRequest) -> GenerationRequest:
    """A copy a hook may edit freely; shallow only if some control value cannot be deep-copied."""
    try:
        return copy.deepcopy(request)
    except Exception:  # an exotic control value: the request's own fields are still copied
        return copy.copy(request)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} ({', '.join(sorted({type(v).__name__ for v in value})) or 'empty'})"
    return f"a {type(value).__name__}"


# The step-state tensors the sampling loop reads after the hooks: only their values need a copy (work in the loop).
_READ_AFTER_HOOKS = ("denoised", "latents", "timestep")


def _snapshot(state: StepState) -> dict[str, tuple[Any, torch.Tensor | None]]:
    """Every field of the step state, and a copy of the values the loop reads on: hooks may assign or edit in place."""
    saved: dict[str, tuple[Any, torch.Tensor | None]] = {}
    for item in dataclasses.fields(state):
        value = getattr(state, item.name)
        copied = value.clone() if item.name in _READ_AFTER_HOOKS and isinstance(value, torch.Tensor) else None
        saved[item.name] = (value, copied)
    return saved


def _restore(state: StepState, saved: dict[str, tuple[Any, torch.Tensor | None]]) -> None:
    """Put back the original objects and their original values (the sampling loop keeps using `latents`)."""
    for name, (value, values) in saved.items():
        setattr(state, name, value)
        if values is not None and value.shape == values.shape:
            value.copy_(values)


class _ContainedDenoise(DenoiseExtension):
    """An extension's denoise extension, contained: if a callback raises, what it changed is put back, the extension
    is disabled (shown in the Extensions tab) and the loop goes on without it."""

    def __init__(self, record: ExtensionRecord, inner: DenoiseExtension) -> None:
        self.record, self.inner = record, inner

    def _run(self, where: str, call: Callable[[], None], restore: Callable[[], None]) -> None:
        if self.record.status != "active":
            return
        try:
            call()
        except Exception as exc:
            restore()
            self.record.fail(f"in a denoise extension ({where})", exc)

    def before_loop(self, ctx: DenoiseContext) -> None:
        self._run("before the loop", lambda: self.inner.before_loop(ctx), lambda: None)

    def before_step(self, ctx: DenoiseContext) -> None:
        self._run("before a step", lambda: self.inner.before_step(ctx), lambda: None)

    def before_unet(self, ctx: DenoiseContext, call: UNetCall) -> None:
        saved = (call.sample, call.timestep, call.conditioning, call.added_cond_kwargs, list(call.channel_inputs),
                 call.down_residuals, call.mid_residual)

        def restore() -> None:
            (call.sample, call.timestep, call.conditioning, call.added_cond_kwargs, call.channel_inputs,
             call.down_residuals, call.mid_residual) = saved

        self._run("before a U-Net call", lambda: self.inner.before_unet(ctx, call), restore)

    def after_cfg(self, ctx: DenoiseContext) -> None:
        denoised = ctx.denoised.clone()

        def restore() -> None:
            ctx.denoised = denoised

        self._run("after CFG", lambda: self.inner.after_cfg(ctx), restore)

    def after_step(self, ctx: DenoiseContext) -> None:
        latents = ctx.latents.clone()

        def restore() -> None:
            ctx.latents = latents

        self._run("after a step", lambda: self.inner.after_step(ctx), restore)

    def after_loop(self, ctx: DenoiseContext) -> None:
        latents = ctx.latents.clone()

        def restore() -> None:
            ctx.latents = latents

        self._run("after the loop", lambda: self.inner.after_loop(ctx), restore)

    def after_x0(self, ctx: DenoiseContext) -> None:
        estimate = ctx.pred_original.clone() if ctx.pred_original is not None else None

        def restore() -> None:
            ctx.pred_original = estimate

        self._run("after the x0 estimate", lambda: self.inner.after_x0(ctx), restore)


class ExtensionManager:
    """Finds extension folders, loads the enabled ones, and dispatches their hooks with containment."""

    def __init__(
        self,
        folders: list[tuple[Path, bool]],
        settings: SettingsStore,
        samplers: SamplerRegistry,
        state_file: Path,
        app_version: str,
        models: ModelManager | None = None,
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.folders = folders  # (folder of extensions, builtin?)
        self.models = models
        self.services = dict(services or {})
        self.settings = settings
        self.samplers = samplers
        self.state_file = state_file
        self.app_version = app_version
        self.records: list[ExtensionRecord] = []

    # ----- persistence of enable/disable -----
    def _disabled(self) -> set[str]:
        try:
            return set(json.loads(self.state_file.read_text(encoding="utf-8")).get("disabled", []))
        except (OSError, json.JSONDecodeError, AttributeError):
            return set()

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Persisted; takes effect at the next start."""
        disabled = self._disabled()
        (disabled.discard if enabled else disabled.add)(name)
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self.state_file.parent, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump({"disabled": sorted(disabled)}, stream)
        os.replace(temp, self.state_file)

    # ----- loading -----
    def discover(self) -> list[ExtensionRecord]:
        records = []
        for root, builtin in self.folders:
            if not root.is_dir():
                continue
            for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
                records.append(ExtensionRecord(folder=folder, builtin=builtin))
        return records

    def load_all(self) -> list[ExtensionRecord]:
        disabled = self._disabled()
        self.records = []
        seen: dict[str, tuple[str, Path]] = {}  # endpoint prefix -> (name, folder): `a-b` and `a_b` clash too
        for record in self.discover():
            self.records.append(record)
            try:
                record.manifest = read_manifest(record.folder)
            except ExtensionError as exc:
                record.fail("reading the manifest", exc)
                continue
            if record.endpoint_prefix in seen:
                other, folder = seen[record.endpoint_prefix]
                alike = "" if other == record.name else f" (as {other!r}: names differing only in '-'/'_' clash)"
                record.fail("loading", ExtensionError(
                    f"duplicate extension name {record.name!r}: the extension in {folder} already has it{alike}; "
                    f"rename one of them (the `name` in {MANIFEST}) or remove {record.folder}"
                ))
                continue
            seen[record.endpoint_prefix] = (record.name, record.folder)
            record.enabled = record.name not in disabled
            if not record.enabled:
                record.status = "disabled"
                continue
            self._load(record)
        return self.records

    def _check_version(self, record: ExtensionRecord) -> None:
        required = record.manifest.requires_app if record.manifest else ""
        if not required:
            return
        try:
            spec = SpecifierSet(required)
        except InvalidSpecifier as exc:
            raise ExtensionError(f"requires_app {required!r} is not a version specifier") from exc
        if Version(self.app_version) not in spec:
            raise ExtensionError(f"needs app version {required}, this is {self.app_version}")

    def _load(self, record: ExtensionRecord) -> None:
        assert record.manifest is not None
        try:
            self._check_version(record)
        except ExtensionError as exc:
            record.fail("checking the app version", exc)
            return
        module_name = f"latent_studio_extensions.{record.name.replace('-', '_')}"
        entry = record.folder / record.manifest.entry
        if not entry.resolve().is_relative_to(record.folder.resolve()):
            record.fail("importing", ExtensionError(
                f"entry {record.manifest.entry!r} leads outside the extension folder (a symlink?); refused"
            ))
            return
        try:
            spec = importlib.util.spec_from_file_location(module_name, entry, submodule_search_locations=None)
            if spec is None or spec.loader is None or not entry.is_file():
                raise ExtensionError(f"entry file {record.manifest.entry!r} not found")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except BaseException as exc:  # an extension may raise anything, even SystemExit
            sys.modules.pop(module_name, None)
            record.fail("importing", exc)
            return
        register = getattr(module, "register", None)
        if not callable(register):
            record.fail("importing", ExtensionError("the entry module has no register(api) function"))
            return
        api = ExtensionAPI(record, self.settings, self.app_version, self.models, self.services)
        added: list[str] = []
        try:
            register(api)
            taken = {script.name for other in self.active() for script in other.registrations.scripts}
            for script in record.registrations.scripts:
                if script.name in taken:
                    raise ExtensionError(f"a script titled {script.title!r} is already registered by another "
                                         "extension; give yours another title")
            for sampler in record.registrations.samplers:
                self.samplers.register(sampler)
                added.append(sampler.name)
        except BaseException as exc:
            for name in added:  # a sampler registered before the failure must not stay in the app's table
                self.samplers.unregister(name)
            record.registrations = Registrations()  # nothing half-registered stays active
            for key in [k for k, s in self.settings.specs.items() if s.owner == record.name]:
                del self.settings.specs[key]
            record.fail("registering", exc)
            return
        record.status = "active"

    def active(self) -> list[ExtensionRecord]:
        return [r for r in self.records if r.status == "active"]

    def scripts(self) -> list[Script]:
        """Every active extension's selectable scripts (the built-in ones register as extensions too)."""
        return [script for record in self.active() for script in record.registrations.scripts]

    # ----- hook dispatch -----
    def _guarded(self, record: ExtensionRecord, where: str, call: Callable[[], Any]) -> Any:
        """Run a hook; a failure disables its extension. A RequestError is the user's input being wrong (an upload
        over the limit, a bad control value): it stops the job with its message and the extension stays on."""
        try:
            return call()
        except RequestError:
            raise
        except Exception as exc:
            record.fail(where, exc)
            return None

    def before_generate(self, request: GenerationRequest) -> GenerationRequest:
        """Each hook edits a private copy, so one that changes the request in place and then raises leaves no trace."""
        for record in self.active():
            for hook in record.registrations.before_generate:
                if record.status != "active":
                    break
                working = _private_copy(request)
                controls = working.extensions.get(record.name, {})
                edited = self._guarded(record, "in a before-generate hook", lambda h=hook: h(working, controls))
                if record.status != "active":
                    continue
                if edited is None or isinstance(edited, GenerationRequest):
                    request = working if edited is None else edited
                else:
                    record.fail("in a before-generate hook", ExtensionError(
                        f"the hook must return None or a GenerationRequest, not {_describe(edited)}"
                    ))
        return request

    def extra_networks(self, tags: list[ExtraNetworkTag], request: GenerationRequest) -> ExtraNetworkActivation:
        """Hand each kind's tags to the extension that registered it; tags no one handles become warnings."""
        activation = ExtraNetworkActivation()
        handled: set[str] = set()
        for kind, kind_tags in group_by_kind(tags).items():
            for record in self.active():
                handler = record.registrations.extra_networks.get(kind)
                if handler is None:
                    continue
                handled.add(kind)
                made = self._guarded(record, f"handling <{kind}:...> tags", lambda h=handler: h(kind_tags, request))
                if made is None:
                    continue
                if isinstance(made, ExtraNetworkActivation):
                    activation.merge(made)
                else:
                    record.fail(f"handling <{kind}:...> tags", ExtensionError(
                        f"the handler must return None or an ExtraNetworkActivation, not {_describe(made)}"))
                break
        activation.merge(unhandled([tag for tag in tags if tag.kind not in handled]))
        return activation

    def step_hooks(self, request: GenerationRequest) -> list[StepHook]:
        hooks: list[StepHook] = []
        for record in self.active():
            controls = request.extensions.get(record.name, {})
            for hook in record.registrations.on_step:
                def call(state: StepState, record=record, hook=hook, controls=controls) -> None:
                    if record.status == "active":
                        saved = _snapshot(state)
                        self._guarded(record, "in a per-step hook", lambda: hook(state, controls))
                        if record.status != "active":
                            _restore(state, saved)  # a failing hook leaves no trace, even an in-place edit
                hooks.append(call)
        return hooks

    def denoise_extensions(self, request: GenerationRequest, model: LoadedModel) -> list[DenoiseExtension]:
        """Every active extension's denoise extensions for this job, each contained (see `_ContainedDenoise`)."""
        extensions: list[DenoiseExtension] = []
        for record in self.active():
            controls = request.extensions.get(record.name, {})
            for factory in record.registrations.denoise:
                if record.status != "active":
                    break
                try:
                    made = factory(request, model, controls)
                except RequestError:
                    raise  # the user's input is wrong: the job does not start, the extension stays on
                except Exception as exc:
                    record.fail("in a denoise factory", exc)
                    break
                made = [] if made is None else [made] if isinstance(made, DenoiseExtension) else made
                if not isinstance(made, list) or not all(isinstance(m, DenoiseExtension) for m in made):
                    record.fail("in a denoise factory", ExtensionError(
                        f"the factory must return None, a DenoiseExtension or a list of them, not {_describe(made)}"
                    ))
                    break
                extensions.extend(_ContainedDenoise(record, m) for m in made)
        return extensions

    def after_decode(self, images: list[Image.Image], request: GenerationRequest) -> list[Image.Image]:
        for record in self.active():
            controls = request.extensions.get(record.name, {})
            for hook in record.registrations.after_decode:
                if record.status != "active":
                    break
                working = [image.copy() for image in images]  # an in-place edit before a raise must not stick
                edited = self._guarded(record, "in an after-decode hook", lambda h=hook: h(working, request, controls))
                if record.status != "active":
                    continue
                result = working if edited is None else edited  # None: edited in place (or untouched)
                if isinstance(result, list) and len(result) == len(images) and all(
                    isinstance(image, Image.Image) for image in result
                ):
                    images = result
                else:
                    record.fail("in an after-decode hook", ExtensionError(
                        f"the hook must return None or a list of {len(images)} PIL images, not {_describe(result)}"
                    ))
        return images

    def on_save(self, params: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
        for record in self.active():
            controls = request.extensions.get(record.name, {})
            for hook in record.registrations.on_save:
                if record.status != "active":
                    break
                working = dict(params)
                self._guarded(record, "in an on-save hook", lambda h=hook: h(working, request, controls))
                if record.status == "active":
                    params = working
        return params

    # ----- installing (never runs code; the user enables the extension afterwards) -----
    def install_archive(self, archive: Path, target_root: Path) -> str:
        """Unpack a .zip into `target_root/<name>`, disabled until the user enables it."""
        with tempfile.TemporaryDirectory() as scratch:
            with zipfile.ZipFile(archive) as bundle:
                total = 0
                for member in bundle.infolist():
                    parts = Path(member.filename).parts
                    if member.filename.startswith("/") or ".." in parts:
                        raise ExtensionError(f"archive member {member.filename!r} points outside the extension")
                    total += member.file_size
                    if total > 200 * 1024 * 1024:
                        raise ExtensionError("archive unpacks to more than 200 MB")
                bundle.extractall(scratch)
            candidates = [p.parent for p in Path(scratch).rglob(MANIFEST)]
            if len(candidates) != 1:
                raise ExtensionError(f"archive must contain exactly one {MANIFEST}")
            return self._adopt(candidates[0], target_root)

    def install_git(self, url: str, target_root: Path) -> str:
        with tempfile.TemporaryDirectory() as scratch:
            clone = Path(scratch) / "clone"
            result = subprocess.run(
                ["git", "clone", "--depth", "1", "--", url, str(clone)], capture_output=True, text=True, timeout=300
            )
            if result.returncode != 0:
                raise ExtensionError("git clone failed: "
                                     f"{result.stderr.strip().splitlines()[-1] if result.stderr else ''}")
            shutil.rmtree(clone / ".git", ignore_errors=True)
            return self._adopt(clone, target_root)

    def _adopt(self, folder: Path, target_root: Path) -> str:
        manifest = read_manifest(folder)
        destination = target_root / manifest.name
        if destination.exists():
            raise ExtensionError(f"an extension folder {destination} already exists")
        self.set_enabled(manifest.name, False)  # no code runs until the user confirms by enabling it
        target_root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, destination)
        return manifest.name
