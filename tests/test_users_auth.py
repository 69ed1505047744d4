"""Users and logins: hashed passwords, rate limits, admin role, API tokens, per-user outputs and the file-route guard.

The units run against `UserStore` with an injected clock (and a cheap scrypt cost); the rest against one real server
(`launch.py` with three logins) shared by the module, driven with httpx and gradio_client. Failed logins on the real
server come from made-up client addresses (X-Forwarded-For, which uvicorn trusts from loopback only) so they never
lock the addresses or users the other tests use.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from tests.extension_folders import write_extension
from tests.server_process import AppServer
from webui.api.auth import GradioLogin, current_user, install, require_admin
from webui.api.file_guard import OutputsFileGuard, file_route_target
from webui.launcher import LaunchError, build_parser, build_users, check_user_folders
from webui.services.outputs import OutputStore
from webui.services.users import LOCAL_USER, LoginLimits, LoginThrottled, User, UserStore, validate_user_name
from webui.ui.session import owner_of, user_of

FAST = 2**8  # scrypt cost for unit tests; the server uses the real default


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _store(clock: Clock | None = None, **kwargs: Any) -> UserStore:
    return UserStore([("alice", "s3cret-A"), ("bob", "hunter2-B")], ["alice"], clock=clock or Clock(), scrypt_n=FAST,
                     **kwargs)


# --- passwords -----------------------------------------------------------------------------------------------------

def _reachable(root: object) -> list[object]:
    """Every object reachable from `root` through attributes, containers and dataclass fields."""
    seen: set[int] = set()
    stack, found = [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        found.append(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
            stack.extend(vars(obj).values())
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, name) for name in obj.__slots__ if hasattr(obj, name))
        if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
            stack.extend(getattr(obj, name) for name in obj.__dataclass_fields__)
    return found


def test_passwords_are_kept_only_as_salted_scrypt_digests() -> None:
    users = _store()
    for obj in _reachable(users):
        if isinstance(obj, (str, bytes)):
            assert b"s3cret-A" not in (obj.encode() if isinstance(obj, str) else obj)
            assert b"hunter2-B" not in (obj.encode() if isinstance(obj, str) else obj)
    assert "s3cret" not in repr(vars(users))
    digests = [obj for obj in _reachable(users) if type(obj).__name__ == "_PasswordHash"]
    assert len({d.salt for d in digests}) == len(digests) >= 2  # a random salt per user
    assert users.authenticate("alice", "s3cret-A", "10.0.0.1") == User("alice", True)
    assert users.authenticate("bob", "hunter2-B", "10.0.0.1") == User("bob", False)
    assert users.authenticate("alice", "hunter2-B", "10.0.0.1") is None
    assert users.authenticate("mallory", "s3cret-A", "10.0.0.1") is None


def test_twin_stores_with_the_same_password_hold_different_digests() -> None:
    first, second = UserStore([("a", "pw")], scrypt_n=FAST), UserStore([("a", "pw")], scrypt_n=FAST)
    digest = lambda store: next(o.digest for o in _reachable(store) if type(o).__name__ == "_PasswordHash"  # noqa: E731
                                and o is not store._dummy)
    assert digest(first) != digest(second)


# --- rate limits ---------------------------------------------------------------------------------------------------

def test_five_failures_for_one_user_lock_that_user_from_every_address_until_the_cool_down() -> None:
    clock = Clock()
    users = _store(clock)
    for attempt in range(5):
        assert users.authenticate("alice", "wrong", f"10.0.0.{attempt}") is None
        clock.now += 1
    with pytest.raises(LoginThrottled, match=r"try again in \d+ s") as refused:
        users.authenticate("alice", "s3cret-A", "10.9.9.9")  # right password, new address: still refused
    assert 55 <= refused.value.retry_after <= 60
    assert users.authenticate("bob", "hunter2-B", "10.0.0.1") == User("bob", False)  # others are not locked
    clock.now += 61
    assert users.authenticate("alice", "s3cret-A", "10.9.9.9") == User("alice", True)


def test_five_failures_from_one_address_lock_that_address_for_every_user() -> None:
    clock = Clock()
    users = _store(clock)
    for name in ("alice", "bob", "carol", "dave", "erin"):
        assert users.authenticate(name, "guess", "203.0.113.7") is None
    with pytest.raises(LoginThrottled):
        users.authenticate("bob", "hunter2-B", "203.0.113.7")
    assert users.authenticate("bob", "hunter2-B", "198.51.100.1") == User("bob", False)
    clock.now += 60
    assert users.authenticate("bob", "hunter2-B", "203.0.113.7") == User("bob", False)


def test_failures_older_than_the_window_do_not_count_and_a_success_resets_the_user() -> None:
    clock = Clock()
    users = _store(clock, limits=LoginLimits(attempts=3, window_s=10, cooldown_s=30))
    for _ in range(2):
        users.authenticate("alice", "wrong", None)
    clock.now += 11  # both fell out of the window
    for _ in range(2):
        users.authenticate("alice", "wrong", None)
    assert users.authenticate("alice", "s3cret-A", None) is not None  # the success clears alice's count
    for _ in range(2):
        users.authenticate("alice", "wrong", None)
    assert users.authenticate("alice", "s3cret-A", None) is not None
    for _ in range(3):
        users.authenticate("alice", "wrong", None)
    with pytest.raises(LoginThrottled) as refused:
        users.authenticate("alice", "s3cret-A", None)
    assert refused.value.retry_after == 30


def test_parallel_guesses_are_judged_one_at_a_time_and_parallel_correct_logins_all_pass() -> None:
    from concurrent.futures import ThreadPoolExecutor

    users = UserStore([("alice", "s3cret-A")], limits=LoginLimits(attempts=3), scrypt_n=2**10)
    with ThreadPoolExecutor(max_workers=8) as pool:
        fine = list(pool.map(lambda _: users.authenticate("alice", "s3cret-A", "10.0.0.1"), range(8)))
    assert all(user is not None and user.name == "alice" for user in fine)  # no correct login counts as a failure

    def guess(index: int) -> str:
        try:
            return "ok" if users.authenticate("alice", f"guess-{index}", "10.0.0.2") else "wrong"
        except LoginThrottled:
            return "refused"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(guess, range(8)))
    assert outcomes.count("wrong") == 3 and outcomes.count("refused") == 5  # the limit holds under a burst


def test_login_limits_must_make_sense() -> None:
    with pytest.raises(ValueError, match="at least 1 attempt"):
        LoginLimits(attempts=0)


# --- accounts ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../alice", "a/b", "a\\b", "..", ".hidden", "a..b", "al ice", "ünï", "", "x" * 65,
                                  "a:b", "a\x00b"])
def test_user_names_that_are_not_plain_folder_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        validate_user_name(name)


def test_accounts_are_checked_when_the_store_is_built() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        UserStore([("alice", "a"), ("Alice", "b")], scrypt_n=FAST)
    with pytest.raises(ValueError, match="empty password"):
        UserStore([("alice", "")], scrypt_n=FAST)
    with pytest.raises(ValueError, match="'carol' is not a configured user"):
        UserStore([("alice", "a"), ("bob", "b")], ["carol"], scrypt_n=FAST)
    single = UserStore([("alice", "a")], scrypt_n=FAST)
    assert single.get("alice") == User("alice", True) and not single.is_multi_user  # the only login is the operator
    several = UserStore([("alice", "a"), ("bob", "b")], scrypt_n=FAST)
    assert several.is_multi_user and several.admins == ()
    local = UserStore()
    assert not local.auth_enabled and local.local_user() == User(LOCAL_USER, True)
    assert local.authenticate(LOCAL_USER, "anything", None) is None  # no password opens a store without logins


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("entries, message", [
    ("alice", "user:password"), ("alice:", "user:password"), (":secret", "user:password"),
    ("../x:pw", "not allowed"), ("a/b:pw", "not allowed"), ("al ice:pw", "not allowed"),
    ("alice:a,ALICE:b", "listed twice"),
])
def test_malformed_auth_entries_stop_the_launch_with_a_clear_message(entries: str, message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        build_users(_args("--auth", entries))


def test_auth_file_entries_admins_and_limits(tmp_path: Path) -> None:
    users_file = tmp_path / "users.txt"
    users_file.write_text("alice:pa:ss\n\nbob:pw\n", encoding="utf-8")
    args = _args("--auth", "carol:c", "--auth-file", str(users_file), "--admin", "alice", "--login-limit", "7")
    users = build_users(args)
    assert args.auth is None  # the plain text does not outlive start-up in the parsed arguments
    assert set(users.names) == {"alice", "bob", "carol"} and users.admins == ("alice",)
    assert users.limits.attempts == 7
    with pytest.raises(LaunchError, match="'mallory' is not a configured user"):
        build_users(_args("--auth-file", str(users_file), "--admin", "mallory"))
    with pytest.raises(LaunchError, match="--admin names a login"):
        build_users(_args("--admin", "alice"))
    with pytest.raises(LaunchError, match="at least 1 attempt"):
        build_users(_args("--auth", "a:b", "--login-limit", "0"))
    users_file.write_text("alice:pw\nbroken line\n", encoding="utf-8")
    with pytest.raises(LaunchError, match="user:password"):
        build_users(_args("--auth-file", str(users_file)))
    with pytest.raises(LaunchError, match="does not exist"):
        build_users(_args("--auth-file", str(tmp_path / "missing.txt")))


def test_a_user_name_may_not_take_a_folder_the_app_keeps_in_outputs() -> None:
    users = UserStore([("lora-training", "a"), ("bob", "b")], scrypt_n=FAST)
    with pytest.raises(LaunchError, match="'lora-training' is the name of a folder"):
        check_user_folders(users, ["lora-training"])
    check_user_folders(UserStore([("lora-training", "a")], scrypt_n=FAST), ["lora-training"])  # one user: no folders


# --- tokens --------------------------------------------------------------------------------------------------------

def test_tokens_name_their_user_expire_and_can_be_revoked() -> None:
    clock = Clock()
    users = _store(clock, token_ttl_s=100)
    alice = users.get("alice")
    assert alice is not None
    token = users.issue_token(alice)
    assert users.user_for_token(token) == alice
    assert users.user_for_token(token + "x") is None and users.user_for_token("") is None
    assert token not in repr(vars(users))  # only its hash is kept
    clock.now += 101
    assert users.user_for_token(token) is None
    again = users.issue_token(alice)
    assert users.revoke_token(again) and users.user_for_token(again) is None
    with pytest.raises(ValueError, match="not a user"):
        users.issue_token(User("mallory", True))


# --- sessions and outputs ------------------------------------------------------------------------------------------

class _FakeRequest:
    def __init__(self, username: str | None, session_hash: str = "sess-1") -> None:
        self.username, self.session_hash = username, session_hash


def test_owner_of_is_the_logged_in_user() -> None:
    users = _store()
    assert owner_of(_FakeRequest("bob")) == "bob"
    assert owner_of(_FakeRequest(None)) == "sess-1"  # no login: the browser session
    assert user_of(users, _FakeRequest("bob")) == User("bob", False)  # type: ignore[arg-type]
    assert user_of(users, _FakeRequest(None)) is None  # type: ignore[arg-type]
    assert user_of(UserStore(), _FakeRequest(None)) == User(LOCAL_USER, True)  # type: ignore[arg-type]


def test_per_user_output_folders(tmp_path: Path) -> None:
    day = datetime.date(2026, 1, 2)
    store = OutputStore(tmp_path, today=lambda: day, per_user=True)
    saved = store.save_png(Image.new("RGB", (8, 8)), "x", "txt2img", 5, owner="alice")
    assert saved.parent == tmp_path / "alice" / "txt2img" / "2026-01-02"
    for owner in (None, "", "..", "../bob", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="job owner"):
            store.folder_for("txt2img", owner)
    shared = OutputStore(tmp_path, today=lambda: day)  # one user or none: A1111's layout as before
    assert shared.folder_for("txt2img", "alice") == tmp_path / "txt2img" / "2026-01-02"


# --- FastAPI dependencies ------------------------------------------------------------------------------------------

def _api(users: UserStore) -> TestClient:
    app = FastAPI()
    install(app, users)
    app.cookie_id = "cid"  # what Gradio's App carries: its login cookies' suffix and their tokens
    app.tokens = {"cookie-bob": "bob"}

    @app.get("/me")
    def me(user: User = Depends(current_user)) -> dict[str, Any]:
        return {"name": user.name, "admin": user.is_admin}

    @app.post("/admin", dependencies=[Depends(require_admin)])
    def admin() -> dict[str, bool]:
        return {"ok": True}

    return TestClient(app)


def test_current_user_accepts_basic_bearer_and_the_login_cookie_and_401s_otherwise() -> None:
    users = _store()
    client = _api(users)
    assert client.get("/me", auth=("alice", "s3cret-A")).json() == {"name": "alice", "admin": True}
    token = users.issue_token(User("bob", False))
    assert client.get("/me", headers={"Authorization": f"Bearer {token}"}).json()["name"] == "bob"
    assert client.get("/me", cookies={"access-token-unsecure-cid": "cookie-bob"}).json()["name"] == "bob"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic !!"},
                    {"Authorization": "Basic " + base64.b64encode(b"alice").decode()}):
        refused = client.get("/me", headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Basic"
    assert client.get("/me", cookies={"access-token-cid": "forged"}).status_code == 401


def test_require_admin_answers_403_to_other_users_and_a_cross_site_cookie_post() -> None:
    users = _store()
    client = _api(users)
    assert client.post("/admin", auth=("alice", "s3cret-A")).json() == {"ok": True}
    refused = client.post("/admin", auth=("bob", "hunter2-B"))
    assert refused.status_code == 403 and "not an admin" in refused.json()["detail"]
    assert client.post("/admin").status_code == 401
    app_users = UserStore([("bob", "b")], scrypt_n=FAST)  # the only login: an admin
    cookie_client = _api(app_users)
    cookies = {"access-token-unsecure-cid": "cookie-bob"}
    assert cookie_client.post("/admin", cookies=cookies).status_code == 200
    for origin in ("https://evil.example", "null"):
        assert cookie_client.post("/admin", cookies=cookies, headers={"Origin": origin}).status_code == 403
    assert cookie_client.post("/admin", cookies=cookies, headers={"Origin": "http://testserver"}).status_code == 200


def test_basic_logins_on_the_api_are_rate_limited_with_429_and_retry_after() -> None:
    client = _api(_store())
    for _ in range(5):
        assert client.get("/me", auth=("alice", "nope")).status_code == 401
    refused = client.get("/me", auth=("alice", "s3cret-A"))
    assert refused.status_code == 429 and "try again in" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) > 0


def test_without_logins_every_request_is_the_local_admin() -> None:
    client = _api(UserStore())
    assert client.get("/me").json() == {"name": LOCAL_USER, "admin": True}
    assert client.post("/admin").status_code == 200


def test_gradio_login_callable_counts_against_the_address_the_middleware_saw() -> None:
    import asyncio

    from fastapi import HTTPException

    users = _store()
    login = GradioLogin(users)

    async def attempt(password: str, address: str) -> bool:
        login._address.set(address)  # what the ASGI middleware does for each request
        return await login.check("alice", password)

    assert asyncio.run(attempt("s3cret-A", "10.0.0.1")) is True
    for _ in range(5):
        assert asyncio.run(attempt("wrong", "10.0.0.2")) is False
    with pytest.raises(HTTPException) as refused:
        asyncio.run(attempt("s3cret-A", "10.0.0.3"))
    assert refused.value.status_code == 429


# --- the file-route guard ------------------------------------------------------------------------------------------

def test_guard_judges_a_file_by_the_folder_it_really_lies_in(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    (outputs / "alice").mkdir(parents=True)
    (outputs / "bob").mkdir()
    own = outputs / "alice" / "a.png"
    own.write_bytes(b"png")
    (outputs / "loose.png").write_bytes(b"png")
    (outputs / "bob" / "to-alice.png").symlink_to(own)
    (outputs / "bob" / "to-outside.png").symlink_to(tmp_path / "elsewhere.png")
    (tmp_path / "elsewhere.png").write_bytes(b"png")
    guard = OutputsFileGuard(lambda *a: None, _store(), outputs)  # type: ignore[arg-type]
    assert guard.owner_folder(str(own)) == "alice"
    assert guard.owner_folder(str(outputs / "bob" / ".." / "alice" / "a.png")) == "alice"
    assert guard.owner_folder(str(outputs / "bob" / "to-alice.png")) == "alice"
    assert guard.owner_folder(str(outputs / "bob" / "to-outside.png")) == ""
    assert guard.owner_folder(str(outputs / "loose.png")) == ""
    assert guard.owner_folder(str(outputs)) is None
    assert guard.owner_folder(str(tmp_path / "elsewhere.png")) is None
    assert guard.owner_folder(os.path.relpath(own)) == "alice"  # relative to the working directory, as Gradio reads it
    assert file_route_target({"path": "/gradio_api/file=/x/y.png"}) == "/x/y.png"
    assert file_route_target({"path": "/gradio_api/file//x/y.png"}) == "/x/y.png"
    assert file_route_target({"path": "/gradio_api/info"}) is None


# --- the real server -----------------------------------------------------------------------------------------------

WHOAMI = """
    from fastapi import Depends
    from webui.api.auth import current_user

    def register(api):
        def whoami(user=Depends(current_user)):
            return {"name": user.name, "admin": user.is_admin}

        api.add_route("whoami", whoami)
