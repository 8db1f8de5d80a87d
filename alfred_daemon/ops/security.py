"""The ``[security]`` section, and the start-up rule that keeps an open daemon off networks.

Without ``tokens_file`` every surface (gRPC, HTTP, WebSocket) serves whoever can reach it.
On loopback that is the local machine; on any other address it is the network, with
customer audio on it. So a surface bound beyond loopback must authenticate its clients, or
the daemon refuses to start unless the operator says ``allow_insecure = true`` (then it
warns at start and in ``/pipeline/status``); without TLS it warns that tokens and audio
cross the network in clear (:func:`exposure_policy`).
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
    tls_cert: str = ""
    """PEM certificate chain for gRPC and HTTP (with ``tls_key``); empty: plaintext."""
    tls_key: str = ""
    tls_client_ca: str = ""
    """PEM CA that gRPC clients' certificates must chain to (mTLS); empty: none asked."""
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


def exposure_policy(security: SecurityConfig, grpc_listen: str | None,
                    http_host: str | None) -> tuple[str | None, list[str]]:
    """Whether the daemon may start with these binds: (a refusal sentence or None, the
    warnings to log and show in the status).

    A surface bound beyond loopback must authenticate its clients: gRPC by tokens or by
    client certificates (``tls_client_ca``), HTTP by tokens; otherwise the daemon refuses
    unless ``allow_insecure``. Without TLS it starts but warns: tokens and audio cross the
    network in clear."""
    tokens = bool(security.tokens_file)
    grpc_exposed = exposure(grpc_listen, None)
    http_exposed = exposure(None, http_host)
    unauthenticated = ([] if tokens or security.tls_client_ca else grpc_exposed) + (
        [] if tokens else http_exposed)
    warnings: list[str] = []
    if unauthenticated:
        if not security.allow_insecure:
            return (f"refusing to serve {' and '.join(unauthenticated)} without "
                    "authentication; bind to 127.0.0.1, set security.tokens_file (or "
                    "tls_client_ca for gRPC), or set allow_insecure = true in [security] if "
                    "this network is trusted"), []
        warnings.append(f"{' and '.join(unauthenticated)} serve without authentication "
                        "(security.allow_insecure)")
    plaintext = (grpc_exposed + http_exposed) if not security.tls_cert else []
    if plaintext:
        warnings.append(f"{' and '.join(plaintext)} serve plaintext: tokens and audio cross "
                        "the network in clear (set security.tls_cert and tls_key)")
    return None, warnings
