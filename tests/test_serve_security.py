"""``sidecar serve`` as a real process: the bind policy, tokens on the gRPC listener, TLS on
both listeners, the separate admin listener, early 413s, and connection limits. The sidecars
here use the exact layer only (no embedding model to load)."""

from __future__ import annotations

import datetime
import ipaddress
import selectors
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

TOKEN_ENV = "SIDECAR_TEST_SERVE_TOKEN"
TOKEN = "serve-token-5d2e8a"
AUTH = {"authorization": f"Bearer {TOKEN}"}
START_DEADLINE_S = 120.0


def _write_config(tmp_path: Path, name: str, server: dict[str, Any]) -> Path:
    config = {
        "server": {"log_level": "info", **server},
        "cache": {"data_dir": ":memory:", "default_cache_key": "t", "vector_store": ""},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_to_exit(path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    import os

    return subprocess.run(
        [*sidecar_command(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


# ------------------------------------------------------------------------- bind policy
def test_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    path = _write_config(tmp_path, "open", {"http_port": free_port(), "grpc_port": free_port()})
    done = _run_to_exit(path, "--host", "0.0.0.0")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "--insecure-no-auth" in done.stderr and "auth_token_env" in done.stderr


def test_a_named_token_variable_that_is_missing_stops_start_up(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path,
        "missing",
        {"http_port": free_port(), "grpc_port": free_port(), "auth_token_env": TOKEN_ENV},
    )
    done = _run_to_exit(path)
    assert done.returncode == 2 and TOKEN_ENV in done.stderr


def test_insecure_flag_starts_and_says_so(tmp_path: Path) -> None:
    http_port = free_port()
    path = _write_config(tmp_path, "insecure", {"http_port": http_port, "grpc_port": free_port()})
    proc = ManagedProcess(
        "sidecar",
        [*sidecar_command(path), "--host", "0.0.0.0", "--insecure-no-auth"],
        tmp_path / "insecure.log",
    )
    proc.start()
    try:
        proc.wait_ready(f"http://127.0.0.1:{http_port}/readyz", START_DEADLINE_S)
        assert "INSECURE: listening on 0.0.0.0 without authentication" in proc.log_tail(50)
    finally:
        proc.stop()


# ------------------------------------------------------------------------- TLS, tokens
def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Served:
    def __init__(self, http: str, admin: str, grpc_port: int, cert: Path) -> None:
        self.http, self.admin, self.grpc_port, self.cert = http, admin, grpc_port, cert


@pytest.fixture(scope="module")
def tls_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Token, TLS on both listeners, and the admin API on its own port."""
    tmp_path = tmp_path_factory.mktemp("tls-sidecar")
    cert, key = _self_signed(tmp_path)
    http_port, admin_port, grpc_port = free_port(), free_port(), free_port()
    path = _write_config(
        tmp_path,
        "tls",
        {
            "http_port": http_port,
            "admin_port": admin_port,
            "grpc_port": grpc_port,
            "auth_token_env": TOKEN_ENV,
            "tls_cert_file": str(cert),
            "tls_key_file": str(key),
        },
    )
    proc = ManagedProcess(
        "sidecar", sidecar_command(path), tmp_path / "tls.log", env={TOKEN_ENV: f"other,{TOKEN}"}
    )
    proc.start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + START_DEADLINE_S
        while True:  # polling a starting process, not synchronisation
            try:
                if httpx.get(f"https://127.0.0.1:{admin_port}/healthz", verify=ctx).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not proc.running():
                raise RuntimeError(f"sidecar did not start:\n{proc.log_tail()}")
            time.sleep(0.1)
        yield Served(
            f"https://127.0.0.1:{http_port}", f"https://127.0.0.1:{admin_port}", grpc_port, cert
        )
    finally:
        proc.stop()


def test_https_with_token_and_separate_admin_listener(tls_sidecar: Served) -> None:
    ctx = ssl.create_default_context(cafile=str(tls_sidecar.cert))
    with httpx.Client(verify=ctx, timeout=10) as client:
        assert client.get(f"{tls_sidecar.admin}/readyz").status_code == 401
        ready = client.get(f"{tls_sidecar.admin}/readyz", headers=AUTH)
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert client.get(f"{tls_sidecar.admin}/metrics", headers=AUTH).status_code == 200
        # the hook listener serves hooks (and /healthz) only, the admin listener no hooks
        assert client.get(f"{tls_sidecar.http}/metrics", headers=AUTH).status_code == 404
        assert client.get(f"{tls_sidecar.http}/healthz").status_code == 200
        envelope = {"request_id": "nope", "request_secret": "s", "status": 200, "body": {}}
        res = client.post(f"{tls_sidecar.admin}/v1/hooks/response", json=envelope, headers=AUTH)
        assert res.status_code == 404
        res = client.post(f"{tls_sidecar.http}/v1/hooks/response", json=envelope)
        assert res.status_code == 401
        res = client.post(f"{tls_sidecar.http}/v1/hooks/response", json=envelope, headers=AUTH)
        assert res.status_code == 404 and "nope" in res.json()["error"]["message"]
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not answered on a TLS listener
        httpx.get(tls_sidecar.http.replace("https", "http") + "/healthz", timeout=5)


def _headers_message() -> pb.ProcessingRequest:
    from envoy.config.core.v3 import base_pb2

    headers = base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=":method", raw_value=b"GET"),
            base_pb2.HeaderValue(key=":path", raw_value=b"/v1/models"),
        ]
    )
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=headers, end_of_stream=True))


def test_grpc_over_tls_needs_the_token_but_health_does_not(tls_sidecar: Served) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_sidecar.cert.read_bytes())
    with grpc.secure_channel(f"localhost:{tls_sidecar.grpc_port}", credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.ExternalProcessorStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Process(iter([_headers_message()]), metadata=metadata, timeout=10))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in (refused.value.details() or "")
        replies = list(
            stub.Process(
                iter([_headers_message()]),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=10,
            )
        )
        assert len(replies) == 1 and replies[0].HasField("request_headers")


# ------------------------------------------------------------------ body size, connections
HEADER_TIMEOUT_S = 4.0
BODY_TIMEOUT_S = 2.0
LIMITED_LOG: list[ManagedProcess] = []
MAX_CONNECTIONS = 260


@pytest.fixture(scope="module")
def limited_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp_path = tmp_path_factory.mktemp("limited-sidecar")
    http_port = free_port()
    path = _write_config(
        tmp_path,
        "limited",
        {
            "http_port": http_port,
            "grpc_enabled": False,
            "max_body_bytes": 64 * 1024,
            "header_timeout": HEADER_TIMEOUT_S,
            "body_timeout": BODY_TIMEOUT_S,
            "keepalive_timeout": 1,
            "max_connections": MAX_CONNECTIONS,
        },
    )
    proc = ManagedProcess("sidecar", sidecar_command(path), tmp_path / "limited.log").start()
    LIMITED_LOG.append(proc)
    try:
        proc.wait_ready(f"http://127.0.0.1:{http_port}/readyz", START_DEADLINE_S)
        yield http_port
    finally:
        proc.stop()


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return data


def test_chunked_upload_gets_413_before_it_ends(limited_sidecar: int) -> None:
    """The body never ends (chunked, no size declared): the 413 must come once the limit is
    passed, and the connection is closed instead of drained."""
    with socket.create_connection(("127.0.0.1", limited_sidecar)) as sock:
        sock.sendall(
            b"POST /v1/hooks/request HTTP/1.1\r\nhost: sidecar\r\n"
            b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        chunk = b'{"pad": "' + b"x" * 32 * 1024
        for _ in range(6):  # 192 KiB: past max_body_bytes plus envelope, and then we stop
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed before the rest was sent: as it should
        reply = _read_until_closed(sock, 30)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"connection: close" in head.lower()
    assert b"max_body_bytes" in body


def _slow_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/hooks/request HTTP/1.1\r\nhost: sidecar\r\nx-slow: 1")  # never ends
    return sock


def _closed_by_server(socks: list[socket.socket], within: float) -> list[socket.socket]:
    """The sockets the server closed (or answered) within ``within`` seconds."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    ready: list[socket.socket] = []
    deadline = time.monotonic() + within
    while len(ready) < len(socks) and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            sel.unregister(key.fileobj)
            ready.append(key.fileobj)  # type: ignore[arg-type]
    sel.close()
    return ready


def test_slow_connections_are_capped_timed_out_and_liveness_stays_up(
    limited_sidecar: int,
) -> None:
    port = limited_sidecar
    slow = [_slow_client(port) for _ in range(250)]
    try:
        # 250 connections stuck in their headers: the liveness probe still answers.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
            for _ in range(20):
                assert client.get("/healthz").json() == {"status": "ok"}
        extra = [_slow_client(port) for _ in range(20)]
        slow += extra
        # Beyond max_connections the server closes new connections at once (well before the
        # header deadline): 250 + 20 - 260 = 10 of the extra ones.
        refused = _closed_by_server(extra, HEADER_TIMEOUT_S / 2)
        over = 250 + 20 - MAX_CONNECTIONS
        # (+1: the probes' own connection may not be closed on the server side yet)
        assert over <= len(refused) <= over + 1
        assert all(_read_until_closed(s, 5) == b"" for s in refused)
        # Every other one is answered 408 and closed at the header deadline.
        waiting = [s for s in slow if s not in refused]
        timed_out = _closed_by_server(waiting, HEADER_TIMEOUT_S + 10)
        assert len(timed_out) == len(waiting)
        assert _read_until_closed(timed_out[0], 5).startswith(b"HTTP/1.1 408")
    finally:
        for s in slow:
            s.close()


def test_idle_keep_alive_connection_is_closed(limited_sidecar: int) -> None:
    with socket.create_connection(("127.0.0.1", limited_sidecar)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: sidecar\r\n\r\n")
        reply = _read_until_closed(sock, 15)  # returns when the server closes the connection
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b'{"status":"ok"}\n')


def test_stalled_body_closes_the_connection(limited_sidecar: int) -> None:
    """Headers complete, the body stops after 10 of 1,000 bytes: the connection is closed
    after server.body_timeout and the sidecar counts it instead of logging a crash."""
    with socket.create_connection(("127.0.0.1", limited_sidecar)) as sock:
        sock.sendall(
            b"POST /v1/hooks/request HTTP/1.1\r\nhost: sidecar\r\n"
            b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
            b'{"method":'
        )
        started = time.monotonic()
        assert _read_until_closed(sock, BODY_TIMEOUT_S + 15) == b""
    assert time.monotonic() - started >= BODY_TIMEOUT_S * 0.9
    metrics = httpx.get(f"http://127.0.0.1:{limited_sidecar}/metrics", timeout=10).text
    assert 'kind="client_disconnected"' in metrics
    assert "Traceback" not in LIMITED_LOG[-1].log_tail(200)
