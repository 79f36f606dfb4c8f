"""Who may use the app: credentials from flags or a file, a generated password when exposed, and the throttle
that slows down and then locks out password guessing."""

from __future__ import annotations

import hmac
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

GENERATED_USER = "homegrown"


@dataclass
class Credentials:
    users: dict[str, str] = field(default_factory=dict)
    generated: bool = False  # the password was made at start-up and must be shown to the user

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def check(self, user: str, password: str) -> bool:
        expected = self.users.get(user or "")
        # compare_digest on both paths: the time taken does not tell which users exist
        return hmac.compare_digest((expected or "").encode(), (password or "").encode()) and expected is not None

    def as_gradio(self) -> list[tuple[str, str]] | None:
        return list(self.users.items()) or None


def parse_pairs(text: str, source: str) -> dict[str, str]:
    """`user:pass` pairs separated by commas or newlines (A1111's --gradio-auth format)."""
    users = {}
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise UserError(f"{source}: expected user:password, got {item.split(':')[0]!r}...", field="auth")
        users[user] = password
    return users


def credentials(auth: str | None, auth_file: str | None, exposed: bool) -> Credentials:
    users = {}
    if auth:
        users.update(parse_pairs(auth, "--auth"))
    if auth_file:
        try:
            users.update(parse_pairs(Path(auth_file).read_text(encoding="utf-8"), auth_file))
        except OSError as exc:
            raise UserError(f"cannot read {auth_file}: {exc.strerror}", field="auth-file") from None
    if users or not exposed:
        return Credentials(users)
    # Reachable from other machines and no password given: never open by accident.
    return Credentials({GENERATED_USER: secrets.token_urlsafe(12)}, generated=True)


@dataclass
class _Failures:
    count: int = 0
    not_before: float = 0.0  # no attempt from this client is checked before this time
    last: float = 0.0
    in_flight: int = 0


class SignInThrottle:
    """Failed sign-ins per client address: a few free, then exponentially longer waits, then a lockout.

    Without it a password could be guessed hundreds of times a second. The page's login form and the API's
    HTTP Basic both go through one throttle (app.py builds it and hands it to both), so an address cannot
    switch doors to keep guessing. While a client must wait, even the right password is refused: otherwise
    the lockout would still tell a guesser when a guess is right.
    """

    def __init__(self, free: int = 5, first_delay: float = 1.0, max_delay: float = 60.0, lockout_after: int = 20,
                 lockout_seconds: float = 15 * 60, clock=time.monotonic, log=None, max_clients: int = 10_000):
        self.free, self.first_delay, self.max_delay = free, first_delay, max_delay
        self.lockout_after, self.lockout_seconds = lockout_after, lockout_seconds
        self.clock = clock
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.max_clients = max_clients  # bounds memory when many addresses fail once
        self._clients: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds `client` must wait before its next attempt is checked (0: check it now)."""
        with self._lock:
            state = self._clients.get(client)
            return max(0.0, state.not_before - self.clock()) if state else 0.0

    def begin(self, client: str) -> float:
        """Like `wait`, and marks an attempt in flight: a client that has failed before gets one attempt at a
        time, so firing many at once does not slip past the waits. Pair with `failed` or `succeeded`."""
        with self._lock:
            state = self._clients.get(client)
            if state is None:
                state = self._clients[client] = _Failures()
            wait = max(0.0, state.not_before - self.clock())
            if not wait and state.count and state.in_flight:
                wait = self.first_delay
            if not wait:
                state.in_flight += 1
            return wait

    def failed(self, client: str) -> None:
        with self._lock:
            now = self.clock()
            state = self._clients.setdefault(client, _Failures())
            state.in_flight = max(0, state.in_flight - 1)
            state.count += 1
            state.last = now
            if state.count >= self.lockout_after:
                # Attempts are not checked during a lockout, so each failure here begins a new one: one line each.
                state.not_before = now + self.lockout_seconds
                self.log(f"sign-in: {state.count} failed attempts from {client}: refused for "
                         f"{self.lockout_seconds / 60:g} minutes")
            elif state.count >= self.free:
                state.not_before = now + min(self.max_delay, self.first_delay * 2 ** (state.count - self.free))
            self._prune(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)

    def _prune(self, now: float) -> None:
        if len(self._clients) <= self.max_clients:
            return
        stale = [c for c, s in self._clients.items() if not s.in_flight and s.not_before <= now
                 and now - s.last > self.lockout_seconds]
        for client in stale or sorted(self._clients, key=lambda c: self._clients[c].last)[: len(self._clients) // 2]:
            self._clients.pop(client, None)