"""

ACCOUNTS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from webui.engine.synthetic import write_synthetic_checkpoint

    root = tmp_path_factory.mktemp("users")
    write_synthetic_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1", seed=7,
                               metadata={"modelspec.resolution": "64x64"})
    write_extension(root / "extensions", "who", WHOAMI)
    accounts = root / "users.txt"
    accounts.write_text("".join(f"{name}:{password}\n" for name, password in ACCOUNTS.items()), encoding="utf-8")
    app = AppServer(root / "models", root / "outputs", "--auth-file", str(accounts), "--admin", "alice",
                    "--extensions-dir", str(root / "extensions"), "--data-dir", str(root / "data"),
                    "--no-preload").wait_ready()
    deadline = time.monotonic() + 30  # our routes are mounted just after Gradio answers
    while httpx.post(app.url + "api/token").status_code == 404:
        if time.monotonic() > deadline:
            app.stop()
            raise RuntimeError("routes were never mounted")
        time.sleep(0.2)
    app.root = root
    yield app
    app.stop()


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


@contextlib.contextmanager
def _browser(server: AppServer, name: str) -> Iterator[httpx.Client]:
    """An httpx client logged in through Gradio's login form, as the browser does (cookie)."""
    with httpx.Client(base_url=server.url) as client:
        answer = client.post("login", data={"username": name, "password": ACCOUNTS[name]})
        assert answer.status_code == 200, answer.text
        yield client


