"""``sidecar demo``: see the sidecar work behind a real Envoy, on this machine, in a minute.

Starts a fake OpenAI-compatible provider, the sidecar and Envoy on free 127.0.0.1 ports, sends
a short scripted workload through Envoy and prints what happened to each request. Everything
started is stopped again by its own PID, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

DEFAULT_START_TIMEOUT_S = 180.0


def add_parser(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run a scripted workload through Envoy and the sidecar and print what happened",
        description=__doc__,
    )
    demo.add_argument(
        "--start-timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT_S,
        help="seconds to wait for the sidecar (it loads the embedding model) and Envoy",
    )
    demo.add_argument(
        "--no-guardrails", action="store_true", help="skip the secret-redaction rule and prompt"
    )
    demo.set_defaults(func=run)


def _guardrails_available() -> bool:
    return importlib.util.find_spec("sidecar.guard") is not None


def _shorten(text: str) -> str:
    from sidecar.demo.workload import FAKE_SECRET

    return text.replace(FAKE_SECRET, FAKE_SECRET[:8] + "…")


def run(args: argparse.Namespace) -> int:
    from sidecar.demo.envoy import (
        ExtProcListener,
        bootstrap,
        envoy_binary,
        envoy_command,
        write_bootstrap,
    )
    from sidecar.demo.processes import ManagedProcess, ProcessFailed, free_port, sidecar_command
    from sidecar.demo.upstream import FakeLLMUpstream
    from sidecar.demo.workload import SECRET_RULES, render_table, run_workload, workload

    try:
        envoy_binary()
    except FileNotFoundError as exc:
        print(f"sidecar demo: {exc}", file=sys.stderr)
        return 2
    guarded = _guardrails_available() and not args.no_guardrails
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    upstream = FakeLLMUpstream().start()
    http_port, grpc_port = free_port(), free_port()
    admin_port, listen_port = free_port(), free_port()
    # The demo sends one request at a time. Load shedding (skipped lookups while the event
    # loop lags 10 ms, a 50 ms embedder queue budget) protects a gateway under load; here it
    # would only reflect the machine's other work (a busy laptop, a CI run) and turn the
    # paraphrase's semantic hit into a miss. So the demo turns it off; docs/overload.md.
    config: dict[str, Any] = {
        "server": {
            "http_port": http_port,
            "grpc_port": grpc_port,
            "log_level": "warning",
            "shed_loop_lag_ms": 0,
            "shed_store_lag_ms": 0,
            "refuse_streams_lag_ms": 0,
            "refuse_streams_wait_ms": 0,
        },
        "cache": {"data_dir": ":memory:", "default_cache_key": "demo"},
        "embedder": {"max_queue_ms": 5000},
    }
    if guarded:
        rules = workdir / "rules.yaml"
        rules.write_text(SECRET_RULES, encoding="utf-8")
        config["guardrails"] = {"rules": [str(rules)]}
    (workdir / "sidecar.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    sidecar = ManagedProcess(
        "sidecar", sidecar_command(workdir / "sidecar.yaml"), workdir / "sidecar.log"
    )
    # Guardrails fail closed (no unchecked prompt passes); a cache alone fails open.
    listener = ExtProcListener("demo", listen_port, grpc_port, failure_mode_allow=not guarded)
    envoy_yaml = write_bootstrap(
        workdir / "envoy.yaml", bootstrap(admin_port, upstream.port, [listener])
    )
    envoy = ManagedProcess("envoy", envoy_command(envoy_yaml), workdir / "envoy.log")
    try:
        print(f"fake provider  {upstream.url}")
        print(f"sidecar        gRPC 127.0.0.1:{grpc_port}, HTTP 127.0.0.1:{http_port}")
        print(f"envoy          http://127.0.0.1:{listen_port}  (admin {admin_port})")
        print("starting (the sidecar loads its embedding model)...", flush=True)
        sidecar.start()
        envoy.start()
        sidecar.wait_ready(f"http://127.0.0.1:{http_port}/readyz", args.start_timeout)
        envoy.wait_ready(f"http://127.0.0.1:{admin_port}/ready", args.start_timeout)
        steps = workload(with_secret=guarded)
        outcomes = run_workload(f"http://127.0.0.1:{listen_port}", upstream, steps)
    except ProcessFailed as exc:
        print(f"sidecar demo: {exc}\n(logs in {workdir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        envoy.stop()
        sidecar.stop()
        upstream.stop()
    print()
    print(render_table(outcomes))
    print()
    print("requests:")
    for i, outcome in enumerate(outcomes, 1):
        print(f"  {i}. {_shorten(outcome.step.prompt)}")
    if not guarded:
        print("\n(guardrails off: the secret-redaction step was skipped)")
    print(f"\nconfigs and logs: {workdir}")
    return 0
