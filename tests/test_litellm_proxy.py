"""A real LiteLLM proxy in front of a fake provider, with the sidecar as its Generic Guardrail
API, driven by the official ``openai`` SDK.

LiteLLM runs from its own environment (its pins clash with ours): ``.venv-litellm`` in the
checkout (``.ci/run`` builds it), ``SIDECAR_LITELLM`` (path to the ``litellm`` executable), or a
``litellm`` on PATH. Without one the module is skipped with the reason, except when
``SIDECAR_REQUIRE_LITELLM=1`` (CI), where that is a failure. LiteLLM loads the very config file
docs/guardrails.md shows (docs/litellm/config.yaml), with only its URLs pointed at loopback.
It takes many seconds to start, so one proxy serves the whole module.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import yaml

from sidecar.demo.processes import ManagedProcess, ProcessFailed, free_port
from tests.fakes.upstream import FakeLLMUpstream

ROOT = Path(__file__).resolve().parents[1]
DOCS_CONFIG = ROOT / "docs" / "litellm" / "config.yaml"
DOCS_PROVIDER_URL = "https://api.openai.com/v1"
DOCS_SIDECAR_URL = "http://127.0.0.1:8080"
START_TIMEOUT_S = 240.0

AWS_KEY = "AKIAZ7Q3XK2M4PLW6RTB"  # the shape of an AWS access key id, not a real one
EMAIL = "alice.jones@example.org"

RULES = """\
profiles:
  secrets: {provider: secrets}
  pii:
    provider: presidio
    config: {entities: [EMAIL_ADDRESS], redaction: replace}
  phone:
    provider: presidio
    config: {entities: [PHONE_NUMBER], redaction: reversible}
  topic:
    provider: regex
    config: {patterns: [{name: topic, pattern: 'forbidden-topic'}]}
  tenant-word:
    provider: regex
    config: {patterns: [{name: tenant-word, pattern: 'tenant-only-word'}]}
  flag-word:
    provider: regex
    config: {patterns: [{name: flag-word, pattern: 'flagged-word'}]}
rules:
  - id: block-secrets
    apply_to: both
    profiles: [secrets]
    action: block
  - id: redact-email
    apply_to: both
    profiles: [pii]
    action: redact
  - id: phone-placeholders
    apply_to: both
    profiles: [phone]
    action: redact
  - id: topic-on-gpt-4o
    when: 'model == "gpt-4o"'
    apply_to: input
    profiles: [topic]
    action: block
  - id: tenant-acme
    when: '"x-tenant" in headers && headers["x-tenant"] == "acme"'
    apply_to: input
    profiles: [tenant-word]
    action: block
  - id: flagged-clients
    when: '"x-client-flag" in headers'
    apply_to: input
    profiles: [flag-word]
    action: block
