"""Credentials that checks read from environment variables, and ``check-config --offline``.

A check that needs a key names the variable in its config (``api_key_env``) and reads it here
when it is built. ``offline_secrets()`` lets a configuration be validated on a machine that
does not hold the secrets (a laptop, a CI job): inside it a missing variable is recorded as
skipped instead of failing, and the check is built with a placeholder it never uses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar

from guardrails.base import CheckConfigError

#: the value a check gets for a variable that ``offline_secrets`` skipped (never sent anywhere:
#: checks built for validation are closed without a call)
OFFLINE_PLACEHOLDER = "offline-placeholder"

_skipped: ContextVar[list[str] | None] = ContextVar("offline_secret_skips", default=None)


def secret_from_env(name: str, where: str) -> str:
    """The stripped value of ``name``; CheckConfigError when it is unset or empty (unless
    inside ``offline_secrets``, which records the skip and returns a placeholder)."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    skipped = _skipped.get()
    if skipped is not None:
        skipped.append(f"{where}: environment variable {name} (api_key_env) not checked")
        return OFFLINE_PLACEHOLDER
    raise CheckConfigError(f"{where}: environment variable {name} (api_key_env) is not set")


@contextlib.contextmanager
def offline_secrets() -> Iterator[list[str]]:
    """Within the block, missing secret variables are skipped; yields the list of skips."""
    skipped: list[str] = []
    token = _skipped.set(skipped)
    try:
        yield skipped
    finally:
        _skipped.reset(token)
