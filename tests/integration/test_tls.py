"""TLS on a real daemon: gRPC and HTTPS with the right CA work and with another CA fail;
with client certificates required (mTLS) a client without one is refused; a SIGHUP makes
new connections use renewed certificates. Certificates are made with the openssl CLI."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from alfred_client import AsyncClient

from ..conftest import REPO
from ..grpc_helpers import daemon_executable, running_daemon


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}", cwd=d)


def make_leaf(d: Path, ca: str, name: str, *, server: bool) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
                   if server else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", ext.name,
            cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca", "client-ca"):
        make_ca(d, ca)
    make_leaf(d, "ca", "server", server=True)
    make_leaf(d, "other-ca", "renewed", server=True)
    make_leaf(d, "client-ca", "client", server=False)
    make_leaf(d, "other-ca", "stranger", server=False)
    return d


def creds(ca: Path, client: Path | None = None) -> grpc.ChannelCredentials:
    """What the test helpers' health check reaches a TLS daemon with."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.with_suffix(".key").read_bytes() if client else None,
        certificate_chain=client.with_suffix(".pem").read_bytes() if client else None)


def tls_env(pki: Path, **extra: str) -> dict[str, str]:
    return {"ALFRED__SECURITY__TLS_CERT": str(pki / "server.pem"),
            "ALFRED__SECURITY__TLS_KEY": str(pki / "server.key"), **extra}


async def grpc_status(target: str, **tls: Any) -> str:
    try:
        async with AsyncClient(target, **tls) as client:
            return str((await asyncio.wait_for(client.status(), 10))["state"])
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    except TimeoutError:
        return "TIMEOUT"


async def https_status(port: int, ca: Path | None) -> str:
    ctx: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(ca))
                                  if ca is not None else False)
    try:
        async with aiohttp.ClientSession() as http:
            scheme = "https" if ca is not None else "http"
            r = await http.get(f"{scheme}://127.0.0.1:{port}/healthz", ssl=ctx,
                               timeout=aiohttp.ClientTimeout(total=10))
            return str(r.status)
    except aiohttp.ClientError as exc:
        return type(exc).__name__


def test_tls_and_renewal_on_sighup(tmp_path: Path, pki: Path) -> None:
    work = tmp_path / "certs"
    work.mkdir()
    for name in ("server.pem", "server.key"):
        (work / name).write_bytes((pki / name).read_bytes())
    env = {"ALFRED__SECURITY__TLS_CERT": str(work / "server.pem"),
           "ALFRED__SECURITY__TLS_KEY": str(work / "server.key")}
    out: dict[str, str] = {}
    with running_daemon(tmp_path / "d", env=env, credentials=creds(pki / "ca.pem")) as d:
        out["right_ca"] = asyncio.run(grpc_status(d.target, tls_ca=pki / "ca.pem"))
        out["other_ca"] = asyncio.run(grpc_status(d.target, tls_ca=pki / "other-ca.pem"))
        r = subprocess.run([daemon_executable(), "stream", str(REPO / "tests/data/jfk.wav"),
                            "--target", d.target, "--tls-ca", str(pki / "ca.pem"), "--json",
                            "--no-partials"],
                           check=False, capture_output=True, text=True, timeout=120)
        out["cli_stream"] = "final" if '"final_transcription"' in r.stdout else r.stderr
        out["plaintext"] = asyncio.run(grpc_status(d.target))
        out["https"] = asyncio.run(https_status(d.http_port, pki / "ca.pem"))
        out["https_other_ca"] = asyncio.run(https_status(d.http_port, pki / "other-ca.pem"))
        out["http_plain"] = asyncio.run(https_status(d.http_port, None))
        # Renewal: new files in place, SIGHUP; new connections get the new certificate.
        for src, dst in (("renewed.pem", "server.pem"), ("renewed.key", "server.key")):
            (work / dst).write_bytes((pki / src).read_bytes())
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "certificates reloaded" not in d.log.read_text(
                errors="replace"):
            time.sleep(0.1)
        out["renewed_new_ca"] = asyncio.run(grpc_status(d.target,
                                                        tls_ca=pki / "other-ca.pem"))
        out["renewed_old_ca"] = asyncio.run(grpc_status(d.target, tls_ca=pki / "ca.pem"))
        out["renewed_https"] = asyncio.run(https_status(d.http_port, pki / "other-ca.pem"))
    assert out["right_ca"] == "running", out
    assert out["other_ca"] == "UNAVAILABLE", out
    assert out["cli_stream"] == "final", out
    assert out["plaintext"] == "UNAVAILABLE", out
    assert out["https"] == "200", out
    assert out["https_other_ca"] == "ClientConnectorCertificateError", out
    assert out["http_plain"] != "200", out
    assert out["renewed_new_ca"] == "running", out
    assert out["renewed_old_ca"] == "UNAVAILABLE", out
    assert out["renewed_https"] == "200", out


def test_mtls_refuses_a_client_without_a_certificate(tmp_path: Path, pki: Path) -> None:
    env = tls_env(pki, ALFRED__SECURITY__TLS_CLIENT_CA=str(pki / "client-ca.pem"))
    out: dict[str, str] = {}
    with running_daemon(tmp_path / "d", env=env,
                        credentials=creds(pki / "ca.pem", pki / "client")) as d:
        ca = pki / "ca.pem"
        out["no_cert"] = asyncio.run(grpc_status(d.target, tls_ca=ca))
        out["stranger"] = asyncio.run(grpc_status(
            d.target, tls_ca=ca, tls_cert=pki / "stranger.pem", tls_key=pki / "stranger.key"))
        out["client"] = asyncio.run(grpc_status(
            d.target, tls_ca=ca, tls_cert=pki / "client.pem", tls_key=pki / "client.key"))
    assert out["no_cert"] == "UNAVAILABLE", out
    assert out["stranger"] == "UNAVAILABLE", out
    assert out["client"] == "running", out


def test_a_key_that_does_not_match_its_certificate_is_one_sentence(
        tmp_path: Path, pki: Path) -> None:
    r = subprocess.run(
        [daemon_executable(), "serve", "--http-port", "0", "--listen", "127.0.0.1:0",
         "--runtime-dir", str(tmp_path / "run")],
        env={**tls_env(pki), "ALFRED__SECURITY__TLS_KEY": str(pki / "renewed.key"),
             "PATH": "/usr/bin:/bin"},
        check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be used together" in lines[0], r.stderr
