"""Bearer tokens: who may use the daemon, and how many sessions each may hold.

The tokens file (``security.tokens_file``) has one token per line::

    # name      token                              sessions (optional)
    agent-eu    3b1f0c...e9                        8
    monitoring  9a77d2...41

A client presents ``Authorization: Bearer <token>`` (gRPC metadata ``authorization``, an
HTTP header, or the WebSocket's first message). The daemon then knows it by the token's
*name*, which is what logs and per-session status show; the token itself is never logged
or echoed. Every token is compared, in constant time, against a fixed-length digest, so
neither the time taken nor the answer says which part or which token was wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from ..engine.errors import ConfigError

MIN_TOKEN_CHARS = 16
"""Shorter tokens are refused at load: a guessable token is no authentication."""

NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

UNAUTHENTICATED = "missing or invalid bearer token"
"""The one answer to every authentication failure: no hint of what was wrong."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated client, by the name of its token."""

    name: str
    max_sessions: int | None = None
    """Most sessions this token may hold at once (None: only the daemon's own limit)."""


ANONYMOUS = Principal("anonymous")
"""Who a client is when the daemon has no tokens file (loopback, or allow_insecure)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenStore:
    """The tokens of one tokens file; :meth:`authenticate` maps a token to its principal."""

    def __init__(self, entries: list[tuple[Principal, str]]) -> None:
        self._entries = [(p, _digest(token)) for p, token in entries]

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        """Parse a tokens file; a bad line is a ConfigError naming its line number (never
        its content, which may be a token)."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"security.tokens_file {path} cannot be read "
                              f"({exc.strerror or exc})") from None
        entries: list[tuple[Principal, str]] = []
        names: set[str] = set()
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"{path} line {number}"
            if len(fields) not in (2, 3):
                raise ConfigError(f"{where}: expected 'name token [sessions]'")
            name, token = fields[0], fields[1]
            if not NAME_RE.fullmatch(name):
                raise ConfigError(f"{where}: a token name is 1-64 letters, digits or _.@-")
            if name in names:
                raise ConfigError(f"{where}: the name {name} is used twice")
            if len(token) < MIN_TOKEN_CHARS:
                raise ConfigError(f"{where}: the token is shorter than {MIN_TOKEN_CHARS} "
                                  "characters")
            limit: int | None = None
            if len(fields) == 3:
                if not fields[2].isdigit() or int(fields[2]) < 1:
                    raise ConfigError(f"{where}: the session limit must be a whole number "
                                      ">= 1")
                limit = int(fields[2])
            names.add(name)
            entries.append((Principal(name, limit), token))
        if not entries:
            raise ConfigError(f"security.tokens_file {path} holds no token")
        return cls(entries)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal whose token ``presented`` is, or None. Compares against every
        token, whatever matched, so the time taken does not depend on which did."""
        if presented is None:
            return None
        digest = _digest(presented)
        found: Principal | None = None
        for principal, expected in self._entries:
            if hmac.compare_digest(digest, expected):
                found = principal
        return found


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """What every surface asks: who is this, and may they open one more session?

    Without a tokens file everyone is :data:`ANONYMOUS` (the daemon then only serves
    loopback, or an operator allowed otherwise). Sessions are counted per token name across
    every transport, by the supervisor (each session records its owner), so a session that
    ends any way at all stops counting."""

    def __init__(self, store: TokenStore | None = None) -> None:
        self.store = store

    @property
    def required(self) -> bool:
        return self.store is not None

    def authenticate(self, authorization: str | None) -> Principal | None:
        """``authorization`` is the header (metadata) value; None if it does not pass."""
        if self.store is None:
            return ANONYMOUS
        return self.store.authenticate(bearer(authorization))

    def owner(self, principal: Principal) -> str:
        """What the supervisor records as a session's owner: the token's name, or "" when
        the daemon has no tokens (no name to show or count)."""
        return principal.name if self.required else ""

    @staticmethod
    def over_limit(principal: Principal, held: int) -> str | None:
        """A refusal sentence if ``principal``, holding ``held`` sessions, may open no more."""
        if principal.max_sessions is not None and held >= principal.max_sessions:
            return (f"token {principal.name} holds {held} sessions, its limit; close one or "
                    "retry later")
        return None
