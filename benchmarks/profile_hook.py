"""Profile the cache-hit path of the HTTP hook with cProfile.

Run: ``python -m benchmarks.profile_hook [--scenario exact|semantic] [--backend onnx
--quantize] [--seconds 5] [--top 40]``. The sidecar (HTTP hook, embedded stores) runs in this
process under cProfile (the main thread: the event loop); the load generator runs in its own
process and sends exact-hit request hooks on 8 connections, or semantic-hit ones on one.
Prints the functions with the most own time and cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import orjson
import uvicorn

from benchmarks.hook_bench import seed_cache
from benchmarks.stack import hook_request_envelope, raw_request
from sidecar.config import SidecarConfig
from sidecar.demo.processes import free_port
from sidecar.services import Sidecar
from sidecar.transports.http import create_app


async def _serve_and_load(
    seconds: float, profile: cProfile.Profile, scenario: str, embedder: dict[str, object]
) -> dict[str, object]:
    port = free_port()
    config = SidecarConfig.model_validate(
        {
            "cache": {"data_dir": ":memory:", "default_cache_key": "bench"},
            "server": {"http_port": port, "grpc_enabled": False, "log_level": "warning"},
            "embedder": embedder,
        }
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(sidecar, manage_lifecycle=False),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)  # uvicorn exposes no readiness event
    base = f"http://127.0.0.1:{port}"
    exact, semantic = await asyncio.to_thread(seed_cache, base)
    questions = exact if scenario == "exact" else semantic
    workdir = Path(tempfile.mkdtemp(prefix="profile-hook-"))
    spec = {
        "port": port,
        "concurrency": 8 if scenario == "exact" else 1,
        "duration": seconds,
        "warmup": 0.5,
        "sequences": [
            [raw_request("POST", "/v1/hooks/request", hook_request_envelope(q))] for q in questions
        ],
        "count": {"hit": f'"hit-{scenario}"'},
    }
    spec_path = workdir / "spec.json"
    spec_path.write_bytes(orjson.dumps(spec))
    profile.enable()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        str(spec_path),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    profile.disable()
    result = orjson.loads(out)
    server.should_exit = True
    await serving
    await sidecar.close()
    return {"rps": result["rps"], "counts": result["counts"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--scenario", choices=("exact", "semantic"), default="exact")
    parser.add_argument(
        "--backend", choices=("sentence-transformers", "onnx"), default="sentence-transformers"
    )
    parser.add_argument("--quantize", action="store_true", help="ONNX int8")
    args = parser.parse_args(argv)
    profile = cProfile.Profile()
    embedder = {"backend": args.backend, "onnx_quantize": args.quantize}
    summary = asyncio.run(_serve_and_load(args.seconds, profile, args.scenario, embedder))
    print(f"{args.scenario} hits under the profiler: {summary}")
    for key in ("tottime", "cumulative"):
        buffer = io.StringIO()
        pstats.Stats(profile, stream=buffer).sort_stats(key).print_stats(args.top)
        print(buffer.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
