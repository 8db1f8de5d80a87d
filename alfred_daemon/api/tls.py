"""TLS for the gRPC and HTTP listeners: one certificate pair for both, optional client
certificates (mTLS) on gRPC, and certificates re-read on SIGHUP without dropping a stream.

gRPC takes *dynamic* server credentials: the core asks :meth:`TlsFiles.grpc_fetch` before
each handshake, and a reload hands it the new pair; aiohttp's ``SSLContext`` loads the new
chain in place. Connections already up keep the certificate they were opened with.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from ..engine.errors import ConfigError


class TlsFiles:
    """The certificate files of the listeners.

    ``cert``: PEM chain (leaf first); ``key``: its PEM private key; ``client_ca``: PEM CA
    bundle that gRPC clients' certificates must chain to (mTLS), or None for no client
    certificate. Read, and checked to belong together, on construction (ConfigError)."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.contexts: list[ssl.SSLContext] = []
        """HTTP contexts made by :meth:`http_context`, reloaded with the files."""
        self._version = 0
        self._served = -1
        self._pem = self._read()

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        def read(path: Path, what: str) -> bytes:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"TLS {what} {path} cannot be read "
                                  f"({exc.strerror or exc})") from None
            if b"-----BEGIN" not in data:
                raise ConfigError(f"TLS {what} {path} is not PEM")
            return data

        cert, key = read(self.cert, "certificate"), read(self.key, "key")
        ca = read(self.client_ca, "client CA") if self.client_ca is not None else None
        # Loading the pair once checks that key and certificate belong together, here, as a
        # sentence, rather than as a handshake failure later.
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                self.cert, self.key)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"TLS certificate {self.cert} and key {self.key} cannot be "
                              f"used together ({exc})") from None
        return cert, key, ca

    def reload(self) -> None:
        """Re-read the files (SIGHUP). A set that does not load keeps the old one."""
        pem = self._read()
        for ctx in self.contexts:
            ctx.load_cert_chain(self.cert, self.key)
        self._pem = pem
        self._version += 1

    def _grpc_config(self) -> grpc.ServerCertificateConfiguration:
        cert, key, ca = self._pem
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def grpc_fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's per-handshake question: a new configuration, or None for "unchanged"."""
        if self._served == self._version:
            return None
        self._served = self._version
        return self._grpc_config()

    def grpc_credentials(self) -> grpc.ServerCredentials:
        self._served = self._version
        # The stubs type the fetcher as never returning None; gRPC documents None as
        # "keep the current configuration".
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_config(), self.grpc_fetch,  # type: ignore[arg-type]
            require_client_authentication=self.client_ca is not None)

    def http_context(self) -> ssl.SSLContext:
        """A server context for aiohttp (no client certificates on HTTP)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        self.contexts.append(ctx)
        return ctx