"""


def litellm_executable() -> tuple[str | None, str]:
    """(path, '') or (None, why not)."""
    candidates = [
        os.environ.get("SIDECAR_LITELLM", ""),
        str(ROOT / ".venv-litellm" / "bin" / "litellm"),
        shutil.which("litellm") or "",
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path, ""
    return None, (
        "no litellm executable: run `bash .ci/run` (it builds .venv-litellm with "
        "litellm[proxy]) or set SIDECAR_LITELLM"
    )


@dataclass
class Stack:
    upstream: FakeLLMUpstream
    litellm_url: str
    master_key: str
    sidecar_token: str

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.litellm_url, api_key=self.master_key, max_retries=0)


def docs_config(provider_url: str, sidecar_url: str) -> str:
    text = DOCS_CONFIG.read_text(encoding="utf-8")
    assert DOCS_PROVIDER_URL in text and DOCS_SIDECAR_URL in text
    return text.replace(DOCS_PROVIDER_URL, provider_url).replace(DOCS_SIDECAR_URL, sidecar_url)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    executable, reason = litellm_executable()
    if executable is None:
        if os.environ.get("SIDECAR_REQUIRE_LITELLM") == "1":
            pytest.fail(f"LiteLLM required (SIDECAR_REQUIRE_LITELLM=1): {reason}")
        pytest.skip(f"LiteLLM unavailable: {reason}")
    workdir = tmp_path_factory.mktemp("litellm-e2e")
    upstream = FakeLLMUpstream().start()
    sidecar_port, litellm_port = free_port(), free_port()
    rules = workdir / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    sidecar_config = {
        "server": {
            "http_port": sidecar_port,
            "grpc_enabled": False,
            "log_level": "warning",
            # LiteLLM sends the guardrail's api_key (docs config: os.environ/SIDECAR_TOKEN)
            "auth_token_env": "SIDECAR_TOKEN",
        },
        "cache": {"enabled": False},
        "guardrails": {
            "rules": [str(rules)],
            "reload_interval": 0,
            "audit_log": str(workdir / "audit.jsonl"),
        },
    }
    (workdir / "sidecar.yaml").write_text(yaml.safe_dump(sidecar_config), encoding="utf-8")
    (workdir / "litellm.yaml").write_text(
        docs_config(f"{upstream.url}/v1", f"http://127.0.0.1:{sidecar_port}"), encoding="utf-8"
    )
    token, master_key = "sidecar-test-token", "sk-litellm-test-master"
    sidecar = ManagedProcess(
        "sidecar",
        [sys.executable, "-m", "sidecar", "serve", "--config", str(workdir / "sidecar.yaml")],
        workdir / "sidecar.log",
        env={"SIDECAR_TOKEN": token},
    )
    litellm = ManagedProcess(
        "litellm",
        [
            executable,
            "--config",
            str(workdir / "litellm.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(litellm_port),
            "--num_workers",
            "1",
        ],
        workdir / "litellm.log",
        env={
            "SIDECAR_TOKEN": token,
            "OPENAI_API_KEY": "sk-fake-provider",
            "LITELLM_MASTER_KEY": master_key,
            # no download of the model price list at start-up (offline machines)
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
        },
    )
    try:
        sidecar.start()
        litellm.start()
        sidecar.wait_ready(
            f"http://127.0.0.1:{sidecar_port}/readyz",
            START_TIMEOUT_S,
            headers={"authorization": f"Bearer {token}"},
        )
        litellm.wait_ready(f"http://127.0.0.1:{litellm_port}/health/liveliness", START_TIMEOUT_S)
    except ProcessFailed as exc:
        litellm.stop()
        sidecar.stop()
        upstream.stop()
        pytest.fail(str(exc))
    yield Stack(upstream, f"http://127.0.0.1:{litellm_port}", master_key, token)
    litellm.stop()
    sidecar.stop()
    upstream.stop()


def chat(stack: Stack, content: str, model: str = "gpt-4o", **kwargs: object) -> str:
    answer = stack.client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        **kwargs,  # type: ignore[arg-type]
    )
    return answer.choices[0].message.content or ""


def streamed(stack: Stack, content: str) -> list[str]:
    pieces: list[str] = []
    stream = stack.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": content}], stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    return pieces


def last_prompt(stack: Stack) -> str:
    body = stack.upstream.calls_to("/chat/completions")[-1].json()
    return str(body["messages"])


# ---------------------------------------------------------------------------- input
def test_clean_request_passes(stack: Stack) -> None:
    before = stack.upstream.count("/chat/completions")
    answer = chat(stack, "What is the capital of France?")
    assert answer.endswith("to: What is the capital of France?")
    assert stack.upstream.count("/chat/completions") == before + 1


def test_secret_in_prompt_is_blocked(stack: Stack) -> None:
    before = stack.upstream.count("/chat/completions")
    with pytest.raises(openai.BadRequestError) as caught:
        chat(stack, f"deploy with key {AWS_KEY} please")
    assert caught.value.status_code == 400  # always 400 on this path: no status in the protocol
    message = str(caught.value)
    assert "block-secrets" in message and "aws-access-key-id" in message
    assert AWS_KEY not in message
    assert stack.upstream.count("/chat/completions") == before  # never reached the provider


def test_pii_in_prompt_is_redacted(stack: Stack) -> None:
    answer = chat(stack, f"write to {EMAIL} about the invoice")
    sent = last_prompt(stack)
    assert EMAIL not in sent and "about the invoice" in sent
    assert EMAIL not in answer


# ---------------------------------------------------------------------------- output
def test_pii_in_answer_is_redacted(stack: Stack) -> None:
    stack.upstream.answer_next(f"Sure, her address is {EMAIL}.")
    answer = chat(stack, "what is alice's address?")
    assert EMAIL not in answer
    assert answer.startswith("Sure, her address is ")


def test_pii_in_streamed_answer_is_redacted(stack: Stack) -> None:
    stack.upstream.answer_next(f"Sure, her address is {EMAIL} and nothing else.")
    text = "".join(streamed(stack, "what is alice's address?"))
    assert EMAIL not in text
    assert text.startswith("Sure, her address is ") and text.endswith("nothing else.")


def test_secret_in_answer_is_blocked(stack: Stack) -> None:
    stack.upstream.answer_next(f"the key is {AWS_KEY}")
    with pytest.raises(openai.BadRequestError) as caught:
        chat(stack, "what is the deploy key?")
    assert "block-secrets" in str(caught.value) and AWS_KEY not in str(caught.value)


def test_secret_in_streamed_answer_never_reaches_the_client(stack: Stack) -> None:
    stack.upstream.answer_next(f"Here you go: the key is {AWS_KEY} and that is all.")
    received: list[str] = []
    with pytest.raises(openai.APIError):
        stream = stack.client().chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "what is the deploy key?"}],
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert AWS_KEY not in "".join(received)
    assert AWS_KEY[:8] not in "".join(received)


PHONE = "212-555-0187"
LONG_TAIL = " ".join(f"word{i}" for i in range(40))  # many chunks: several guardrail calls


def test_reversible_placeholders_restored_in_answers(stack: Stack) -> None:
    """The provider sees a placeholder; the client gets the number back, also in a long
    stream, where LiteLLM calls the response guardrail once per sampled chunk."""
    answer = chat(stack, f"call me at {PHONE} tomorrow")
    assert PHONE not in last_prompt(stack) and "[PHONE_NUMBER_1]" in last_prompt(stack)
    assert answer.endswith(f"call me at {PHONE} tomorrow")
    text = "".join(streamed(stack, f"call me at {PHONE} then {LONG_TAIL}"))
    assert "[PHONE_NUMBER_1]" in last_prompt(stack)
    assert text.endswith(f"call me at {PHONE} then {LONG_TAIL}")


# ---------------------------------------------------------------------------- tool calls
def test_secret_in_tool_call_arguments_is_blocked(stack: Stack) -> None:
    before = stack.upstream.count("/chat/completions")
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "deploy", "arguments": f'{{"access_key": "{AWS_KEY}"}}'},
    }
    messages = [
        {"role": "user", "content": "deploy the service"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "deployed"},
        {"role": "user", "content": "thanks, what next?"},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    assert "block-secrets" in str(caught.value) and AWS_KEY not in str(caught.value)
    assert stack.upstream.count("/chat/completions") == before


def test_secret_in_answer_tool_call_is_blocked(stack: Stack) -> None:
    tool_call = {
        "id": "call_2",
        "type": "function",
        "function": {"name": "deploy", "arguments": f'{{"access_key": "{AWS_KEY}"}}'},
    }
    stack.upstream.answer_next(None, tool_calls=[tool_call])
    with pytest.raises(openai.BadRequestError) as caught:
        chat(stack, "deploy it")
    assert "block-secrets" in str(caught.value) and AWS_KEY not in str(caught.value)


# ---------------------------------------------------------------------------- conditions
def test_rule_on_model(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(stack, "tell me about forbidden-topic", model="gpt-4o")
    assert "topic-on-gpt-4o" in str(caught.value)
    assert chat(stack, "tell me about forbidden-topic", model="gpt-4o-mini").endswith(
        "forbidden-topic"
    )


def test_rule_on_forwarded_client_header(stack: Stack) -> None:
    """x-tenant is in the guardrail's extra_headers, so its value reaches the rules."""
    with pytest.raises(openai.BadRequestError) as caught:
        chat(stack, "say tenant-only-word", extra_headers={"x-tenant": "acme"})
    assert "tenant-acme" in str(caught.value)
    assert chat(stack, "say tenant-only-word", extra_headers={"x-tenant": "globex"})


