"""The sidecar's own work for an ext_proc guarded miss + store in a new scope, in process,
without gRPC or Envoy (issue 16: "at most 3 ms added median").

Run: ``python -m benchmarks.profile_miss [--requests 2000] [--repeat 3] [--profile]
[--no-settle] [--json PATH]``. Builds a ``Sidecar`` like ``benchmarks/miss_bench.py``'s
``guarded`` one (memory store, default embedder, the default input guardrails of
``benchmarks/data/default_input_rules.yaml``), then replays misses as Envoy sends them: request
headers, the buffered 1 KB request body, response headers and the buffered answer, each parsed
from its wire bytes, through the same stream loop the gRPC server runs
(``_ExternalProcessor.Process``), each reply serialised to bytes. Every request names a
partition of its own (``x-bf-cache-key``), so its lookup has nothing to compare with and its
vector is deferred (computed in the embedder's background lane, attached after the answer).

Prints CPU microseconds per miss of the event-loop thread (``time.thread_time``: the critical
path; other jobs on a shared machine inflate wall time much more), split

* by message (the time from one message to the next, reply serialisation included);
* the loop's work left for its next turn after the last reply (over gRPC the answer is on its
  way by then: e.g. handing an in-memory store's write to its thread);
* by pipeline stage (``sidecar.stages``: parse, input rules, lookup, output rules, store), its
  clock swapped for the thread's CPU clock. Every other miss records stages (each mark reads
  that clock, a few microseconds); the totals and the split by message come from the others;

and the CPU of the other threads per miss (the deferred embedding, which runs after the
answer). Between requests the backlog is allowed to settle, outside the timed span, so each
miss is measured alone, as at 1 connection on a quiet machine (each miss then follows the
model's run: its caches are cold, as when the model embeds beside it in ``miss_bench``).
``--no-settle`` leaves the vectors to the background lane, which a loop this busy barely lets
start: the same misses back to back with warm caches and an idle model, for comparison. With
``--profile`` the first run's misses run under pyinstrument (PyPI ``pyinstrument``) and its
call tree is printed (wall-clock samples of the loop thread: the embedding thread's GIL use
shows in them).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

import sidecar.stages
from benchmarks.hook_bench import unique_questions
from benchmarks.profile_extproc import request_messages as exact_hit_messages
from benchmarks.profile_extproc import response_messages
from benchmarks.proxy_bench import RULES, kilobyte_prompts
from benchmarks.report import machine, write_result
from benchmarks.stack import openai_answer
from sidecar.config import SidecarConfig
from sidecar.context import RequestContext
from sidecar.services import Sidecar
from sidecar.transports.extproc import build_server
from sidecar.transports.extproc.messages import serialize_reply

CHAT = "/v1/chat/completions"
MESSAGES = ("request_headers", "request_body", "response_headers", "response_body")


def request_messages(prompt: str, partition: str) -> tuple[bytes, bytes]:
    """Request headers (naming the partition, a new request id) and the buffered body."""
    return exact_hit_messages(prompt, [("x-bf-cache-key", partition)], str(uuid.uuid4()))


class _TimedMessages:
    """The stream's messages parsed from bytes, noting the loop thread's CPU clock as each is
    taken: the span between two takes is the previous message's processing."""

    def __init__(self, messages: Sequence[bytes]) -> None:
        self._messages = iter(messages)
        self.marks: list[int] = []

    def __aiter__(self) -> _TimedMessages:
        return self

    async def __anext__(self) -> pb.ProcessingRequest:
        self.marks.append(time.thread_time_ns())
        for raw in self._messages:
            return pb.ProcessingRequest.FromString(raw)
        raise StopAsyncIteration


class _StageCollector:
    """A request observer that keeps each finished request's stage log."""

    needs_stages = True

    def __init__(self) -> None:
        self.logs: list[sidecar.stages.StageLog] = []

    def finish(self, ctx: RequestContext) -> None:
        if ctx.stages is not None:
            self.logs.append(ctx.stages)

    def close(self) -> None:
        return None


