"""The dashboard's password, sessions and CSRF tokens (hashlib, hmac, secrets: nothing else).

The password file holds one line ``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>``
(written by ``python -m edge web --set-password``); the password itself is
never stored. A good login sets a session cookie ``<expiry>.<nonce>.<mac>``
signed with a key made at start-up (a restart logs everyone out). Each form
that writes carries a CSRF token derived from the session (``csrf_token``),
checked with the session cookie (SameSite=Strict) on every POST.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path

from edge.files import atomic_write

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_S = 7 * 24 * 3600
COOKIE = "dawnchorus_session"
MIN_PASSWORD = 8


class PasswordError(ValueError):
    """A password file that cannot be used, or a password refused; the message says why."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(bytes.fromhex(digest)), maxmem=128 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, bytes.fromhex(digest))


def write_password_file(path: str | Path, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"the password needs at least {MIN_PASSWORD} characters")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, hash_password(password) + "\n", mode=0o600)


def read_password_file(path: str | Path) -> str:
    """The stored hash; PasswordError naming the file if it is missing or not one of ours."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise PasswordError(f"{path}: cannot read the password file ({exc.strerror or exc}); "
                            "set one with: python -m edge web --config FILE --set-password") from None
    if not text.startswith("scrypt$") or text.count("$") != 5:
        raise PasswordError(f"{path}: not a dawnchorus password file (set one with: python -m edge web --set-password)")
    return text


class Sessions:
    def __init__(self, key: bytes | None = None, clock=time.time):
        self.key = key or secrets.token_bytes(32)
        self.clock = clock
        self.revoked: dict[str, int] = {}  # nonce -> expiry, until it would have expired anyway

    def _mac(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def new(self) -> str:
        body = f"{int(self.clock()) + SESSION_S}.{secrets.token_hex(8)}"
        return f"{body}.{self._mac(body)}"

    def valid(self, cookie: str | None) -> bool:
        if not cookie or cookie.count(".") != 2:
            return False
        expiry, nonce, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac(f"{expiry}.{nonce}")) or nonce in self.revoked:
            return False
        return expiry.isdigit() and int(expiry) > self.clock()

    def revoke(self, cookie: str | None) -> None:
        """Log a session out (kept until its expiry; a restart forgets all sessions anyway)."""
        if cookie is not None and self.valid(cookie):
            expiry, nonce, _ = cookie.split(".")
            now = self.clock()
            self.revoked = {n: e for n, e in self.revoked.items() if e > now}
            self.revoked[nonce] = int(expiry)

    def csrf_token(self, cookie: str) -> str:
        return self._mac("csrf:" + cookie)[:32]

    def csrf_ok(self, cookie: str | None, token: str | None) -> bool:
        return bool(cookie and token and self.valid(cookie) and hmac.compare_digest(self.csrf_token(cookie), token))
