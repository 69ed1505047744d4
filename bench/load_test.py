"""Load test: 5 users x 10 jobs at once through `/sdapi/v1/txt2img` with logins, against the same 50 jobs run serially.

    .venv/bin/python bench/load_test.py [--users 5] [--jobs 10] [--steps 8]

Starts the real server (`launch.py`, the shipped default model, `--auth` with one login per user) and checks:
- nothing lost, nothing mixed up: every returned image's own infotext has its requester's prompt and seed, and
  each user's folder (`outputs/<user>/`) holds exactly that user's images;
- progress stays private: every job id a user's `/progress` showed during the run is one of that user's jobs;
- cancel stays private: the last user interrupts their own jobs half-way; everyone else's jobs all finish;
- throughput (images/s) at once against serially, and the worst time a job waited in the queue.
Writes bench/results/load_test.json. Not a test: it measures; the checks are printed and recorded.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server_process import AppServer  # noqa: E402
from webui.services.infotext import parse_infotext  # noqa: E402

DEFAULT_MODEL = ROOT / "models/Stable-diffusion/latent-studio-shapes.safetensors"
COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle", "star", "cross")


def job_body(user_index: int, job_index: int, steps: int) -> dict:
    prompt = f"a large {COLOURS[user_index % 5]} {SHAPES[job_index % 5]} at the center on a gray background"
    return {"prompt": prompt, "seed": 10_000 * (user_index + 1) + job_index, "steps": steps, "width": 64,
            "height": 64, "sampler_name": "Euler a", "cfg_scale": 6.0, "save_images": True}


def check_response(response: httpx.Response, body: dict) -> tuple[bool, dict]:
    """The image's own infotext names the prompt and seed that were asked for."""
    if response.status_code != 200:
        return False, {"status": response.status_code, "text": response.text[:200]}
    data = response.json()
    info = json.loads(data["info"])
    if info.get("interrupted") and not data["images"]:
        return True, info
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    stored = parse_infotext(image.info["parameters"])
    return stored["Prompt"] == body["prompt"] and stored["Seed"] == body["seed"], info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/load_test.json")
    args = parser.parse_args()
    users = [f"user{i}" for i in range(args.users)]
    passwords = {user: f"pw-{user}-load" for user in users}
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "models"
        (models / "Stable-diffusion").mkdir(parents=True)
        (models / "Stable-diffusion" / args.model.name).symlink_to(args.model)
        outputs = Path(scratch) / "outputs"
        auth = ",".join(f"{u}:{p}" for u, p in passwords.items())
        server = AppServer(models, outputs, "--auth", auth,
                           "--queue-size", str(args.users * args.jobs + 10)).wait_ready()
        try:
            base = server.url + "sdapi/v1/"

            def client(user: str) -> httpx.Client:
                return httpx.Client(base_url=base, auth=(user, passwords[user]), timeout=600)

            with client(users[0]) as warm:  # load the model once, outside both timings
                warm.post("txt2img", json={**job_body(0, 0, 2), "save_images": False}).raise_for_status()

            # serially: the same 50 jobs, one request at a time
            serial_bodies = [(u, job_body(i, j, args.steps)) for j in range(args.jobs) for i, u in enumerate(users)]
            started = time.perf_counter()
            for user, body in serial_bodies:
                with client(user) as http:
                    http.post("txt2img", json=body).raise_for_status()  # saved too, as in the concurrent run
            serial_seconds = time.perf_counter() - started

            # at once: every user fires all their jobs together; the last user interrupts their own half-way
            canceller = users[-1]
            seen_jobs: dict[str, set[str]] = {user: set() for user in users}
            done = threading.Event()
            outcomes: list[tuple[str, dict, bool, dict]] = []
            lock = threading.Lock()

            def run(user: str, body: dict) -> None:
                with client(user) as http:
                    response = http.post("txt2img", json=body)
                ok, info = check_response(response, body)
                with lock:
                    outcomes.append((user, body, ok, info))

            def watch(user: str) -> None:
                with client(user) as http:
                    while not done.is_set():
                        try:
                            job = http.get("progress", params={"skip_current_image": True}).json()["state"]["job"]
                        except httpx.HTTPError:  # the server is stopping
                            return
                        if job:
                            seen_jobs[user].add(job)
                        time.sleep(0.25)  # as often as a UI would ask; more would be load of its own

            def cancel_half_way() -> None:
                with client(canceller) as http:
                    while not done.is_set():
                        finished = sum(1 for u, *_ in outcomes if u == canceller)
                        if finished >= args.jobs // 2:
                            http.post("interrupt")
                            return
                        time.sleep(0.05)

            watchers = [threading.Thread(target=watch, args=(u,), daemon=True) for u in users]
            watchers.append(threading.Thread(target=cancel_half_way, daemon=True))
            for thread in watchers:
                thread.start()
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.users * args.jobs) as pool:
                futures = [pool.submit(run, u, job_body(i, j, args.steps))
                           for j in range(args.jobs) for i, u in enumerate(users)]
                for future in futures:
                    future.result()
            concurrent_seconds = time.perf_counter() - started
            done.set()
            for thread in watchers:
                thread.join(5)
        finally:
            server.stop()

        mixed_up = [(u, b["seed"], {k: info.get(k) for k in ("status", "text")}) for u, b, ok, info in outcomes
                    if not ok]
        by_user_jobs = {u: {info.get("job_id") for user, _, _, info in outcomes if user == u} for u in users}
        progress_leaks = {u: sorted(seen_jobs[u] - by_user_jobs[u]) for u in users if seen_jobs[u] - by_user_jobs[u]}
        interrupted = {u: sum(1 for user, _, _, info in outcomes if user == u and info.get("interrupted"))
                       for u in users}
        folders_ok = {}
        for user_index, user in enumerate(users):
            expected = {(b["prompt"], b["seed"]) for u, b, _, info in outcomes
                        if u == user and not info.get("interrupted")}
            found = set()
            for path in (outputs / user).rglob("*.png") if (outputs / user).exists() else []:
                with Image.open(path) as image:
                    stored = parse_infotext(image.info["parameters"])
                found.add((stored["Prompt"], stored["Seed"]))
            folders_ok[user] = expected <= found and all(
                seed // 10_000 == user_index + 1 for _, seed in found)
        waits = [info["queue_seconds"] for _, _, _, info in outcomes if "queue_seconds" in info]
        images = sum(len(info.get("all_seeds", [])) for *_, info in outcomes)
        report = {
            "users": args.users, "jobs_per_user": args.jobs, "steps": args.steps, "size": "64x64",
            "model": args.model.name, "sampler": "Euler a",
            "serial": {"jobs": len(serial_bodies), "seconds": round(serial_seconds, 2),
                       "images_per_second": round(len(serial_bodies) / serial_seconds, 3)},
            "concurrent": {"jobs": len(outcomes), "images": images, "seconds": round(concurrent_seconds, 2),
                           "images_per_second": round(images / concurrent_seconds, 3),
                           "worst_queue_wait_seconds": round(max(waits), 2) if waits else None,
                           "median_queue_wait_seconds": round(statistics.median(waits), 2) if waits else None},
            "throughput_ratio_concurrent_over_serial": round((images / concurrent_seconds)
                                                             / (len(serial_bodies) / serial_seconds), 3),
            "checks": {
                "responses_lost": args.users * args.jobs - len(outcomes),
                "images_mixed_up": mixed_up,
                "each_users_folder_holds_their_images_only": folders_ok,
                "progress_showed_another_users_job": progress_leaks,
                "interrupted_jobs_per_user": interrupted,
                "interrupt_stayed_with_its_user": all(n == 0 for u, n in interrupted.items() if u != canceller),
            },
        }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
