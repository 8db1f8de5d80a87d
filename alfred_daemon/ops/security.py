"""The ``[security]`` section, and the start-up rule that keeps an open daemon off networks.

Without ``tokens_file`` every surface (gRPC, HTTP, WebSocket) serves whoever can reach it.
On loopback that is the local machine; on any other address it is the network, with
customer audio on it. So a bind to a non-loopback address without tokens refuses to start
unless the operator says ``allow_insecure = true``, in which case the daemon warns at start
and in ``/pipeline/status``. With tokens but no TLS (not built yet) it starts, and warns
that tokens and audio cross the network in clear.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    tokens_file: str = ""
    """Bearer tokens, one per line: ``name token [max_sessions]`` (:mod:`..api.auth`).
    Empty: no authentication. Re-read on SIGHUP."""
    metrics_public: bool = True
    """``/metrics`` and ``/metrics.json`` without a token (they carry no session ids)."""
    allow_insecure: bool = False
    """Serve without authentication on a non-loopback address (a warning, not an error):
    for a network that is itself trusted and closed."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the daemon to this machine only."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere, or an address of all interfaces


def grpc_host(listen: str) -> str:
    """The host part of a gRPC listen address (``host:port``, ``[v6]:port``)."""
    host, _, _ = listen.rpartition(":")
    return host or listen


def exposure(grpc_listen: str | None, http_host: str | None) -> list[str]:
    """The surfaces bound beyond loopback, as ``"gRPC on 0.0.0.0:50051"`` phrases."""
    out: list[str] = []
    if grpc_listen is not None and not is_loopback(grpc_host(grpc_listen)):
        out.append(f"gRPC on {grpc_listen}")
    if http_host is not None and not is_loopback(http_host):
        out.append(f"HTTP on {http_host}")
    return out


def insecure_refusal(exposed: list[str]) -> str:
    return (f"refusing to serve {' and '.join(exposed)} in plaintext without authentication; "
            "bind to 127.0.0.1, or set allow_insecure = true in [security] if this network "
            "is trusted")


def insecure_warning(exposed: list[str], tokens: bool) -> str:
    if tokens:
        return (f"{' and '.join(exposed)} serve plaintext: bearer tokens and audio cross the "
                "network in clear (no TLS yet)")
    return (f"{' and '.join(exposed)} serve plaintext without authentication "
            "(security.allow_insecure)")
