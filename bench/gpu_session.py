"""Shared by the GPU session scripts: a clock, a log line, and `python -m webui` jobs started and awaited by deadline.

A device session is one fixed block of time, so every job is planned against the session's own clock."""

from __future__ import annotations

import os
import subprocess
import sys
import time


class Session:
    def __init__(self, work: str) -> None:
        self.started = time.time()
        self.work = work
        os.makedirs(work, exist_ok=True)
        # Wheels installed for the device's Python go to /tmp/site; the checkout itself must be importable too.
        path = [p for p in ["/tmp/site", os.getcwd(), os.environ.get("PYTHONPATH", "")] if p]
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(path))

    def elapsed(self) -> float:
        return time.time() - self.started

    def say(self, *parts: object) -> None:
        print(f"[{self.elapsed():6.1f}s]", *parts, flush=True)

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """`python -m webui ARGS` in the background, its output in WORK/NAME.log."""
        self.say("start", name, " ".join(args))
        log = open(f"{self.work}/{name}.log", "w")
        return subprocess.Popen([sys.executable, "-m", "webui", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env)

    def wait(self, procs: dict[str, subprocess.Popen], deadline: float) -> None:
        """Wait for every job until `deadline` (session seconds); a job still running then is killed."""
        for name, proc in procs.items():
            try:
                proc.wait(timeout=max(1.0, deadline - self.elapsed()))
            except subprocess.TimeoutExpired:
                proc.kill()
                self.say("killed", name)
            self.say("done", name, "rc", proc.returncode)

    def minutes_until(self, end: float, startup: float) -> str:
        """The --max-minutes that makes a run stop by `end`, given its start-up time (rendering, latent encoding)."""
        return f"{max(0.1, (end - self.elapsed() - startup) / 60):.2f}"
