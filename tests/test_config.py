"""Configuration loading, environment overrides and ``sidecar check-config``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.config import ConfigError, load_config, parse_duration


def test_defaults_match_the_documented_keys() -> None:
    c = load_config(environ={})
    assert (c.server.http_host, c.server.http_port, c.server.grpc_port) == (
        "127.0.0.1",
        8080,
        50051,
    )
    assert c.server.max_body_bytes == 4194304
    assert c.cache.default_cache_key == "" and c.cache.ttl == 300
    assert c.cache.conversation_history_threshold == 3
    assert c.cache.cache_by_model and c.cache.cache_by_provider
    assert not c.cache.exclude_system_prompt
    assert (c.cache.exact_store, c.cache.vector_store) == ("embedded", "embedded")
    assert c.cache.data_dir == ".sidecar-data" and c.cache.max_entries == 100000
    assert c.embedder.backend == "sentence-transformers"
    assert c.guardrails.rules == []


def test_yaml_and_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cache:\n  threshold: 0.85\n  ttl: 1h\nserver:\n  http_port: 9000\n")
    c = load_config(
        path,
        environ={
            "SIDECAR_CACHE__THRESHOLD": "0.9",
            "SIDECAR_CACHE__DEFAULT_CACHE_KEY": "team-a",
            "SIDECAR_CACHE__EXACT_STORE": "embedded",
        },
    )
    assert c.cache.threshold == 0.9 and c.cache.ttl == 3600
    assert c.cache.default_cache_key == "team-a"
    assert c.server.http_port == 9000


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("cache:\n  thresold: 0.9\n", "cache.thresold"),
        ("bogus: {}\n", "bogus"),
        ("cache:\n  threshold: 2\n", "cache.threshold"),
        ("cache:\n  ttl: forever\n", "cache.ttl"),
        ("server: [1]\n", "server"),
        ("- a\n", "top level"),
        ("cache: {threshold: [\n", "not valid YAML"),
    ],
)
def test_invalid_files_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert needle in str(err.value)


def test_unknown_environment_section_is_an_error() -> None:
    with pytest.raises(ConfigError, match="SIDECAR_CACHES__TTL"):
        load_config(environ={"SIDECAR_CACHES__TTL": "5"})
    with pytest.raises(ConfigError, match="cache.nope"):
        load_config(environ={"SIDECAR_CACHE__NOPE": "5"})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30),
        ("45", 45),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5s", 1.5),
    ],
)
def test_durations(value: str | int, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["0", "-5", "soon", "5 minutes", "", True])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("cache: {threshold: 0.9}\n")
    assert main(["check-config", "--config", str(good)]) == 0
    assert "configuration OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("cache: {threshold: 9, tll: 5}\nserver: {http_port: -1}\n")
    assert main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "cache.threshold" in err and "cache.tll" in err and "server.http_port" in err
    assert "3 error(s)" in err
