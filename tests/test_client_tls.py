"""``https://`` and ``grpcs://`` are TLS for real, never silently plain.

A TLS-terminating proxy (Python's ssl, a self-signed certificate made with the openssl CLI) stands in front
of the real Triton server."""

from __future__ import annotations

import select
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from veil.client import VeilClient, _split_url
from veil.errors import ServingError
from veil.noise import NoiseTransform
from veil.serve.validate import ACTIVATION_DIMS


class TLSProxy:
    """Accepts TLS on a loopback port and forwards the plain bytes to ``backend`` (host:port)."""

    def __init__(self, backend: str, cert: Path, key: Path, alpn: list[str] | None = None) -> None:
        host, port = backend.rsplit(":", 1)
        self.backend = (host, int(port))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        if alpn:
            self.ctx.set_alpn_protocols(alpn)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.handshakes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()  # a plain-HTTP client, or one that refused the certificate
            return
        self.handshakes += 1
        plain = socket.create_connection(self.backend)
        try:
            while True:
                ready = [tls] if tls.pending() else select.select([tls, plain], [], [], 60)[0]
                if not ready:
                    return
                for src in ready:
                    try:
                        data = src.recv(1 << 16)
                    except ssl.SSLWantReadError:
                        continue
                    if not data:
                        return
                    (plain if src is tls else tls).sendall(data)
        except OSError:
            return
        finally:
            tls.close()
            plain.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    key, crt = folder / "key.pem", folder / "cert.pem"
    req = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt)]
    subprocess.run(
        [*req, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return crt, key


@pytest.fixture()
def proxies(server: Any, cert: tuple[Path, Path]) -> Iterator[dict[str, TLSProxy]]:
    ep = server.endpoints
    made = {"http": TLSProxy(ep.http, *cert), "grpc": TLSProxy(ep.grpc, *cert, alpn=["h2"])}
    yield made
    for proxy in made.values():
        proxy.close()


def _noise() -> NoiseTransform:
    return NoiseTransform(ACTIVATION_DIMS, smin=0.5, smax=1.0, granularity="channel")


def test_tls_schemes_are_never_downgraded() -> None:
    assert _split_url("https://h:1", None) == ("h:1", "http", True)
    assert _split_url("grpcs://h:2/", None) == ("h:2", "grpc", True)
    assert _split_url("http://h:1", None) == ("h:1", "http", False)
    with pytest.raises(ServingError, match="says http but protocol='grpc'"):
        _split_url("https://h:1", "grpc")
    with pytest.raises(ServingError, match="ca_cert is for TLS"):
        VeilClient("http://h:1", allow_clean=True, ca_cert="x.pem")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_requests_go_over_verified_tls(
    server: Any, proxies: dict[str, TLSProxy], cert: tuple[Path, Path], protocol: str
) -> None:
    scheme = {"http": "https", "grpc": "grpcs"}[protocol]
    proxy = proxies[protocol]
    x = torch.randn(1, *ACTIVATION_DIMS, generator=torch.Generator().manual_seed(4))
    server.recorder.take()
    # its certificate is not a system root: refused, and nothing reaches the server in clear
    with pytest.raises(ServingError, match="TLS") as info:
        VeilClient(f"{scheme}://{proxy.url}", allow_clean=True, timeout=10).infer(x)
    assert "\n" not in str(info.value)
    c = VeilClient(f"{scheme}://{proxy.url}", allow_clean=True, timeout=20, ca_cert=cert[0])
    loc, _ = c.infer(x)
    assert loc.shape == (1, 21824, 4) and proxy.handshakes >= 1
    assert len(server.recorder.take()) == 1
    # a TLS client pointed at the plain port fails: it never falls back to plain text
    ep = server.endpoints.http if protocol == "http" else server.endpoints.grpc
    with pytest.raises(ServingError):
        VeilClient(f"{scheme}://{ep}", allow_clean=True, timeout=10, ca_cert=cert[0]).infer(x)
    assert server.recorder.take() == []
