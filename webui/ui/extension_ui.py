"""What extensions build in the UI stays theirs: Gradio endpoints named `<extension>_<name>`, element ids unique
app-wide, and a clash fails that extension, never the app.

Gradio gives every event an endpoint (`api_name`; the function's name when none is given) and silently renames a
clash to `name_1`, so two extensions using one name would get each other's endpoint depending on load order, and an
extension could push a core endpoint such as `/txt2img` aside. So while the UI is built, an extension's endpoints
carry a marker name, `ext:<extension>:<name>`, that no core name can meet, and `finalize_extension_ui` gives them
their public names once every core endpoint exists.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from gradio.block_function import BlockFunction
from gradio.blocks import Block, BlocksConfig
from gradio.context import get_blocks_context

from webui.services.extensions import ExtensionError, ExtensionRecord

log = logging.getLogger("webui.ui")
MARK = "ext:"
OWNER = "_latent_studio_extension"  # attribute naming the extension that built a component
_GRADIO_SUFFIX = re.compile(r"^(.+)_(\d+)$")


def _config() -> BlocksConfig:
    config = get_blocks_context()
    if config is None:
        raise RuntimeError("extension UI is built only inside the app's gr.Blocks")
    return config


def descendants(container: Block) -> Iterator[Block]:
    """Every block inside `container`, depth first."""
    for child in getattr(container, "children", None) or []:
        yield child
        yield from descendants(child)


def _requested(name: str, existing: set[str]) -> str:
    """The name an event asked for, given the names that existed when Gradio created it: Gradio turns a taken
    `name` into the first free `name_<n>` (an `api_name="count_2"` written as such stays)."""
    match = _GRADIO_SUFFIX.match(name)
    if match and match.group(1) in existing and _unique(match.group(1), existing) == name:
        return match.group(1)
    return name


def in_tab(elem_id: str, tab: str, mode: str | None) -> str:
    """`img2img_x` built for the Inpaint tab -> `inpaint_x`; an id without the tab's name gets it in front."""
    if elem_id.startswith(f"{tab}_"):
        return elem_id
    if mode and mode != tab and elem_id.startswith(f"{mode}_"):
        return f"{tab}{elem_id[len(mode):]}"
    return f"{tab}_{elem_id}"


@contextmanager
def extension_ui(record: ExtensionRecord, container: Block, tab: str | None = None,
                 mode: str | None = None) -> Iterator[None]:
    """Mark what an extension's UI code builds inside `container` (already entered by the caller) as its own.

    In a generation tab (`tab`: txt2img, img2img or inpaint) element ids are made to start with the tab's name: a
    section is built once per tab, so `f"{mode}_x"` (mode is "img2img" in the Inpaint tab too) would repeat. If the
    build raises, its endpoints are hidden from API clients and the exception goes on to the caller.
    """
    config = _config()
    before = set(config.fns)
    existing = {str(fn.api_name) for fn in config.fns.values()}
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        for key, fn in config.fns.items():  # in creation order
            if key in before:
                continue
            created = str(fn.api_name)
            fn.api_name = f"{MARK}{record.name}:{_requested(created, existing)}"
            existing.add(created)
            if failed:
                fn.api_visibility = "private"
        for block in descendants(container):
            setattr(block, OWNER, record.name)
            if tab and block.elem_id:
                block.elem_id = in_tab(block.elem_id, tab, mode)


def _unique(name: str, taken: set[str]) -> str:
    """Gradio's own rule for a taken name: `name_1`, `name_2`, ..."""
    candidate, number = name, 0
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    return candidate


def _name_endpoints(config: BlocksConfig, records: dict[str, ExtensionRecord]) -> None:
    core = {fn.api_name for fn in config.fns.values() if not str(fn.api_name).startswith(MARK)}
    owners: dict[str, str] = {}  # final endpoint name -> extension
    marked: list[tuple[BlockFunction, ExtensionRecord]] = []
    for fn in config.fns.values():  # in creation order: the first extension to ask for a name keeps it
        if not str(fn.api_name).startswith(MARK):
            continue
        owner, requested = str(fn.api_name)[len(MARK):].split(":", 1)
        record = records[owner]
        prefix = record.endpoint_prefix
        wanted = requested if requested == prefix or requested.startswith(f"{prefix}_") else f"{prefix}_{requested}"
        holder = "the app" if wanted in core else owners.get(wanted)
        if fn.api_visibility != "private" and holder not in (None, owner) and record.status == "active":
            whose = "the app's" if holder == "the app" else f"the extension {holder!r}'s"
            record.fail("building its UI", ExtensionError(
                f"its Gradio endpoint /{wanted} is already {whose}; "
                "rename the endpoint (api_name=...) or the extension"))
        fn.api_name = _unique(wanted, core | set(owners))  # its own repeats (a section per tab) get _1, _2
        owners[fn.api_name] = owner
        marked.append((fn, record))
    for fn, record in marked:
        if record.status != "active":
            fn.api_visibility = "private"  # a failed extension's UI stays on the page but offers no API


def _check_elem_ids(config: BlocksConfig, records: dict[str, ExtensionRecord]) -> None:
    """An element id used twice fails the extension that made the second one (or the one whose id a later core
    component repeats); the extension's component loses its id, so ids stay unique."""
    first: dict[str, Block] = {}
    for key in sorted(config.blocks):
        block = config.blocks[key]
        elem_id = getattr(block, "elem_id", None)
        if not elem_id:
            continue
        if elem_id not in first:
            first[elem_id] = block
            continue
        earlier = first[elem_id]
        guilty = block if getattr(block, OWNER, None) else earlier
        owner = getattr(guilty, OWNER, None)
        if owner is None:
            log.warning("element id %r is used twice by the app", elem_id)
            continue
        other = getattr(earlier if guilty is block else block, OWNER, None)
        user = "another of its components" if other == owner else f"the extension {other!r}" if other else "the app"
        records[owner].fail("building its UI", ExtensionError(
            f"element id {elem_id!r} is already used by {user}; start your elem_ids with your extension's name"))
        guilty.elem_id = None
        if guilty is earlier:
            first[elem_id] = block


def finalize_extension_ui(records: Iterable[ExtensionRecord]) -> None:
    """Give extension endpoints their public names and check element ids; call last inside the app's gr.Blocks."""
    config = _config()
    by_name = {record.name: record for record in records}
    _check_elem_ids(config, by_name)
    _name_endpoints(config, by_name)  # last: it hides the endpoints of every extension that failed
