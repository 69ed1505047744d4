"""Who may use the app: accounts with scrypt-hashed passwords, the admin role, login rate limits and API tokens.

Every interface (Gradio's login page, HTTP Basic and bearer tokens on the API routes) authenticates through one
`UserStore`, so the rate limits count every login attempt whichever door it came through. Passwords exist in plain
text only while the store is built: it keeps a per-user random salt and the scrypt digest, and compares digests with
`hmac.compare_digest`. Without any configured login (a local, single-user app) there is one user, "local", an admin.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

LOCAL_USER = "local"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SALT_BYTES = 16
_DIGEST_BYTES = 32
_SCRYPT_R = 8
_SCRYPT_P = 1
DEFAULT_SCRYPT_N = 2**14  # ~0.1 s per check on one busy core: cheap for a login, expensive for a guessing run
DEFAULT_TOKEN_TTL_S = 12 * 3600.0
_PRUNE_ABOVE = 4096  # throttle entries kept before stale ones are dropped (many addresses or made-up user names)


def validate_user_name(name: str) -> str:
    """A user name is also a folder name under outputs/, so it must be one plain, portable path component."""
    if not _NAME.fullmatch(name or ""):
        raise ValueError(
            f"user name {name!r} is not allowed: use 1-64 characters from A-Z a-z 0-9 _ . - "
            "(it becomes a folder name under outputs/)"
        )
    if name.startswith(".") or ".." in name:
        raise ValueError(f"user name {name!r} is not allowed: it must not start with '.' or contain '..'")
    return name


@dataclass(frozen=True)
class User:
    """A logged-in person; admins may refresh models, change settings, install extensions and stop the server."""

    name: str
    is_admin: bool


@dataclass(frozen=True)
class LoginLimits:
    """After `attempts` failed logins within `window_s` for one user name or one client address, every attempt for
    that name or address is refused (even a correct one) for `cooldown_s`."""

    attempts: int = 5
    window_s: float = 60.0
    cooldown_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.window_s <= 0 or self.cooldown_s <= 0:
            raise ValueError("login limits need at least 1 attempt and a positive window and cool-down")


class LoginThrottled(Exception):
    """Too many failed logins for this user name or address; `retry_after` says when to try again (seconds)."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            f"Too many failed logins for this user or address; try again in {self.retry_after} s."
        )


@dataclass(frozen=True, repr=False)
class _PasswordHash:
    salt: bytes
    digest: bytes
    n: int

    @classmethod
    def create(cls, password: str, n: int) -> "_PasswordHash":
        salt = secrets.token_bytes(_SALT_BYTES)
        return cls(salt, _scrypt(password, salt, n), n)

    def matches(self, password: str) -> bool:
        return hmac.compare_digest(self.digest, _scrypt(password, self.salt, self.n))

    def __repr__(self) -> str:
        return "_PasswordHash(<scrypt>)"


def _scrypt(password: str, salt: bytes, n: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=_SCRYPT_R, p=_SCRYPT_P,
                          maxmem=256 * n * _SCRYPT_R + 2**20, dklen=_DIGEST_BYTES)


@dataclass
class _Bucket:
    attempts: list[float] = field(default_factory=list)  # failures, and attempts still being checked
    locked_until: float = 0.0


class LoginThrottle:
    """Counts failed logins per key (a user name or a client address) within a sliding window.

    The store checks and records under one lock around the password hash (`UserStore._verify_lock`), so a burst of
    parallel guesses is judged one at a time and cannot slip past the limit while hashes are still running; correct
    logins in parallel are never counted as failures.
    """

    def __init__(self, limits: LoginLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, keys: list[str]) -> None:
        """Raise LoginThrottled while any key is locked or has used up its failures in the window."""
        with self._lock:
            now = self._clock()
            if len(self._buckets) > _PRUNE_ABOVE:
                self._prune(now)
            wait = max((self._wait(key, now) for key in keys), default=0.0)
            if wait > 0:
                raise LoginThrottled(wait)

    def succeeded(self, reset: str) -> None:
        """The attempt was right: the `reset` key (the user) starts afresh."""
        with self._lock:
            self._buckets.pop(reset, None)

    def failed(self, keys: list[str]) -> None:
        """Count a wrong attempt for every key; a key at the limit is locked for the cool-down."""
        with self._lock:
            now = self._clock()
            for key in keys:
                bucket = self._buckets.setdefault(key, _Bucket())
                bucket.attempts = self._recent(bucket, now) + [now]
                if len(bucket.attempts) >= self.limits.attempts:
                    bucket.locked_until = now + self.limits.cooldown_s
                    bucket.attempts = []

    def _recent(self, bucket: _Bucket, now: float) -> list[float]:
        return [t for t in bucket.attempts if now - t < self.limits.window_s]

    def _wait(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        if bucket.locked_until > now:
            return bucket.locked_until - now
        recent = self._recent(bucket, now)
        if len(recent) >= self.limits.attempts:  # the window's failures are used up
            return self.limits.window_s - (now - min(recent))
        return 0.0

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.locked_until <= now and not self._recent(b, now)]:
            del self._buckets[key]


