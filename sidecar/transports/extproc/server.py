"""The gRPC server: ``envoy.service.ext_proc.v3.ExternalProcessor/Process`` plus the standard
``grpc.health.v1.Health`` service, on grpc.aio in the sidecar's event loop.

One ``Process`` stream is one HTTP request. The loop hands each message to the stream's
processor and applies the failure policy when the processor raises:

- ``open``: the message is answered CONTINUE unmodified and the rest of the stream goes
  through the pass-through processor, so the sidecar's own error never alters an answer;
- ``closed``: the stream ends with gRPC INTERNAL, and Envoy (``failure_mode_allow: false``)
  answers 500 instead of letting an unchecked request or answer through.

Under overload (``admit`` says no, see ``sidecar/overload.py``) a new stream is refused before
its first message is read, by the same policy: fail open closes it cleanly (Envoy forwards the
request unprocessed, uncached), fail closed ends it with RESOURCE_EXHAUSTED (Envoy's
``failure_mode_allow`` decides). Either way Envoy learns at once instead of waiting its
message timeout while the stream queues in the transport.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry, Counter, Gauge

from sidecar.auth import TokenSet
from sidecar.transports.extproc.messages import (
    REQUEST_BODY,
    REQUEST_HEADERS,
    RESPONSE_BODY,
    RESPONSE_HEADERS,
    ProcessingRequest,
    ProcessingResponse,
    Reply,
    continue_for,
    read_attributes,
    request_time,
    serialize_reply,
)
from sidecar.transports.extproc.processor import PassThroughProcessor, Processor

log = logging.getLogger("sidecar.extproc")

FailureMode = Literal["open", "closed"]
SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


class ExtProcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.streams = Gauge(
            "sidecar_extproc_streams", "ext_proc streams in progress", registry=registry
        )
        # Counted in a plain int and read at scrape time: a Gauge's inc() and dec() each take
        # a lock, two per request on the exact-hit path (only the event loop thread counts).
        self.open_streams = 0
        self.streams.set_function(lambda: self.open_streams)
        self.errors = Counter(
            "sidecar_extproc_errors",
            "Sidecar failures while answering an ext_proc message, by message and fail mode",
            ["message", "failure_mode"],
            registry=registry,
        )
        self.unauthenticated = Counter(
            "sidecar_extproc_unauthenticated",
            "ext_proc streams refused for a missing or wrong bearer token",
            registry=registry,
        )


def _dispatch(processor: Processor, kind: str, message: ProcessingRequest) -> Awaitable[Reply]:
    """The processor's handler call for one message, for the caller to await: a plain
    function returning the handler's coroutine, so a message costs no coroutine of our own
    (an exact hit's two messages are the hot path)."""
    if kind == REQUEST_HEADERS:
        return processor.request_headers(message.request_headers)
    if message.attributes and (headers := read_attributes(message)) is not None:
        processor.request_attributes(headers)  # headers skipped: they came as attributes
    if kind == REQUEST_BODY:
        return processor.request_body(message.request_body)
    if kind == RESPONSE_HEADERS:
        return processor.response_headers(message.response_headers)
    if kind == RESPONSE_BODY:
        return processor.response_body(message.response_body)
    return _continued(kind)  # trailers: nothing to do


async def _continued(kind: str) -> Reply:
    return continue_for(kind)


class _ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(
        self,
        new_processor: Callable[[], Processor],
        failure_mode: FailureMode,
        metrics: ExtProcMetrics | None,
        admit: Callable[[], bool] | None = None,
        admit_waited: Callable[[float], bool] | None = None,
    ) -> None:
        self._new_processor = new_processor
        self._failure_mode = failure_mode
        self._metrics = metrics
        self._admit = admit
        self._admit_waited = admit_waited

    def _waited_too_long(self, kind: str, message: ProcessingRequest) -> bool:
        """Whether a stream's first message says it queued too long in the transport (Envoy's
        ``request.time``, when configured). A large body sent as the first message (headers
        as attributes) also carries its upload time, which is not load: not measured."""
        if self._admit_waited is None or not message.attributes:
            return False
        if kind == REQUEST_BODY and len(message.request_body.body) > WAIT_MAX_BODY:
            return False
        received = request_time(message)
        if received is None:
            return False
        return not self._admit_waited(max(0.0, time.time() - received))

    async def Process(  # noqa: N802 - the gRPC method name
        self,
        request_iterator: AsyncIterator[ProcessingRequest],
        context: grpc.aio.ServicerContext[ProcessingRequest, ProcessingResponse],
    ) -> AsyncIterator[Reply]:
        if self._admit is not None and not self._admit():
            if self._failure_mode == "closed":
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, REFUSED)
            return  # a clean close: Envoy goes on without the sidecar
        processor = self._new_processor()
        if self._metrics is not None:
            self._metrics.open_streams += 1
        first = True
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("request")
                if kind is None:
                    continue
                if first:
                    first = False
                    if self._waited_too_long(kind, message):
                        # Refused like a stream over the lag mark (the governor refuses only
                        # failing open): a clean close, Envoy goes on without the sidecar.
                        return
                try:
                    reply = await _dispatch(processor, kind, message)
                except Exception as exc:  # the failure policy covers every sidecar fault
                    if self._metrics is not None:
                        self._metrics.errors.labels(kind, self._failure_mode).inc()
                    if self._failure_mode == "closed":
                        log.error("ext_proc %s failed, failing closed: %r", kind, exc)
                        await context.abort(
                            grpc.StatusCode.INTERNAL,
                            f"sidecar failed on {kind}: {type(exc).__name__}",
                        )
                        return
                    log.exception("ext_proc %s failed, passing the request through", kind)
                    processor = PassThroughProcessor()
                    reply = continue_for(kind)
                yield reply
                if processor.finished or (
                    not isinstance(reply, bytes) and reply.HasField("immediate_response")
                ):
                    # Envoy answered the client, or the sidecar needs nothing more (a shed
                    # miss): a stream closed cleanly lets Envoy go on without it. A reply in
                    # bytes is not parsed: an immediate one comes with ``finished``.
                    return
        finally:
            try:
                await processor.close()
            except Exception:  # closing must not mask how the stream ended
                log.exception("ext_proc processor failed to close")
            if self._metrics is not None:
                self._metrics.open_streams -= 1


