"""Decoding a request body for the pipeline (``sidecar.pipeline``), off the event loop when
it is large."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from sidecar.context import HookError

#: JSON bodies larger than this are decoded in a thread, so the event loop keeps serving
#: other requests meanwhile (the GIL serialises the work, but hands the loop its turn)
OFF_LOOP_JSON_BYTES = 256 * 1024


async def json_body(body: Any, max_bytes: int) -> Any:
    """A request body as JSON: raw bytes (ext_proc) decoded, a decoded body (the HTTP hook's
    envelope) as is. HookError 413 over ``max_bytes``, 400 for JSON that does not parse."""
    if isinstance(body, bytes | bytearray) and OFF_LOOP_JSON_BYTES < len(body) <= max_bytes:
        return await asyncio.to_thread(json_body_now, body, max_bytes)
    return json_body_now(body, max_bytes)


def json_body_now(body: Any, max_bytes: int) -> Any:
    if isinstance(body, bytes | bytearray):
        if len(body) > max_bytes:
            raise HookError(
                413,
                "body_too_large",
                f"request body is {len(body)} bytes, over max_body_bytes {max_bytes}",
            )
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HookError(
                400, "malformed_json", f"request body is not valid JSON: {exc}"
            ) from None
    return body