class UserStore:
    """The accounts of one running app; built once at start-up from `(name, password)` pairs."""

    def __init__(
        self,
        credentials: Iterable[tuple[str, str]] = (),
        admins: Iterable[str] = (),
        *,
        limits: LoginLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        token_ttl_s: float = DEFAULT_TOKEN_TTL_S,
        scrypt_n: int = DEFAULT_SCRYPT_N,
    ) -> None:
        """Raises ValueError naming the problem: a bad or duplicate user name, an empty password, an unknown admin.

        With exactly one account and no admin named, that account is the admin (it is the operator); with several,
        only the names in `admins` are.
        """
        self._hashes: dict[str, _PasswordHash] = {}
        folded: dict[str, str] = {}
        for name, password in credentials:
            validate_user_name(name)
            if not password:
                raise ValueError(f"user {name!r} has an empty password")
            if name.casefold() in folded:  # outputs/Alice and outputs/alice are one folder on some systems
                raise ValueError(f"user {name!r} is listed twice (names differ only in case: "
                                 f"{folded[name.casefold()]!r})")
            folded[name.casefold()] = name
            self._hashes[name] = _PasswordHash.create(password, scrypt_n)
        admin_names = set(admins)
        unknown = sorted(admin_names - self._hashes.keys())
        if unknown:
            raise ValueError(f"admin {', '.join(map(repr, unknown))} is not a configured user "
                             f"(known: {', '.join(sorted(self._hashes)) or 'none: add --auth or --auth-file'})")
        if len(self._hashes) == 1 and not admin_names:
            admin_names = set(self._hashes)
        if self._hashes:
            self._users = {name: User(name, name in admin_names) for name in self._hashes}
        else:
            self._users = {LOCAL_USER: User(LOCAL_USER, True)}
        # Unknown names cost one hash too, so timing does not tell which names exist.
        self._dummy = _PasswordHash.create(secrets.token_urlsafe(16), scrypt_n) if self._hashes else None
        self._throttle = LoginThrottle(limits or LoginLimits(), clock)
        self._verify_lock = threading.Lock()
        self._session_key = secrets.token_bytes(32)  # for `_verified`; never leaves this process
        self._verified: dict[str, bytes] = {}  # name -> HMAC of the last (name, password) that scrypt accepted
        self._clock = clock
        self._token_ttl_s = token_ttl_s
        self._tokens: dict[bytes, tuple[str, float]] = {}  # sha256(token) -> (user name, expiry)
        self._tokens_lock = threading.Lock()

    @property
    def limits(self) -> LoginLimits:
        return self._throttle.limits

    @property
    def auth_enabled(self) -> bool:
        """True when logins are configured (--auth/--auth-file); False for the local single-user app."""
        return bool(self._hashes)

    @property
    def is_multi_user(self) -> bool:
        """Several accounts: outputs are kept per user and users cannot read each other's images."""
        return len(self._hashes) > 1

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._users)

    @property
    def admins(self) -> tuple[str, ...]:
        return tuple(name for name, user in self._users.items() if user.is_admin)

    def get(self, name: str | None) -> User | None:
        """The user called `name`, or None."""
        return self._users.get(name or "")

    def local_user(self) -> User | None:
        """The user of a request that carries no login: "local" when no login is configured, else nobody."""
        return None if self.auth_enabled else self._users[LOCAL_USER]

    def authenticate(self, name: str, password: str, address: str | None) -> User | None:
        """The user if `password` is theirs, else None; raises LoginThrottled while the name or address is locked.

        A wrong attempt counts against both the user name and the client `address` (None when unknown). API clients
        send their password with every call, so a verified (name, password) pair is remembered as an HMAC under a
        key that exists only in this process: the next call costs a hash of microseconds, not scrypt's 0.1 s, and
        no password is kept in plain text."""
        if not self.auth_enabled:
            return None
        user_key = "user:" + name.casefold()
        keys = [user_key] + ([f"address:{address}"] if address else [])
        self._throttle.check(keys)
        known = self._hashes.get(name)
        remembered = self._remembered_digest(name, password)
        if known is not None and hmac.compare_digest(self._verified.get(name, b""), remembered):
            self._throttle.succeeded(reset=user_key)
            return self._users[name]
        with self._verify_lock:  # one scrypt at a time: parallel guesses are judged in turn
            self._throttle.check(keys)
            ok = (known or self._dummy).matches(password) and known is not None  # type: ignore[union-attr]
            if ok:
                self._throttle.succeeded(reset=user_key)
                self._verified[name] = remembered
                return self._users[name]
            self._throttle.failed(keys)
            return None

    def _remembered_digest(self, name: str, password: str) -> bytes:
        message = name.encode("utf-8", "surrogatepass") + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._session_key, message, hashlib.sha256).digest()

    def issue_token(self, user: User) -> str:
        """A random bearer token for `user`, valid for the store's token lifetime; only its hash is kept."""
        if self.get(user.name) != user:
            raise ValueError(f"{user.name!r} is not a user of this app")
        token = secrets.token_urlsafe(32)
        with self._tokens_lock:
            now = self._clock()
            self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
            self._tokens[_token_key(token)] = (user.name, now + self._token_ttl_s)
        return token

    def user_for_token(self, token: str) -> User | None:
        """The user a live token belongs to, or None (unknown, expired or revoked)."""
        if not token:
            return None
        with self._tokens_lock:
            entry = self._tokens.get(_token_key(token))
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._tokens[_token_key(token)]
                return None
        return self._users.get(entry[0])

    def revoke_token(self, token: str) -> bool:
        """Forget a token; True if it was live."""
        with self._tokens_lock:
            return self._tokens.pop(_token_key(token), None) is not None


def _token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
