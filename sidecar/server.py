"""Run the servers of ``sidecar serve`` in one event loop: the HTTP hook (uvicorn) and the
Envoy ext_proc gRPC server, over one ``Sidecar`` (same pipeline, cache and metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from embedders import EmbedderError
from guardrails.rules import RuleFileError
from sidecar.auth import AuthConfigError, exposed_hosts, load_tokens
from sidecar.cache.match.head import MatchHeadError
from sidecar.cache.match.pair_model import PairModelError
from sidecar.cache.match.words import WordListError
from sidecar.cache.stores.backends import BackendConfigError
from sidecar.config import ServerConfig, SidecarConfig
from sidecar.health_listener import start_health_listener
from sidecar.services import Sidecar
from sidecar.transports.connections import guarded_protocol
from sidecar.transports.http import create_app

log = logging.getLogger("sidecar")


def check_exposure(server: ServerConfig) -> str | None:
    """Why ``sidecar serve`` must not start with this config (None: it may). Beyond loopback
    nothing answers without a token, unless ``allow_insecure`` says so explicitly; token
    problems (a named variable that is missing or empty) are reported here too."""
    try:
        tokens = load_tokens(server)
    except AuthConfigError as exc:
        return str(exc)
    for name in ("tls_cert_file", "tls_key_file"):
        path = getattr(server, name)
        if path and not os.access(path, os.R_OK):
            return f"server.{name}: cannot read {path!r}"
    exposed = exposed_hosts(server)
    if not exposed:
        return None
    where = ", ".join(exposed)
    if tokens is None and not server.allow_insecure:
        return (
            f"refusing to listen on {where} (beyond loopback) without authentication: set "
            "server.auth_token_env to the name of an environment variable holding a token, "
            "or pass --insecure-no-auth (server.allow_insecure: true) to accept that anyone "
            "who can connect may read metrics, delete entries and write answers"
        )
    if tokens is None:
        log.warning(
            "INSECURE: listening on %s without authentication (--insecure-no-auth / "
            "server.allow_insecure): anyone who can connect may read metrics, delete entries "
            "and write answers",
            where,
        )
    elif not server.tls_cert_file:
        log.warning(
            "listening on %s without TLS: bearer tokens and prompts cross the network in "
            "clear text (set server.tls_cert_file and server.tls_key_file)",
            where,
        )
    return None


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process signals alone. uvicorn's own handling re-raises
    SIGTERM/SIGINT once its server has stopped, which kills the process (or raises
    KeyboardInterrupt) before ``run_server`` has stopped gRPC, drained the vector backlog and
    saved the index; ``ShutdownSignals`` stops the servers instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ShutdownSignals:
    """SIGTERM and SIGINT ask every listener to stop; ``run_server`` then stops gRPC and closes
    the sidecar (backlog drain, index save) and the process exits 0. A second signal stops the
    HTTP listeners at once, without waiting for requests in progress."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        #: a signal came during start-up and left work in threads that cannot be stopped: the
        #: process must exit without joining them (``main_loop``)
        self.abandon_threads = False
        self.servers: list[uvicorn.Server] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            self._loop.add_signal_handler(sig, self._on_signal, sig)

    def uninstall(self) -> None:
        if self._loop is not None:
            for sig in self.SIGNALS:
                self._loop.remove_signal_handler(sig)
            self._loop = None

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.requested.is_set():
            log.warning("%s again: stopping without waiting for requests in progress", sig.name)
            for server in self.servers:
                server.force_exit = True
            return
        log.info("%s received: shutting down", sig.name)
        self.requested.set()
        for server in self.servers:
            server.should_exit = True


async def _start_unless_stopped(sidecar: Sidecar, signals: ShutdownSignals) -> bool:
    """Start the sidecar, or give up when SIGTERM/SIGINT comes first (False). A first start
    can spend minutes in a thread nothing can interrupt (the ONNX export, see
    embedders/onnx_embedder.py); an orchestrator's stop must not wait for it."""
    start = asyncio.ensure_future(sidecar.start())
    stop = asyncio.ensure_future(signals.requested.wait())
    try:
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if start.done():
        start.result()  # start-up errors go to the caller
        return True
    start.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await start
    return False


async def _serve(server: uvicorn.Server) -> bool:
    """Run one HTTP listener until it is asked to stop; False when it could not start (uvicorn
    logs why and raises SystemExit, which must not escape a task into the event loop)."""
    try:
        await server.serve()
    except SystemExit:
        return False
    return True


def _http_server(app: Any, server: ServerConfig, port: int) -> uvicorn.Server:
    uv_config = uvicorn.Config(
        app,
        host=server.http_host,
        port=port,
        log_level=server.log_level,
        lifespan="off",
        access_log=False,
        http=guarded_protocol(server.header_timeout, server.body_timeout, server.max_connections),
        timeout_keep_alive=server.keepalive_timeout,  # type: ignore[arg-type]  # float works
        ssl_certfile=server.tls_cert_file or None,
        ssl_keyfile=server.tls_key_file or None,
        # in-flight requests get this long once a shutdown begins
        timeout_graceful_shutdown=max(1, round(server.shutdown_grace)),
    )
    return _QuietServer(uv_config)


