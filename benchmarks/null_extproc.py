"""The cheapest possible ext_proc server on grpc.aio, as a floor for the proxy benchmark.

Run: ``python -m benchmarks.null_extproc PORT [generator|readwrite|split]``. It answers
request headers with CONTINUE and the request body with a fixed 200 immediate response: the
gRPC work of an exact cache hit without any of the sidecar's own work. ``generator`` serves
the stream as an async generator (as the sidecar does); ``readwrite`` uses ``context.read()``
and ``context.write()``. ``split`` (the overload floor, ``benchmarks/overload_floor.py``)
answers only bodies holding ``HIT_MARK`` at once; any other body gets CONTINUE and the stream
ends, so Envoy sends the request on to the provider: a shed miss's gRPC work.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from sidecar.server import loop_factory

_BODY = b'{"id":"chatcmpl-floor","object":"chat.completion","choices":[]}'
_CONTINUE_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
_ANSWER = pb.ProcessingResponse(
    immediate_response=pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=200),
        headers=pb.HeaderMutation(
            set_headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="content-type", raw_value=b"application/json")
                )
            ]
        ),
        body=_BODY,
    )
)


#: the text that makes a request body a "hit" for the ``split`` style
HIT_MARK = b"[floor-hit]"
_CONTINUE_BODY = pb.ProcessingResponse(request_body=pb.BodyResponse())


def _reply(message: pb.ProcessingRequest) -> pb.ProcessingResponse | None:
    kind = message.WhichOneof("request")
    if kind == "request_headers":
        return _CONTINUE_HEADERS
    if kind == "request_body":
        return _ANSWER
    return None


class GeneratorServicer(pb_grpc.ExternalProcessorServicer):
    async def Process(  # noqa: N802 - the gRPC method name
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: Any
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for message in request_iterator:
            reply = _reply(message)
            if reply is None:
                continue
            yield reply
            if reply is _ANSWER:
                return


class SplitServicer(pb_grpc.ExternalProcessorServicer):
    async def Process(  # noqa: N802 - the gRPC method name
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: Any
    ) -> AsyncIterator[pb.ProcessingResponse]:
        async for message in request_iterator:
            kind = message.WhichOneof("request")
            if kind == "request_headers":
                yield _CONTINUE_HEADERS
            elif kind == "request_body":
                # the stream ends with either reply: Envoy asks nothing about the answer
                yield _ANSWER if HIT_MARK in message.request_body.body else _CONTINUE_BODY
                return


class ReadWriteServicer(pb_grpc.ExternalProcessorServicer):
    async def Process(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            reply = _reply(message)
            if reply is None:
                continue
            await context.write(reply)
            if reply is _ANSWER:
                return


async def serve(port: int, style: str) -> None:
    server = grpc.aio.server()
    servicers = {"readwrite": ReadWriteServicer, "split": SplitServicer}
    servicer = servicers.get(style, GeneratorServicer)()
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> int:
    port = int(sys.argv[1])
    style = sys.argv[2] if len(sys.argv) > 2 else "generator"
    # The same event loop the sidecar runs on by default (server.event_loop: auto).
    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        runner.run(serve(port, style))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
