"""Hot reload: a bad file keeps the previous rule set; the watcher and SIGHUP trigger reloads.

No sleeps: reload() is called directly, and the watcher/SIGHUP paths are awaited through the
holder's ``wait_for_attempt`` condition (with a generous hang guard, not a timing assertion).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from guardrails.base import CheckContext, CheckResult, Stage, TextPiece
from guardrails.engine import GuardrailEngine
from guardrails.registry import PROVIDERS
from guardrails.reload import RuleSetHolder
from guardrails.rules import RuleFileError

HANG_GUARD_S = 60


class ClosableCheck:
    """A check test double that records whether it was closed."""

    provider = "closable"

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.closed = False

    async def scan(self, pieces: Sequence[TextPiece], ctx: CheckContext) -> CheckResult:
        return CheckResult()

    def max_span(self) -> int | None:
        return 0

    async def aclose(self) -> None:
        self.closed = True


def build_closable(config: Mapping[str, Any], *, base_dir: str | None = None) -> ClosableCheck:
    return ClosableCheck(config)


@pytest.fixture(autouse=True)
def _closable_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PROVIDERS, "closable", f"{__name__}:build_closable")


def replace_file(path: Path, text: str) -> None:
    """Write the way deployments should: a new file renamed into place (atomic)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rules_text(rule_ids: Sequence[str], *, keep_config: str = "a", drop_config: str = "b") -> str:
    lines = [
        "profiles:",
        f"  keep: {{provider: closable, config: {{v: {keep_config}}}}}",
        f"  drop: {{provider: closable, config: {{v: {drop_config}}}}}",
        "rules:",
    ]
    for rule_id in rule_ids:
        lines += [
            f"  - id: {rule_id}",
            "    apply_to: input",
            "    profiles: [keep, drop]",
            "    action: detect_only",
        ]
    return "\n".join(lines) + "\n"


BAD = "profiles: {}\nrules:\n  - id: broken\n    apply_to: sideways\n    profiles: [nope]\n"


def test_good_then_bad_keeps_previous_and_reports_why(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules_text(["one"]))
    holder = RuleSetHolder([str(path)])
    engine = GuardrailEngine(holder)
    first = holder.current
    assert [r.id for r in first.rules] == ["one"] and holder.status()["last_error"] is None

    path.write_text(BAD)
    assert holder.reload() is False
    assert holder.current is first and engine.has_rules(Stage.INPUT)
    status = holder.status()
    assert status["files"] == [str(path)] and status["rules"] == 1 and status["generation"] == 1
    assert f"{path}:4:15: rule 'broken': apply_to: 'sideways'" in status["last_error"]
    assert "unknown profile 'nope'" in status["last_error"]

    path.write_text(rules_text(["one", "two"]))
    assert holder.reload() is True
    assert [r.id for r in holder.current.rules] == ["one", "two"]
    assert holder.status()["last_error"] is None and holder.generation == 2


def test_invalid_files_at_startup_raise(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BAD)
    with pytest.raises(RuleFileError, match="apply_to"):
        RuleSetHolder([str(path)])


async def test_no_files_means_inactive_engine() -> None:
    holder = RuleSetHolder([])
    engine = GuardrailEngine(holder)
    assert not engine.active and not engine.has_rules(Stage.OUTPUT)
    assert holder.reload() is True and holder.status()["files"] == []
    holder.start_watching(0.01)  # nothing to watch: no task is started
    await holder.stop()


async def test_unchanged_checks_are_reused_and_dropped_ones_closed(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules_text(["one"]))
    holder = RuleSetHolder([str(path)], retire_grace_s=3600)
    keep = holder.current.profiles["keep"].check
    drop = holder.current.profiles["drop"].check
    path.write_text(rules_text(["one"], drop_config="c"))
    assert holder.reload() is True
    assert holder.current.profiles["keep"].check is keep
    assert holder.current.profiles["drop"].check is not drop
    assert isinstance(drop, ClosableCheck) and not drop.closed  # in-flight requests may use it
    await holder.stop()  # closes retired checks regardless of the grace period
    assert drop.closed and isinstance(keep, ClosableCheck) and not keep.closed
    await holder.aclose()
    assert keep.closed


async def test_watcher_reloads_on_change_and_keeps_previous_on_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules_text(["one"]))
    holder = RuleSetHolder([str(path)])
    holder.start_watching(interval_s=0.01)
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            seen = holder.attempts
            replace_file(path, rules_text(["one", "two"]))
            seen = await holder.wait_for_attempt(seen)
            assert [r.id for r in holder.current.rules] == ["one", "two"]
            good = holder.current

            replace_file(path, BAD)
            seen = await holder.wait_for_attempt(seen)
            assert holder.current is good
            assert "sideways" in (holder.status()["last_error"] or "")

            replace_file(path, rules_text(["three"]))
            await holder.wait_for_attempt(seen)
            assert [r.id for r in holder.current.rules] == ["three"]
            assert holder.status()["last_error"] is None
    finally:
        await holder.stop()


async def test_sighup_reloads(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules_text(["one"]))
    holder = RuleSetHolder([str(path)])
    holder.install_sighup()
    try:
        path.write_text(rules_text(["after-hup"]))
        seen = holder.attempts
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(HANG_GUARD_S):
            await holder.wait_for_attempt(seen)
        assert [r.id for r in holder.current.rules] == ["after-hup"]
    finally:
        await holder.stop()