def test_masked_client_header_is_present(stack: Stack) -> None:
    """LiteLLM masks the value of a header not on its allowlist; rules still see it exists."""
    with pytest.raises(openai.BadRequestError) as caught:
        chat(stack, "say flagged-word", extra_headers={"x-client-flag": "1"})
    assert "flagged-clients" in str(caught.value)
    assert chat(stack, "say flagged-word").endswith("flagged-word")


def test_docs_show_the_config_the_tests_load() -> None:
    """docs/guardrails.md shows docs/litellm/config.yaml verbatim (this module loads the file)."""
    guide = (ROOT / "docs" / "guardrails.md").read_text(encoding="utf-8")
    shown = guide.split("```yaml\n# docs/litellm/config.yaml\n", 1)[1].split("```", 1)[0]
    assert shown == DOCS_CONFIG.read_text(encoding="utf-8")
    config = yaml.safe_load(shown)
    assert "guardrails" not in (config.get("litellm_settings") or {})
    (entry,) = config["guardrails"]
    params = entry["litellm_params"]
    assert params["guardrail"] == "generic_guardrail_api"
    assert params["api_key"] == "os.environ/SIDECAR_TOKEN"
    assert params["streaming_transform_mode"] == "incremental_diff"
    assert params["streaming_buffer_until_moderated"] is True
