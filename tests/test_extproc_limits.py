"""Bounds on the ext_proc gRPC listener (``server.grpc_*``): a cap on streams in progress and
on connections, a handshake deadline, keepalive pings that close dead peers, and idle and age
limits on connections. Real grpc.aio server and client on loopback; raw sockets play the
peers a grpc client never is (silent, or deaf to pings)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from sidecar.config import ConfigError, SidecarConfig, load_config
from sidecar.services import Sidecar
from sidecar.transports.extproc import (
    ExtProcServer,
    ListenerLimits,
    PassThroughProcessor,
    build_server,
)

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def headers_message() -> pb.ProcessingRequest:
    headers = pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=":method", raw_value=b"GET"),
                base_pb2.HeaderValue(key=":path", raw_value=b"/healthz"),
            ]
        )
    )
    return pb.ProcessingRequest(request_headers=headers)


async def started(limits: ListenerLimits) -> AsyncIterator[ExtProcServer]:
    server = ExtProcServer(PassThroughProcessor, port=0, limits=limits)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


def channel(port: int) -> grpc.aio.Channel:
    # A local subchannel pool: each channel opens its own connection (grpc otherwise shares
    # one connection between channels to the same address).
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


async def open_stream(ch: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    """A Process stream that got its first reply and stays open (no immediate response)."""
    call = pb_grpc.ExternalProcessorStub(ch).Process(timeout=30)
    await call.write(headers_message())
    reply = await call.read()
    assert isinstance(reply, pb.ProcessingResponse) and reply.HasField("request_headers")
    return call


async def wait_state(
    ch: grpc.aio.Channel, wanted: grpc.ChannelConnectivity, deadline_s: float
) -> float:
    """Seconds until the channel reaches ``wanted``; fails past the deadline."""
    started_at = time.monotonic()
    state = ch.get_state()
    while state != wanted:
        left = deadline_s - (time.monotonic() - started_at)
        assert left > 0, f"channel stayed {state}, never {wanted}"
        try:
            await asyncio.wait_for(ch.wait_for_state_change(state), left)
        except TimeoutError:
            pass
        state = ch.get_state()
    return time.monotonic() - started_at


def closed_within(sock: socket.socket, deadline_s: float) -> float | None:
    """Read (and drop) what the server sends until it closes; seconds taken, None if still
    open at the deadline."""
    started_at = time.monotonic()
    while (left := deadline_s - (time.monotonic() - started_at)) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - started_at
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - started_at
    return None


async def test_streams_beyond_the_cap_are_refused_with_resource_exhausted() -> None:
    async for server in started(ListenerLimits(max_concurrent_streams=2)):
        async with channel(server.port) as ch:
            first, second = await open_stream(ch), await open_stream(ch)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await open_stream(ch)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit" in (refused.value.details() or "").lower()
            # The streams in progress are untouched, and a freed slot takes a new stream.
            await second.write(headers_message())
            assert (await second.read()).HasField("request_headers")
            first.cancel()
            deadline = time.monotonic() + 10
            while True:
                try:
                    third = await open_stream(ch)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline, "the freed slot never became usable"
                    await asyncio.sleep(0.05)  # polling interval, not a synchronisation
            second.cancel()
            third.cancel()


async def test_connections_beyond_the_cap_are_closed() -> None:
    async for server in started(ListenerLimits(max_connections=2)):
        channels = [channel(server.port) for _ in range(3)]
        try:
            held = [await open_stream(channels[0]), await open_stream(channels[1])]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await open_stream(channels[2])
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # The two connections within the cap keep working.
            for call in held:
                await call.write(headers_message())
                assert (await call.read()).HasField("request_headers")
        finally:
            for ch in channels:
                await ch.close()


async def test_an_idle_connection_is_closed_and_a_busy_one_is_not() -> None:
    idle_s = 0.4
    async for server in started(ListenerLimits(max_connection_idle=idle_s)):
        async with channel(server.port) as idle, channel(server.port) as busy:
            (await open_stream(idle)).cancel()
            call = await open_stream(busy)
            # GOAWAY after idle_s without streams: the client's channel drops to IDLE.
            took = await wait_state(idle, grpc.ChannelConnectivity.IDLE, 10)
            assert took >= idle_s * 0.5
            # The connection with a stream in progress outlived the idle limit and still works.
            assert busy.get_state() == grpc.ChannelConnectivity.READY
            await call.write(headers_message())
            assert (await call.read()).HasField("request_headers")
            call.cancel()
            # A closed idle connection costs the client nothing but a reconnect.
            (await open_stream(idle)).cancel()


async def test_a_connection_past_its_maximum_age_is_closed() -> None:
    limits = ListenerLimits(max_connection_idle=0, max_connection_age=0.4)
    async for server in started(limits):
        async with channel(server.port) as ch:
            (await open_stream(ch)).cancel()
            await wait_state(ch, grpc.ChannelConnectivity.IDLE, 10)


async def test_a_connection_that_never_completes_its_handshake_is_closed() -> None:
    async for server in started(ListenerLimits(handshake_timeout=0.5)):
        with socket.create_connection(("127.0.0.1", server.port)) as silent:
            took = await asyncio.to_thread(closed_within, silent, 10)
        assert took is not None, "a connection that sent nothing stayed open"


async def test_a_peer_that_ignores_keepalive_pings_is_closed() -> None:
    limits = ListenerLimits(keepalive_time=0.3, keepalive_timeout=0.3, max_connection_idle=0)
    async for server in started(limits):
        with socket.create_connection(("127.0.0.1", server.port)) as deaf:
            # A complete HTTP/2 handshake, then nothing: every ping goes unanswered.
            deaf.sendall(HTTP2_PREFACE + EMPTY_SETTINGS + SETTINGS_ACK)
            took = await asyncio.to_thread(closed_within, deaf, 10)
        assert took is not None, "a peer that never answers pings stayed connected"


async def test_the_config_keys_reach_the_listener() -> None:
    config = SidecarConfig.model_validate(
        {
            "cache": {"enabled": False},
            "server": {"grpc_port": 0, "grpc_max_concurrent_streams": 1},
        }
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    server = build_server(sidecar)
    try:
        port = await server.start()
        async with channel(port) as ch:
            held = await open_stream(ch)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await open_stream(ch)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            held.cancel()
    finally:
        await server.stop(0)
        await sidecar.close()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("grpc_max_connections", 0),
        ("grpc_max_concurrent_streams", 0),
        ("grpc_keepalive_time", "0"),
        ("grpc_handshake_timeout", "soon"),
        ("grpc_max_connection_idle", "-5s"),
    ],
)
def test_bad_limits_are_refused_naming_the_key(tmp_path: Path, key: str, value: object) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump({"server": {key: value}}))
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert key in str(refused.value)


def test_never_disables_idle_and_age() -> None:
    server = SidecarConfig.model_validate(
        {"server": {"grpc_max_connection_idle": "never", "grpc_max_connection_age": 0}}
    ).server
    assert server.grpc_max_connection_idle == 0 and server.grpc_max_connection_age == 0
    options = dict(
        ListenerLimits(
            max_connection_idle=server.grpc_max_connection_idle,
            max_connection_age=server.grpc_max_connection_age,
        ).channel_options()
    )
    assert "grpc.max_connection_idle_ms" not in options
    assert "grpc.max_connection_age_ms" not in options
