"""Who may use the app: credentials from flags or a file, and a generated password when exposed."""

from __future__ import annotations

import hmac
import secrets
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
