"""The sidecar's own work for an ext_proc exact hit, in process, without gRPC or Envoy.

Run: ``python -m benchmarks.profile_extproc [--requests 20000] [--profile]``. Builds a
``Sidecar`` (default config, memory store), stores answers through the ext_proc processor,
then replays exact hits as Envoy sends them: the request headers and the buffered body, each
parsed from its wire bytes, through the same stream loop the gRPC server runs
(``_ExternalProcessor.Process``), each reply serialised to bytes. Each request carries its own
``x-request-id``, as Envoy generates one per request (``--same-request-id``: one id for all,
which lets memos keyed on the whole answer hit as they never do behind Envoy). The no-op
floor's work (``benchmarks/null_extproc.py``: parse, fixed reply, serialise) is timed beside
it. With ``--profile`` the hit loop runs under pyinstrument (PyPI ``pyinstrument``) and its
call tree is printed. Prints CPU microseconds per request (process time: other jobs on a shared
machine inflate wall time much more).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from benchmarks.hook_bench import SEED_PAIRS
from benchmarks.null_extproc import GeneratorServicer
from benchmarks.stack import chat_body, openai_answer
from sidecar.config import SidecarConfig
from sidecar.services import Sidecar
from sidecar.transports.extproc import build_server
from sidecar.transports.extproc.messages import serialize_reply

CHAT = "/v1/chat/completions"
FIXED_REQUEST_ID = "7c9a3e7e-4b4f-4a55-9a8e-1b0c8d9e6f70"


def request_messages(
    question: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    request_id: str = FIXED_REQUEST_ID,
) -> tuple[bytes, bytes]:
    """The request headers (plus ``extra_headers``) and body messages Envoy sends for one chat
    request, as bytes."""
    body = orjson.dumps(chat_body(question))
    headers = [
        (":method", "POST"),
        (":path", CHAT),
        (":authority", "127.0.0.1:10000"),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("user-agent", "wrk"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", request_id),
        *extra_headers,
    ]
    head = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
            )
        )
    )
    whole = pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))
    return head.SerializeToString(), whole.SerializeToString()


def response_messages(answer: bytes) -> tuple[bytes, bytes]:
    head = pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                    base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"),
                ]
            )
        )
    )
    body = pb.ProcessingRequest(response_body=pb.HttpBody(body=answer, end_of_stream=True))
    return head.SerializeToString(), body.SerializeToString()


class _Messages:
    """The stream's incoming messages, parsed from their bytes. An iterator class like grpc's
    own (``_MessageReceiver``), not an async generator: a generator left unfinished (the
    stream ends at the immediate response) would add asyncio's finalizer work, which grpc
    does not have."""

    def __init__(self, messages: Sequence[bytes]) -> None:
        self._messages = iter(messages)

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> pb.ProcessingRequest:
        for raw in self._messages:
            return pb.ProcessingRequest.FromString(raw)
        raise StopAsyncIteration


async def one_stream(servicer: Any, messages: Sequence[bytes]) -> list[bytes]:
    # The gRPC server's own serialiser: replies the sidecar gives as bytes go as they are.
    return [serialize_reply(reply) async for reply in servicer.Process(_Messages(messages), None)]


async def run(requests: int, profile: bool, same_request_id: bool = False) -> dict[str, Any]:
    config = SidecarConfig.model_validate(
        {
            "cache": {"data_dir": ":memory:", "default_cache_key": "bench"},
            "server": {"grpc_port": 0, "log_level": "warning"},
        }
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    server = build_server(sidecar)
    # The servicer the gRPC server runs, called directly: no gRPC, no sockets.
    from sidecar.transports.extproc.server import _ExternalProcessor

    servicer = _ExternalProcessor(server._new_processor, server.failure_mode, server._metrics)
    questions = [q for q, _ in SEED_PAIRS]
    for q in questions:
        head, body = request_messages(q)
        answer = orjson.dumps(openai_answer(f"answer to {q}"))
        replies = await one_stream(servicer, [head, body, *response_messages(answer)])
        assert len(replies) == 4, "the first request must be a miss that stores"
    # One stream per request, each with its own request id (unless same_request_id).
    streams = [
        list(
            request_messages(
                questions[i % len(questions)],
                request_id=FIXED_REQUEST_ID
                if same_request_id
                else f"{i:08x}-4b4f-4a55-9a8e-1b0c8d9e6f70",
            )
        )
        for i in range(requests)
    ]
    hit = pb.ProcessingResponse.FromString((await one_stream(servicer, streams[0]))[-1])
    assert hit.HasField("immediate_response"), "not an exact hit"
    floor = GeneratorServicer()
    timings: dict[str, float] = {}
    profiler = None
    for name, target in (("floor", floor), ("sidecar", servicer)) * 2:
        if name == "sidecar" and profile and profiler is None:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0001, async_mode="disabled")
            profiler.start()
        started = time.process_time()
        for i in range(requests):
            await one_stream(target, streams[i])
        timings[name] = (time.process_time() - started) / requests * 1e6
        if profiler is not None and profiler.is_running:
            profiler.stop()
    await sidecar.close()
    if profiler is not None:
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    return {k: round(v, 1) for k, v in timings.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--same-request-id", action="store_true")
    args = parser.parse_args(argv)
    runs = [
        asyncio.run(run(args.requests, args.profile and i == 0, args.same_request_id))
        for i in range(args.repeat)
    ]
    for name in ("floor", "sidecar"):
        values = [r[name] for r in runs]
        print(f"{name}: {statistics.median(values):.1f} us per exact hit (runs: {values})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