async def run_server(config: SidecarConfig, signals: ShutdownSignals | None = None) -> int:
    refusal = check_exposure(config.server)
    if refusal is not None:
        log.error("start-up failed: %s", refusal)
        return 2
    signals = signals or ShutdownSignals()
    signals.install()
    try:
        return await _run_server(config, signals)
    finally:
        signals.uninstall()


async def _run_server(config: SidecarConfig, signals: ShutdownSignals) -> int:
    try:
        sidecar = Sidecar(config)
    except RuleFileError as exc:
        log.error("start-up failed: invalid rule files:\n%s", exc)
        return 2
    except BackendConfigError as exc:
        log.error("start-up failed: %s", exc)
        return 2
    try:
        started = await _start_unless_stopped(sidecar, signals)
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
    if not started:
        log.warning(
            "stopped during start-up: work still running in a thread (a first-start model "
            "export) is abandoned; its partial files are never used, the next start begins again"
        )
        # Not closed: closing would save what a restore still running in a thread has half
        # built. Nothing is served yet, and SQLite (the source of truth) survives the exit.
        signals.abandon_threads = True
        return 0
    if sidecar.engine is not None and sidecar.engine.workers is not None:
        # Check workers start in the background (the fork server imports the check modules:
        # seconds for Presidio), so the first large prompt does not wait for them.
        sidecar.engine.workers.prestart()
    # uvloop's loop class lives in module "uvloop", asyncio's in "asyncio.unix_events"
    loop_module = type(asyncio.get_running_loop()).__module__
    sidecar.extra_status["event_loop"] = loop_module.split(".")[0]
    grpc_server = None
    if config.server.grpc_enabled:
        # Imported here so the HTTP hook runs even where the gRPC stubs are not installed.
        from sidecar.transports.extproc import build_server

        try:
            grpc_server = build_server(sidecar)
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
    health = None
    if config.server.health_port:
        try:
            health = start_health_listener(sidecar)
        except OSError as exc:
            log.error("start-up failed: health listener: %s", exc)
            if grpc_server is not None:
                await grpc_server.stop()
            await sidecar.close()
            return 2
    # What start-up built (models, their libraries: some 500,000 objects with torch) lives as
    # long as the process: kept out of the collector's full passes, which would otherwise scan
    # it all each time (100-250 ms measured), a stall every request in flight waits out.
    gc.collect()
    gc.freeze()
    # that pass (and the start-up before it) stalled the loop: not overload
    sidecar.governor.settle()
    if sidecar.rules is not None:
        # kill -HUP reloads rule files; a bad file keeps the previous rules (see /readyz).
        sidecar.rules.install_sighup(asyncio.get_running_loop())
    server_config = config.server
    scheme = "https" if server_config.tls_cert_file else "http"
    servers: list[uvicorn.Server] = []
    if server_config.admin_port:
        hooks_app = create_app(sidecar, manage_lifecycle=False, listener="hooks")
        admin_app = create_app(sidecar, manage_lifecycle=False, listener="admin")
        servers.append(_http_server(admin_app, server_config, server_config.admin_port))
        log.info(
            "admin API on %s://%s:%d", scheme, server_config.http_host, server_config.admin_port
        )
    else:
        hooks_app = create_app(sidecar, manage_lifecycle=False)
    servers.insert(0, _http_server(hooks_app, server_config, server_config.http_port))
    signals.servers.extend(servers)
    log.info("HTTP hook on %s://%s:%d", scheme, server_config.http_host, server_config.http_port)
    code = 0
    try:
        if not signals.requested.is_set():  # a signal during start-up: stop at once
            # One listener ending (e.g. a port already taken) stops the others too.
            tasks = [asyncio.create_task(_serve(s)) for s in servers]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for server in servers:
                server.should_exit = True
            served = await asyncio.gather(*tasks)
            if not all(served) or not signals.requested.is_set():
                code = 1
    finally:
        # Stop taking ext_proc streams (those in progress get the grace period), then close
        # the sidecar: the vector backlog drains and the embedded index is saved.
        if grpc_server is not None:
            await grpc_server.stop(server_config.shutdown_grace)
        if health is not None:
            health.close()
        await sidecar.close()
        if code == 0:
            log.info("shut down cleanly")
    return code


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
    signals = ShutdownSignals()
    with asyncio.Runner(loop_factory=factory) as runner:
        code = runner.run(run_server(config, signals))
        if signals.abandon_threads:
            # Leaving the runner (and then the interpreter) joins every executor thread, i.e.
            # waits for the export the signal meant to cut short.
            logging.shutdown()
            os._exit(code)
        return code