def test_ext_route_with_basic_token_and_without(server: AppServer) -> None:
    url = server.url + "ext/who/whoami"
    assert httpx.get(url, auth=("bob", "bob-pw")).json() == {"name": "bob", "admin": False}
    assert httpx.get(url).status_code == 401
    token = httpx.post(server.url + "api/token", auth=("alice", "alice-pw")).json()
    assert token["user"] == "alice" and token["admin"] is True
    assert httpx.get(url, headers={"Authorization": f"Bearer {token['token']}"}).json()["name"] == "alice"
    assert httpx.get(url, headers={"Authorization": "Bearer made-up"}).status_code == 401
    assert httpx.post(server.url + "api/token").status_code == 401
    assert httpx.post(server.url + "api/token", auth=("alice", "wrong"), headers=_from("10.7.0.1")).status_code == 401
    with _browser(server, "carol") as browser:
        assert browser.get("ext/who/whoami").json()["name"] == "carol"


def test_login_page_and_api_share_the_per_user_limit(server: AppServer) -> None:
    for index in range(3):  # failures through the Gradio login form ...
        answer = httpx.post(server.url + "login", data={"username": "carol", "password": "no"},
                            headers=_from(f"10.1.0.{index}"))
        assert answer.status_code == 400
    for index in range(2):  # ... and through the API count together
        answer = httpx.get(server.url + "ext/who/whoami", auth=("carol", "no"), headers=_from(f"10.2.0.{index}"))
        assert answer.status_code == 401
    page = httpx.post(server.url + "login", data={"username": "carol", "password": ACCOUNTS["carol"]},
                      headers=_from("10.3.0.1"))
    assert page.status_code == 429 and "try again in" in page.json()["detail"]
    api = httpx.get(server.url + "ext/who/whoami", auth=("carol", ACCOUNTS["carol"]), headers=_from("10.3.0.2"))
    assert api.status_code == 429 and int(api.headers["retry-after"]) > 0


