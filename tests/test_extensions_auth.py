"""Extension routes behind `--auth` on the real server: refused without a login, answered with one (HTTP Basic or the
UI's login cookie). The open case (no --auth) is covered in test_extensions_server.py."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.extension_folders import HELLO_TAB, write_extension
from tests.server_process import AppServer

ECHO = """
    from fastapi import Request

    def register(api):
        async def echo(request: Request):
            return {"got": (await request.body()).decode()}

        api.add_route("echo", echo, methods=["POST"])
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ext-auth")
    extensions = root / "extensions"
    write_extension(extensions, "hello", HELLO_TAB)
    write_extension(extensions, "echo", ECHO)
    (root / "models").mkdir()
    # The refusal tests below fail many logins from one address on purpose; the rate limit has its own tests
    # (test_users_auth.py), so it is raised here.
    app = AppServer(root / "models", root / "outputs", "--auth", "alice:secret,bob:hunter2", "--extensions-dir",
                    str(extensions), "--data-dir", str(root / "data"), "--no-preload", "--login-limit", "1000"
                    ).wait_ready()
    # Extension routes are mounted just after Gradio starts answering; wait for them so no test sees a 404 race.
    deadline = time.monotonic() + 30
    while httpx.get(app.url + "ext/hello/ping", auth=("alice", "secret")).status_code == 404:
        if time.monotonic() > deadline:
            app.stop()
            raise RuntimeError("extension routes were never mounted")
        time.sleep(0.2)
    yield app
    app.stop()


@pytest.mark.parametrize("auth", [None, ("alice", "wrong"), ("mallory", "secret"), ("alice", ""), ("", "")],
                         ids=["none", "wrong-password", "unknown-user", "empty-password", "empty"])
def test_routes_refuse_without_a_valid_login(server: AppServer, auth: tuple[str, str] | None) -> None:
    for method, path in (("GET", "ext/hello/ping"), ("POST", "ext/echo/echo")):
        response = httpx.request(method, server.url + path, auth=auth, content=b"payload")
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Basic"
        assert "pong" not in response.text and "payload" not in response.text


def test_malformed_basic_header_is_refused(server: AppServer) -> None:
    for header in ("Basic !!!not-base64!!!", "Basic " + "YWxpY2U=", "Bearer secret"):  # "alice" with no password
        response = httpx.get(server.url + "ext/hello/ping", headers={"Authorization": header})
        assert response.status_code == 401, header


def test_routes_answer_with_http_basic(server: AppServer) -> None:
    assert httpx.get(server.url + "ext/hello/ping", auth=("alice", "secret")).json() == {"pong": "hello"}
    assert httpx.get(server.url + "ext/hello/ping", auth=("bob", "hunter2")).json() == {"pong": "hello"}
    answer = httpx.post(server.url + "ext/echo/echo", auth=("alice", "secret"), content=b"payload")
    assert answer.status_code == 200 and answer.json() == {"got": "payload"}


def test_routes_answer_with_the_ui_login_cookie(server: AppServer) -> None:
    with httpx.Client(base_url=server.url) as browser_like:
        assert browser_like.get("ext/hello/ping").status_code == 401
        assert browser_like.get("config").status_code == 401  # the UI itself is behind the same login
        assert browser_like.post("login", data={"username": "alice", "password": "wrong"}).status_code == 400
        assert browser_like.get("ext/hello/ping").status_code == 401
        login = browser_like.post("login", data={"username": "alice", "password": "secret"})
        assert login.status_code == 200 and login.json() == {"success": True}
        assert browser_like.get("ext/hello/ping").json() == {"pong": "hello"}
        assert browser_like.get("config").status_code == 200
    names = [name for name in login.cookies if name.startswith("access-token-")]
    assert names  # the forged request below uses the real cookie names
    forged = httpx.get(server.url + "ext/hello/ping", cookies={name: "forged-token" for name in names})
    assert forged.status_code == 401
