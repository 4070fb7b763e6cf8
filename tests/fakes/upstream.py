"""The fake LLM provider (OpenAI Chat Completions + Anthropic Messages, plain and streamed,
plus embeddings) used by the Envoy end-to-end tests.

It ships with the package because ``sidecar demo`` runs the same fake; this module is the
tests' name for it.
"""

from __future__ import annotations

from sidecar.demo.upstream import HOLD_MARKER, FakeLLMUpstream, ScriptedAnswer, UpstreamCall

__all__ = ["HOLD_MARKER", "FakeLLMUpstream", "ScriptedAnswer", "UpstreamCall"]
