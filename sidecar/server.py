"""Run the servers of ``sidecar serve`` in one event loop."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from embedders import EmbedderError
from sidecar.cache.backends import BackendConfigError
from sidecar.config import SidecarConfig
from sidecar.services import Sidecar
from sidecar.transports.http import create_app

log = logging.getLogger("sidecar")


async def run_server(config: SidecarConfig) -> int:
    sidecar = Sidecar(config)
    try:
        await sidecar.start()
    except (EmbedderError, BackendConfigError, OSError) as exc:
        log.error("start-up failed: %s", exc)
        await sidecar.close()
        return 2
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
        await sidecar.close()
    return 0


def main_loop(config: SidecarConfig) -> int:
    return asyncio.run(run_server(config))
