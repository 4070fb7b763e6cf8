"""The per-request processor interface: one method per ext_proc message Envoy sends.

A processor instance lives for one HTTP request (one ``Process`` stream) and may keep state
between its calls; ``close`` is called once when the stream ends, however it ends. The server
owns the stream loop and the failure policy; a processor only turns a message into a reply.
"""

from __future__ import annotations

from typing import Protocol

from sidecar.transports.extproc.messages import (
    REQUEST_BODY,
    REQUEST_HEADERS,
    RESPONSE_BODY,
    RESPONSE_HEADERS,
    HttpBody,
    HttpHeaders,
    ProcessingResponse,
    Reply,
    continue_for,
)


class Processor(Protocol):
    #: nothing more to do on this stream: the server ends it after the last reply, and Envoy
    #: goes on without the sidecar (no response messages). Set with every immediate response
    #: given as bytes (``Reply``): the server does not parse a reply to see what it is.
    finished: bool

    def request_attributes(self, headers: dict[str, str]) -> None:
        """The request's headers as Envoy attributes, given before the first message that
        carries them when Envoy skips the headers message (request_header_mode: SKIP)."""

    async def request_headers(self, message: HttpHeaders) -> Reply: ...

    async def request_body(self, message: HttpBody) -> Reply: ...

    async def response_headers(self, message: HttpHeaders) -> Reply: ...

    async def response_body(self, message: HttpBody) -> Reply: ...

    async def close(self) -> None:
        """The stream ended (answered, cancelled by Envoy, or failed): release what is held."""


class PassThroughProcessor:
    """The null processor: every message continues unchanged.

    Used where the sidecar has nothing to do, and for the rest of a stream after the sidecar
    failed on it (fail open), so a half-processed request is never altered further.
    """

    finished = False

    def request_attributes(self, headers: dict[str, str]) -> None:
        return None

    async def request_headers(self, message: HttpHeaders) -> ProcessingResponse:
        return continue_for(REQUEST_HEADERS)

    async def request_body(self, message: HttpBody) -> ProcessingResponse:
        return continue_for(REQUEST_BODY)

    async def response_headers(self, message: HttpHeaders) -> ProcessingResponse:
        return continue_for(RESPONSE_HEADERS)

    async def response_body(self, message: HttpBody) -> ProcessingResponse:
        return continue_for(RESPONSE_BODY)

    async def close(self) -> None:
        return None