class _ThreadClock:
    """``sidecar.stages`` reads ``time.perf_counter_ns``; for this run it reads the thread's
    CPU clock instead, so stage spans are loop-thread CPU (everything else passes through)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def perf_counter_ns() -> int:
        return time.thread_time_ns()


async def _one(servicer: Any, messages: Sequence[bytes]) -> tuple[list[bytes], list[int]]:
    timed = _TimedMessages(messages)
    replies = [serialize_reply(r) async for r in servicer.Process(timed, None)]
    timed.marks.append(time.thread_time_ns())
    return replies, timed.marks


def _config() -> SidecarConfig:
    return SidecarConfig.model_validate(
        {
            "cache": {"data_dir": ":memory:", "default_cache_key": "bench", "ttl": "1h"},
            "server": {"grpc_port": 0, "log_level": "warning"},
            "guardrails": {"rules": [str(RULES)], "reload_interval": 0},
        }
    )


async def run(requests: int, profile: bool, settle: bool = True) -> dict[str, Any]:
    side = Sidecar(_config())
    await side.start()
    pipeline = side.pipeline
    assert pipeline is not None
    collector = _StageCollector()
    pipeline.observers = (*pipeline.observers, collector)
    server = build_server(side)
    from sidecar.transports.extproc.server import _ExternalProcessor

    servicer = _ExternalProcessor(server._new_processor, server.failure_mode, server._metrics)
    backlog = side.cache.backlog if side.cache is not None else None
    tag = uuid.uuid4().hex[:6]
    warm = 50
    prompts = kilobyte_prompts(unique_questions(requests + warm), requests + warm)
    streams = []
    for i, prompt in enumerate(prompts):
        head, body = request_messages(prompt, f"new-{tag}-{i}")
        answer = orjson.dumps(openai_answer(f"answer {i} to: {prompt[:200]}"))
        streams.append([head, body, *response_messages(answer)])
    per_message: list[list[int]] = [[] for _ in MESSAGES]
    loop_cpu: list[int] = []
    after: list[int] = []
    shed = 0
    other_cpu = 0.0
    profiler = None
    original_clock = sidecar.stages.time
    sidecar.stages.time = _ThreadClock()  # type: ignore[assignment]
    try:
        for i, stream in enumerate(streams):
            if i == warm:
                collector.logs.clear()
                if profile:
                    from pyinstrument import Profiler

                    profiler = Profiler(interval=0.0001, async_mode="disabled")
                    profiler.start()
            # Stage marks cost a CPU-clock read each: every other miss records them (the
            # stage split), the others give the totals and the split by message.
            staged = i % 2 == 1
            pipeline._record_stages = staged
            process_before = time.process_time()
            replies, marks = await _one(servicer, stream)
            # Work left for the loop's next turn (the answer has gone out by then over gRPC).
            await asyncio.sleep(0)
            marks.append(time.thread_time_ns())
            last = pb.ProcessingResponse.FromString(replies[-1])
            if len(replies) == 2 and last.HasField("request_body"):
                # The load governor shed the store (a busy machine's loop lag): the stream
                # ends at the request body. Counted, not timed.
                shed += 1
                continue
            if len(replies) != 4 or not last.HasField("response_body"):
                raise RuntimeError(f"miss {i} was not answered and stored: {last}")
            if backlog is not None and settle:  # the deferred vector (not timed)
                if profiler is not None:
                    profiler.stop()
                await backlog.settled()
                if profiler is not None:
                    profiler.start()
            if i < warm or staged:
                continue
            # marks: each message taken, the stream's end, the loop's next turn
            spans = [b - a for a, b in zip(marks, marks[1:], strict=False)]
            for k in range(len(MESSAGES)):
                per_message[k].append(spans[k])
            after.append(spans[-1])
            loop_cpu.append(marks[-2] - marks[0])
            other_cpu += time.process_time() - process_before - (marks[-1] - marks[0]) / 1e9
    finally:
        sidecar.stages.time = original_clock
        if profiler is not None and profiler.is_running:
            profiler.stop()
    counters = {
        "stored": side.metrics.stores._value.get(),
        "vectors_added_late": side.metrics.vectors_added_late._value.get(),
    }
    await side.close()
    if profiler is not None:
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    stages: dict[str, list[int]] = {}
    for log_ in collector.logs:
        seen: dict[str, int] = {}
        for s in log_.stages:
            seen[s.name] = seen.get(s.name, 0) + (s.end_ns - s.start_ns)
        for name, ns in seen.items():
            stages.setdefault(name, []).append(ns)
    n = len(loop_cpu)
    return {
        "loop_cpu_us_mean": round(sum(loop_cpu) / n / 1e3, 1),
        "loop_cpu_us_median": round(statistics.median(loop_cpu) / 1e3, 1),
        "by_message_us": {
            m: round(sum(v) / n / 1e3, 1) for m, v in zip(MESSAGES, per_message, strict=True)
        },
        "after_answer_us": round(sum(after) / n / 1e3, 1),
        "by_stage_us": {k: round(sum(v) / len(collector.logs) / 1e3, 1) for k, v in stages.items()},
        "other_threads_cpu_us": round(other_cpu / n * 1e6, 1),
        "counters": counters,
        "shed_by_the_load_governor": shed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="do not wait for each deferred vector: misses back to back with warm caches "
        "(the background lane barely starts)",
    )
    parser.add_argument("--json", help="result file (default benchmarks/results/profile_miss.json)")
    args = parser.parse_args(argv)
    runs = [
        asyncio.run(run(args.requests, args.profile and i == 0, not args.no_settle))
        for i in range(args.repeat)
    ]
    for r in runs:
        print(orjson.dumps(r).decode())
    mean = statistics.median(r["loop_cpu_us_mean"] for r in runs)
    print(f"loop-thread CPU per new-scope guarded miss + store: {mean:.1f} us (median of runs)")
    for key in ("by_message_us", "by_stage_us"):
        names = runs[0][key]
        cells = ", ".join(
            f"{k} {statistics.median(r[key].get(k, 0.0) for r in runs):.1f}" for k in names
        )
        print(f"  {key}: {cells}")
    later = statistics.median(r["after_answer_us"] for r in runs)
    print(f"  loop work left for after the answer: {later:.1f} us per miss")
    other = statistics.median(r["other_threads_cpu_us"] for r in runs)
    print(f"  other threads (deferred embedding): {other:.1f} us per miss")
    result = {"benchmark": "profile_miss", "machine": machine(), "runs": runs}
    path = write_result("profile_miss", result, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
