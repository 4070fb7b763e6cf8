"""``sidecar`` command line: serve, check-config, and the tools other modules register."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from sidecar.config import ConfigError, SidecarConfig, load_config

log = logging.getLogger("sidecar")

# Sub-command groups living next to the code they drive: "module" exposing
# add_parser(subparsers) and run(args) -> int.
_PLUGIN_COMMANDS: tuple[str, ...] = (
    "sidecar.demo",  # sidecar demo
    "sidecar.cache.eval_cli",  # sidecar cache eval | calibrate
    "guardrails.secrets.cli",  # sidecar secrets scan
    "guardrails.cli",  # sidecar audit verify
    "benchmarks.cli",  # sidecar bench
    "embedders.cli",  # sidecar embedder prepare
)


def _load(path: str | None) -> SidecarConfig:
    return load_config(path)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 2
    if args.http_port is not None:
        config.server.http_port = args.http_port
    if args.grpc_port is not None:
        config.server.grpc_port = args.grpc_port
    if args.host is not None:
        config.server.http_host = args.host
        config.server.grpc_host = args.host
    if args.insecure_no_auth:
        config.server.allow_insecure = True
    if args.rules:
        config.guardrails.rules = [*config.guardrails.rules, *args.rules]
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from sidecar.server import main_loop

    return main_loop(config)


def _check_config(args: argparse.Namespace) -> int:
    errors: list[str] = []
    config: SidecarConfig | None = None
    try:
        config = _load(args.config)
    except ConfigError as exc:
        errors.extend(exc.errors)
    rule_files = list(args.rules or [])
    skipped_pending: list[str] = []
    if config is not None:
        rule_files = [*config.guardrails.rules, *rule_files]
        from sidecar.pending import pending_config_errors

        pending_errors = pending_config_errors(config)
        if config.pricing.file:
            from sidecar.pricing import PricingError, load_prices

            try:
                load_prices(config.pricing.file)
            except PricingError as exc:
                errors.append(str(exc))
        key_env = config.server.pending_key_env
        if args.offline and pending_errors and not os.environ.get(key_env):
            # Like api_key_env: --offline skips only the presence of a secret from the
            # environment; a key that is set but malformed is still an error.
            skipped_pending = [f"server.pending_key_env ({key_env}) not set"]
        else:
            errors.extend(pending_errors)
    skipped: list[str] = []
    if rule_files:
        if args.offline:
            from guardrails.secret_env import offline_secrets

            with offline_secrets() as skipped:
                errors.extend(_rule_errors(rule_files))
        else:
            errors.extend(_rule_errors(rule_files))
    for item in [*skipped_pending, *skipped]:
        print(f"skipped (--offline): {item}", file=sys.stderr)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    print(
        "configuration OK"
        + (f" ({len(rule_files)} rule file(s))" if rule_files else "")
        + (f"; {len(skipped)} secret(s) not checked (--offline)" if skipped else "")
    )
    return 0


def _rule_errors(paths: list[str]) -> list[str]:
    try:
        rules = importlib.import_module("guardrails.rules")
    except ImportError as exc:
        return [f"rule files given but the rule engine is unavailable: {exc}"]
    return [str(e) for e in rules.validate_rule_files(paths)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar", description="Semantic cache and guardrails for LLM traffic"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP hook (and the gRPC ext_proc server)")
    serve.add_argument("--config", help="YAML configuration file")
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--grpc-port", type=int)
    serve.add_argument("--host", help="bind address for both servers (default 127.0.0.1)")
    serve.add_argument("--rules", action="append", help="guardrail rule file (repeatable)")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="listen beyond loopback without a token (server.allow_insecure); logged as a warning",
    )
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate configuration and rule files")
    check.add_argument("--config", help="YAML configuration file")
    check.add_argument("--rules", action="append", help="guardrail rule file (repeatable)")
    check.add_argument(
        "--offline",
        action="store_true",
        help="validate everything but the presence of the secrets rules read from environment "
        "variables (api_key_env); says which were skipped",
    )
    check.set_defaults(func=_check_config)

    for module_name in _PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise  # a real import error inside the module must surface
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