def process_handler(servicer: _ExternalProcessor) -> grpc.GenericRpcHandler:
    """The ``Process`` method as the generated ``add_ExternalProcessorServicer_to_server``
    registers it, but with ``serialize_reply`` as its response serialiser: a reply the
    processor gave already serialised (an exact hit's, the CONTINUE to request headers) is
    sent as its bytes instead of being built and serialised per request."""
    method = grpc.stream_stream_rpc_method_handler(
        servicer.Process,
        request_deserializer=ProcessingRequest.FromString,
        response_serializer=serialize_reply,
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Process": method})


HEALTH_PREFIX = "/grpc.health.v1.Health/"
#: a first message with a body over this (one message per request) carries its upload time
WAIT_MAX_BODY = 16 * 1024
REFUSED = "sidecar overloaded: stream refused (server.refuse_streams_lag_ms)"


async def _unauthenticated(
    request_iterator: AsyncIterator[ProcessingRequest],
    context: grpc.aio.ServicerContext[ProcessingRequest, ProcessingResponse],
) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "missing or wrong bearer token: send metadata 'authorization: Bearer <token>' "
        "(Envoy: grpc_service.initial_metadata)",
    )


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Every call but the health service needs ``authorization: Bearer <token>`` metadata.
    Checked once per stream, when Envoy opens it, before any message is read."""

    def __init__(self, tokens: TokenSet, metrics: ExtProcMetrics | None) -> None:
        self._tokens = tokens
        self._metrics = metrics
        self._deny = grpc.stream_stream_rpc_method_handler(_unauthenticated)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(HEALTH_PREFIX):
            return await continuation(handler_call_details)
        authorization = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else None
                break
        if self._tokens.accepts(authorization):
            return await continuation(handler_call_details)
        if self._metrics is not None:
            self._metrics.unauthenticated.inc()
        return self._deny


@dataclass(frozen=True)
class ListenerLimits:
    """Bounds on the gRPC listener (``server.grpc_*``); durations in seconds, 0: never."""

    max_connections: int = 1024
    max_concurrent_streams: int = 10_000
    handshake_timeout: float = 10.0
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    max_connection_idle: float = 300.0
    max_connection_age: float = 0.0
    max_connection_age_grace: float = 30.0

    def channel_options(self) -> list[tuple[str, int]]:
        """grpc core channel arguments (grpc_types.h) enforcing these limits."""

        def ms(seconds: float) -> int:
            return max(1, round(seconds * 1000))

        # The stream cap is grpc's maximum_concurrent_rpcs (server-wide, refused at once), not
        # HTTP/2's per-connection SETTINGS_MAX_CONCURRENT_STREAMS (left unlimited): a client
        # such as Envoy holding one connection would otherwise queue streams beyond it on its
        # side, silently, until its own message timeout.
        options = [
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.server_handshake_timeout_ms", ms(self.handshake_timeout)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout)),
            # Without this the server pings only connections with streams in progress, and a
            # ping left unanswered closes the connection only after grpc's own 1-minute ping
            # timeout: a dead peer with no stream would never be noticed.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.ping_timeout_ms", ms(self.keepalive_timeout)),
        ]
        if self.max_connection_idle > 0:
            options.append(("grpc.max_connection_idle_ms", ms(self.max_connection_idle)))
        if self.max_connection_age > 0:
            options.append(("grpc.max_connection_age_ms", ms(self.max_connection_age)))
            options.append(("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace)))
        return options


class ExtProcServer:
    """Owns the grpc.aio server. ``start()`` binds and returns the port actually bound."""

    def __init__(
        self,
        new_processor: Callable[[], Processor],
        host: str = "127.0.0.1",
        port: int = 50051,
        failure_mode: FailureMode = "open",
        registry: CollectorRegistry | None = None,
        tokens: TokenSet | None = None,
        tls: tuple[bytes, bytes] | None = None,
        limits: ListenerLimits | None = None,
        admit: Callable[[], bool] | None = None,
        admit_waited: Callable[[float], bool] | None = None,
    ) -> None:
        """``tokens``: the bearer tokens streams must carry (None: no check); ``tls``: (PEM
        certificate chain, PEM private key) to serve gRPC over TLS; ``limits``: connection
        and stream bounds (the defaults of ``server.grpc_*`` when None); ``admit``: asked
        once per new stream, False refuses it (overload; None: every stream is served);
        ``admit_waited``: asked with the seconds a stream waited in the transport, when its
        first message carries Envoy's ``request.time``; False refuses it the same way."""
        self._new_processor = new_processor
        self._admit = admit
        self._admit_waited = admit_waited
        self._limits = limits or ListenerLimits()
        self._tokens = tokens
        self._tls = tls
        self._address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self.failure_mode: FailureMode = failure_mode
        self._metrics = ExtProcMetrics(registry) if registry is not None else None
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self.port = 0

    async def start(self) -> int:
        interceptors = (
            [TokenInterceptor(self._tokens, self._metrics)] if self._tokens is not None else []
        )
        server = grpc.aio.server(
            interceptors=interceptors,
            # Beyond it grpc refuses a new stream at once with RESOURCE_EXHAUSTED.
            maximum_concurrent_rpcs=self._limits.max_concurrent_streams,
            options=[
                *self._limits.channel_options(),
                # A second sidecar on the same port must fail to start, not share the traffic.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        servicer = _ExternalProcessor(
            self._new_processor,
            self.failure_mode,
            self._metrics,
            self._admit,
            self._admit_waited,
        )
        server.add_generic_rpc_handlers((process_handler(servicer),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if self._tls is None:
            self.port = server.add_insecure_port(self._address)
        else:
            chain, key = self._tls
            credentials = grpc.ssl_server_credentials([(key, chain)])
            self.port = server.add_secure_port(self._address, credentials)
        if self.port == 0:
            raise OSError(f"cannot bind the gRPC server to {self._address}")
        await server.start()
        self._server = server
        serving = health_pb2.HealthCheckResponse.SERVING
        await self._health.set("", serving)
        await self._health.set(SERVICE_NAME, serving)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None
