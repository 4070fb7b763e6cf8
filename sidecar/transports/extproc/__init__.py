"""Envoy External Processing (ext_proc) hook over gRPC.

- ``processor``: the ``Processor`` interface (one method per ext_proc message) and the
  pass-through null processor;
- ``pipeline_processor``: the sidecar's processor, a thin translation to ``Pipeline``;
- ``server``: the grpc.aio server owning the stream loop, failure policy and health service.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.auth import load_tokens
from sidecar.services import Sidecar
from sidecar.transports.extproc.messages import HttpBody, HttpHeaders, ProcessingResponse
from sidecar.transports.extproc.pipeline_processor import ExtProcError, PipelineProcessor
from sidecar.transports.extproc.processor import PassThroughProcessor, Processor
from sidecar.transports.extproc.server import ExtProcServer, FailureMode, ListenerLimits

__all__ = [
    "ExtProcServer",
    "FailureMode",
    "ListenerLimits",
    "PassThroughProcessor",
    "PipelineProcessor",
    "Processor",
    "UnavailableProcessor",
    "build_server",
    "failure_mode_for",
]


def failure_mode_for(sidecar: Sidecar) -> FailureMode:
    """``auto`` fails closed when guardrail rules are configured, open for a cache only."""
    mode = sidecar.config.server.grpc_failure_mode
    if mode == "auto":
        return "closed" if sidecar.config.guardrails.rules else "open"
    return mode


class UnavailableProcessor:
    """Used while the sidecar starts or stops when failing closed: every message fails."""

    finished = False

    async def _fail(self) -> ProcessingResponse:
        raise ExtProcError("the sidecar is starting or stopping")

    def request_attributes(self, headers: dict[str, str]) -> None:
        return None

    async def request_headers(self, message: HttpHeaders) -> ProcessingResponse:
        return await self._fail()

    async def request_body(self, message: HttpBody) -> ProcessingResponse:
        return await self._fail()

    async def response_headers(self, message: HttpHeaders) -> ProcessingResponse:
        return await self._fail()

    async def response_body(self, message: HttpBody) -> ProcessingResponse:
        return await self._fail()

    async def close(self) -> None:
        return None


def build_server(sidecar: Sidecar) -> ExtProcServer:
    """The ext_proc server for a started ``Sidecar``: same pipeline, cache and metrics, the
    same bearer tokens and TLS certificate as the HTTP listener. Raises OSError when the
    certificate files cannot be read, AuthConfigError for a missing token variable."""

    failure_mode = failure_mode_for(sidecar)

    def new_processor() -> Processor:
        if sidecar.pipeline is None or not sidecar.ready:
            # Starting or stopping: fail open passes traffic on, fail closed refuses it.
            return PassThroughProcessor() if failure_mode == "open" else UnavailableProcessor()
        return PipelineProcessor(sidecar.pipeline)

    server_config = sidecar.config.server
    # Streams are refused only where there is a gRPC server to refuse them.
    sidecar.governor.refuse_streams_over(
        server_config.refuse_streams_lag_ms,
        on_stall=failure_mode == "open",
        wait_ms=server_config.refuse_streams_wait_ms,
    )
    tls = None
    if server_config.tls_cert_file:
        tls = (
            Path(server_config.tls_cert_file).read_bytes(),
            Path(server_config.tls_key_file).read_bytes(),
        )
    return ExtProcServer(
        new_processor,
        host=server_config.grpc_host,
        port=server_config.grpc_port,
        failure_mode=failure_mode,
        registry=sidecar.metrics.registry,
        tokens=load_tokens(server_config),
        tls=tls,
        limits=ListenerLimits(
            max_connections=server_config.grpc_max_connections,
            max_concurrent_streams=server_config.grpc_max_concurrent_streams,
            handshake_timeout=server_config.grpc_handshake_timeout,
            keepalive_time=server_config.grpc_keepalive_time,
            keepalive_timeout=server_config.grpc_keepalive_timeout,
            max_connection_idle=server_config.grpc_max_connection_idle,
            max_connection_age=server_config.grpc_max_connection_age,
            max_connection_age_grace=server_config.grpc_max_connection_age_grace,
        ),
        admit=sidecar.governor.admit_stream,
        admit_waited=sidecar.governor.admit_waited,
    )
