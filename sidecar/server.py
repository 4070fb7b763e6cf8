"""Run the servers of ``sidecar serve`` in one event loop: the HTTP hook (uvicorn) and the
Envoy ext_proc gRPC server, over one ``Sidecar`` (same pipeline, cache and metrics)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import uvicorn

from embedders import EmbedderError
from guardrails.rules import RuleFileError
from sidecar.cache.match.head import MatchHeadError
from sidecar.cache.match.pair_model import PairModelError
from sidecar.cache.match.words import WordListError
from sidecar.cache.stores.backends import BackendConfigError
from sidecar.config import SidecarConfig
from sidecar.services import Sidecar
from sidecar.transports.http import create_app

log = logging.getLogger("sidecar")


async def run_server(config: SidecarConfig) -> int:
    try:
        sidecar = Sidecar(config)
    except RuleFileError as exc:
        log.error("start-up failed: invalid rule files:\n%s", exc)
        return 2
    try:
        await sidecar.start()
    except (
        EmbedderError,
        BackendConfigError,
        MatchHeadError,
        PairModelError,
        WordListError,
        OSError,
    ) as exc:
        log.error("start-up failed: %s", exc)
        await sidecar.close()
        return 2
    # uvloop's loop class lives in module "uvloop", asyncio's in "asyncio.unix_events"
    loop_module = type(asyncio.get_running_loop()).__module__
    sidecar.extra_status["event_loop"] = loop_module.split(".")[0]
    grpc_server = None
    if config.server.grpc_enabled:
        # Imported here so the HTTP hook runs even where the gRPC stubs are not installed.
        from sidecar.transports.extproc import build_server

        grpc_server = build_server(sidecar)
        try:
            port = await grpc_server.start()
        except (OSError, RuntimeError) as exc:
            log.error("start-up failed: gRPC ext_proc server: %s", exc)
            await sidecar.close()
            return 2
        sidecar.extra_status["grpc"] = {
            "address": f"{config.server.grpc_host}:{port}",
            "failure_mode": grpc_server.failure_mode,
        }
        log.info(
            "ext_proc gRPC server on %s:%d (fail %s)",
            config.server.grpc_host,
            port,
            grpc_server.failure_mode,
        )
    if sidecar.rules is not None:
        # kill -HUP reloads rule files; a bad file keeps the previous rules (see /readyz).
        sidecar.rules.install_sighup(asyncio.get_running_loop())
    app = create_app(sidecar, manage_lifecycle=False)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.server.http_host,
            port=config.server.http_port,
            log_level=config.server.log_level,
            lifespan="off",
            access_log=False,
        )
    )
    log.info("HTTP hook on http://%s:%d", config.server.http_host, config.server.http_port)
    try:
        await server.serve()
    finally:
        if grpc_server is not None:
            await grpc_server.stop()
        await sidecar.close()
    return 0


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``server.event_loop`` asks for; None is asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("server.event_loop is uvloop but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def main_loop(config: SidecarConfig) -> int:
    try:
        factory = loop_factory(config.server.event_loop)
    except RuntimeError as exc:
        log.error("start-up failed: %s", exc)
        return 2
    log.info("event loop: %s", "asyncio" if factory is None else "uvloop")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_server(config))
