"""The presidio check starts and detects with the network unreachable.

Each test runs Python in a subprocess whose ``sitecustomize`` makes every DNS lookup and socket
connect fail and records the attempt, with HOME and the cache directory pointing at empty
temporary folders (so no earlier tldextract cache helps).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SITECUSTOMIZE = textwrap.dedent(
    """
    import os, socket

    _LOG = os.environ["NET_ATTEMPTS_LOG"]

    def _refuse(what):
        def blocked(*args, **kwargs):
            with open(_LOG, "a") as fh:
                fh.write(what + "\\n")
            raise OSError(f"network blocked by test ({what})")
        return blocked

    socket.getaddrinfo = _refuse("getaddrinfo")
    socket.create_connection = _refuse("create_connection")
    socket.socket.connect = _refuse("connect")
    socket.socket.connect_ex = _refuse("connect_ex")
    """
)


def run_offline(tmp_path: Path, code: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "attempts.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLDEXTRACT")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), str(REPO)]),
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        NET_ATTEMPTS_LOG=str(log),
        HF_HUB_OFFLINE="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    attempts = log.read_text().splitlines() if log.exists() else []
    return proc, attempts


def test_harness_catches_the_stock_suffix_list_download(tmp_path: Path) -> None:
    # Control: the module-level tldextract extractor (what Presidio's stock EmailRecognizer
    # uses) tries the network; the harness must see that, or the next test proves nothing.
    proc, attempts = run_offline(
        tmp_path, "import tldextract; print(tldextract.extract('mail.example.co.uk').suffix)"
    )
    assert proc.returncode == 0, proc.stderr
    assert attempts, "the sandbox did not observe tldextract's download attempt"


def test_check_builds_and_detects_with_network_unreachable(tmp_path: Path) -> None:
    proc, attempts = run_offline(
        tmp_path,
        """
        import asyncio, json
        from guardrails.base import CheckContext, Stage, TextPiece
        from guardrails.pii.check import build

        check = build({"redaction": "reversible"})
        ctx = CheckContext(stage=Stage.INPUT, request_id="x", request_type="chat")
        text = "Write to dana.keller@example.co.uk or call +1 415-555-0132."
        result = asyncio.run(check.scan([TextPiece(0, text)], ctx))
        print(json.dumps([[f.type, text[f.start:f.end]] for f in result.findings]))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    findings = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ["EMAIL_ADDRESS", "dana.keller@example.co.uk"] in findings
    assert ["PHONE_NUMBER", "+1 415-555-0132"] in findings
    assert attempts == [], f"network was attempted: {attempts}"


@pytest.mark.parametrize("model", ["en_core_web_notinstalled", "no_such_model_dir/"])
def test_missing_nlp_model_is_a_config_error_not_a_download(tmp_path: Path, model: str) -> None:
    proc, attempts = run_offline(
        tmp_path,
        f"""
        from guardrails.base import CheckConfigError
        from guardrails.pii.check import build
        try:
            build({{"nlp_model": {model!r}, "entities": ["PERSON"]}})
        except CheckConfigError as exc:
            print("ERROR", exc)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ERROR nlp_model:" in proc.stdout
    assert "never downloaded" in proc.stdout
    assert attempts == []
