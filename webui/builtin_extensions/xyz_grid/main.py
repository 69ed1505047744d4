"""The X/Y/Z plot, registered through the public extension API like any outside script."""

from __future__ import annotations

from webui.services.extensions import ExtensionAPI
from webui.services.xyz_plot import XYZPlot


def register(api: ExtensionAPI) -> None:
    api.add_script(XYZPlot())