def test_one_address_is_limited_across_user_names(server: AppServer) -> None:
    address = _from("10.4.0.1")
    for name in ("nobody1", "nobody2", "nobody3", "nobody4", "nobody5"):
        assert httpx.post(server.url + "login", data={"username": name, "password": "x"},
                          headers=address).status_code == 400
    refused = httpx.post(server.url + "login", data={"username": "bob", "password": "bob-pw"}, headers=address)
    assert refused.status_code == 429
    elsewhere = httpx.post(server.url + "login", data={"username": "bob", "password": "bob-pw"},
                           headers=_from("10.4.0.2"))
    assert elsewhere.status_code == 200


def _generate(server: AppServer, name: str, title: str, seed: int) -> None:
    client = Client(server.url, auth=(name, ACCOUNTS[name]), verbose=False)
    gallery, *_ = client.predict(title, "a red circle", "", "Euler", "Automatic", 2, 6, 64, 64, seed, 1, 1,
                                 api_name="/txt2img")
    assert len(gallery) == 1


def test_each_users_images_go_to_their_own_folder(server: AppServer) -> None:
    with _browser(server, "bob") as bob:  # the checkpoint dropdown's choices as the page was built
        dropdown = next(c for c in bob.get("config").json()["components"] if c["props"].get("elem_id") == "checkpoint")
    title = dropdown["props"]["choices"][0][0]
    _generate(server, "alice", title, 11)
    _generate(server, "bob", title, 22)
    outputs = server.root / "outputs"
    assert [p.name for p in (outputs / "alice" / "txt2img").glob("*/*.png")] == ["00000-11.png"]
    assert [p.name for p in (outputs / "bob" / "txt2img").glob("*/*.png")] == ["00000-22.png"]
    assert not (outputs / "txt2img").exists()  # nothing in the shared single-user layout


