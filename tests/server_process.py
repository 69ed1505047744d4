"""Start the real app (`launch.py`) in a subprocess on a free port, for HTTP, gradio_client and browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    def __init__(self, models_dir: Path, outputs_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = outputs_dir.parent / f"server-{self.port}.log"
        command = [sys.executable, str(ROOT / "launch.py"), "--port", str(self.port), "--models-dir", str(models_dir),
                   "--outputs-dir", str(outputs_dir), "--device", "cpu", *extra]
        if "--data-dir" not in extra:  # hash caches and settings of a test server stay out of the project
            command += ["--data-dir", str(outputs_dir.parent / f"data-{self.port}")]
        self._log_handle = self.log.open("w")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self._log_handle, stderr=subprocess.STDOUT,
                                        env={**os.environ})

    def wait_ready(self, timeout: float = 120.0) -> "AppServer":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()}")
            try:  # our routes are mounted last, once Gradio serves: wait for them
                urllib.request.urlopen(self.url + "sdapi/v1/samplers", timeout=2)
                return self
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    return self  # answering (e.g. 401 with auth) means it is up
                time.sleep(0.2)
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log_handle.close()
