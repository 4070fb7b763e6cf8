"""Check providers by name, as rule-file profiles refer to them.

Entries are import paths, resolved on first use, so a deployment that never names ``bedrock``
never imports boto3.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from guardrails.base import Check, CheckConfigError

# provider name -> "module:callable"; the callable takes (config, base_dir=...) and returns a Check
PROVIDERS: dict[str, str] = {
    "regex": "guardrails.regex_check:build",
    "secrets": "guardrails.secrets.check:build",
    "presidio": "guardrails.pii.check:build",
    "bedrock": "guardrails.bedrock:build",
    "azure_content_safety": "guardrails.azure:build",
}


# Providers that call a remote service take their profile name (a metrics label) and the shared
# remote-call metrics as well.
REMOTE_PROVIDERS = frozenset({"bedrock", "azure_content_safety"})


def build_check(
    provider: str,
    config: Mapping[str, Any],
    *,
    base_dir: str | None = None,
    profile: str | None = None,
    remote_metrics: Any = None,
) -> Check:
    target = PROVIDERS.get(provider)
    if target is None:
        known = ", ".join(sorted(PROVIDERS))
        raise CheckConfigError(f"unknown provider {provider!r} (known: {known})")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a provider whose optional dependency is missing
        raise CheckConfigError(f"provider {provider!r} is not available: {exc}") from exc
    factory = getattr(module, attr)
    if provider in REMOTE_PROVIDERS:
        check: Check = factory(config, base_dir=base_dir, profile=profile, metrics=remote_metrics)
    else:
        check = factory(config, base_dir=base_dir)
    return check