def test_file_route_serves_a_users_images_only_to_that_user(server: AppServer) -> None:
    outputs = server.root / "outputs"
    alice_png = next((outputs / "alice").rglob("*.png"))
    bob_png = next((outputs / "bob").rglob("*.png"))
    link = bob_png.parent / "borrowed.png"
    link.symlink_to(alice_png)
    with _browser(server, "bob") as bob, _browser(server, "alice") as alice:
        for route in ("gradio_api/file=", "gradio_api/file/"):
            assert bob.get(f"{route}{bob_png}").status_code == 200
            assert bob.get(f"{route}{alice_png}").status_code == 403
            assert bob.get(f"{route}{link}").status_code == 403  # judged by where the link points
            assert bob.get(f"{route}{bob_png.parent}/../../alice/{alice_png.parent.name}/{alice_png.name}"
                           ).status_code == 403
            assert alice.get(f"{route}{alice_png}").status_code == 200
            assert alice.get(f"{route}{bob_png}").status_code == 403  # admins do not read others' images either
        assert bob.head(f"gradio_api/file={alice_png}").status_code == 403
    assert httpx.get(f"{server.url}gradio_api/file={alice_png}").status_code in (401, 403)


def test_admin_actions_are_refused_to_other_users(server: AppServer) -> None:
    bob = Client(server.url, auth=("bob", "bob-pw"), verbose=False)
    with pytest.raises(AppError, match="Only an admin can refresh the model list"):
        bob.predict(api_name="/refresh_checkpoints")
    with pytest.raises(AppError, match="Only an admin can enable or disable extensions"):
        bob.predict([], api_name="/extensions_set_enabled")
    refused = httpx.post(server.url + "api/server/stop", auth=("bob", "bob-pw"))
    assert refused.status_code == 403 and "not an admin" in refused.json()["detail"]
    assert httpx.post(server.url + "api/server/stop").status_code == 401
    alice = Client(server.url, auth=("alice", "alice-pw"), verbose=False)
    assert alice.predict(api_name="/refresh_checkpoints")["value"].startswith("tiny")


def test_an_admin_stops_the_server(server: AppServer) -> None:
    """Last in the module: the shared server goes away."""
    token = httpx.post(server.url + "api/token", auth=("alice", "alice-pw")).json()["token"]
    answer = httpx.post(server.url + "api/server/stop", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.json() == {"status": "stopping"}
    server.process.wait(timeout=30)
    assert server.process.returncode == 0
