"""A schema fuzzer (schemathesis) against the real server's own OpenAPI schema: no call may answer 5xx.

Every operation in `/openapi.json` gets generated requests, valid and invalid by the schema, sent as a logged-in
(non-admin and admin) user. The server runs with small API limits (64 px .. 128 px, up to 4 steps and 4 images), so
the valid generation requests the fuzzer finds finish quickly on a CPU; anything larger is answered 422.
`POST /api/server/stop` is left out: stopping the server is its documented success.
"""

from __future__ import annotations


import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import schemathesis
from tests.server_process import AppServer
from webui.engine.synthetic import write_synthetic_checkpoint

USERS = {"alice": "fuzz-pw-alice", "bob": "fuzz-pw-bob"}
EXAMPLES_PER_OPERATION = 12
SKIPPED = {("POST", "/api/server/stop")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fuzz")
    write_synthetic_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1", seed=7,
                               metadata={"modelspec.resolution": "64x64"})
    auth = ",".join(f"{user}:{password}" for user, password in USERS.items())
    app = AppServer(root / "models", root / "outputs", "--auth", auth, "--admin", "alice", "--no-preload",
                    "--login-limit", "100000", "--api-max-steps", "4", "--api-max-side", "128",
                    "--api-max-images", "4").wait_ready()
    yield app
    app.stop()


def test_fuzzed_api_calls_never_answer_5xx(server: AppServer) -> None:
    schema = schemathesis.openapi.from_url(server.url + "openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {(op.method.upper(), op.path) for op in operations}
    assert ("POST", "/sdapi/v1/txt2img") in labels and ("GET", "/sdapi/v1/progress") in labels
    failures: list[str] = []
    statuses: dict[tuple[str, str], set[int]] = {}
    session = requests.Session()
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(), user=st.sampled_from(sorted(USERS)))
        def call(case, user: str) -> None:
            session.auth = (user, USERS[user])
            response = case.call(base_url=server.url.rstrip("/"), session=session, timeout=120)
            statuses.setdefault((case.method.upper(), operation.path), set()).add(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} as {user} -> {response.status_code}: "
                                f"{response.text[:200]} (body {str(case.body)[:200]})")

        call()
    assert not failures, "\n".join(failures[:10])
    # the fuzzer reached both sides of generation: images made and requests refused
    assert {200, 422} <= statuses[("POST", "/sdapi/v1/txt2img")], statuses[("POST", "/sdapi/v1/txt2img")]
    assert len(statuses) == len(operations) - len(SKIPPED)
