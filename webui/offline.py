"""Offline switches: nothing reaches the network at run time (no Hub, no Gradio analytics or version check)."""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DIFFUSERS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "1",
}


def enforce() -> None:
    """Set the switches before the libraries that read them are used; called by every entry point."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
