"""The README's examples are real: its configuration block and rule files load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from guardrails.rules import validate_rule_files
from sidecar.config import SidecarConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_configuration_reference_is_valid() -> None:
    blocks = [b for b in _yaml_blocks() if b.startswith("server:")]
    assert len(blocks) == 1
    config = SidecarConfig.model_validate(yaml.safe_load(blocks[0]))
    assert config == SidecarConfig()  # the reference shows the defaults


def test_rule_file_examples_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_CONTENT_SAFETY_KEY", "test-key")
    blocks = [b for b in _yaml_blocks() if "rules:" in b and "profiles:" in b]
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        path = tmp_path / f"rules{i}.yaml"
        path.write_text(block)
        assert validate_rule_files([str(path)]) == [], block
