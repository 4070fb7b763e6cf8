"""Azure AI Content Safety as a guardrail check, provider ``azure_content_safety``.

Two operations of the service are used:

* ``text:analyze`` on every piece: per-category severities (Hate, SelfHarm, Sexual, Violence)
  compared with the profile's thresholds, plus custom blocklists;
* ``text:shieldPrompt`` on the input stage when ``prompt_shield`` is on: user messages are the
  ``userPrompt``, tool results (or pieces of configured kinds/roles) are the ``documents``, for
  jailbreak and indirect-injection detection.

Why httpx rather than the ``azure-ai-contentsafety`` SDK: the SDK's async client needs aiohttp
(not a dependency of this project) and the sync client would have to run in a thread that a
timeout cannot stop; the SDK 1.0 also has no Prompt Shields method and defaults to an older
api-version. One ``httpx.AsyncClient`` gives both operations with real cancellation and a
bounded connection pool. The wire format is the service's REST API, which the SDK also speaks.

Texts longer than the service's 10,000-character limit are split (at whitespace where
possible) and the worst verdict over the chunks applies to the piece.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from guardrails.base import (
    Check,
    CheckConfigError,
    CheckContext,
    CheckResult,
    Finding,
    PieceKind,
    Stage,
    TextPiece,
)
from guardrails.remote_metrics import RemoteMetrics
from guardrails.resilience import (
    RESILIENCE_CONFIG_KEYS,
    ErrorKind,
    RemoteCheckError,
    RemoteTimeoutError,
    ResiliencePolicy,
    ResilientCaller,
    read_bool,
    read_str,
    reject_unknown_keys,
    require_str,
    run_all,
)
from guardrails.secret_env import secret_from_env

PROVIDER = "azure_content_safety"
_WHERE = "azure_content_safety"
CATEGORIES = ("Hate", "SelfHarm", "Sexual", "Violence")
OUTPUT_TYPES = {"FourSeverityLevels": 6, "EightSeverityLevels": 7}  # -> highest severity
DEFAULT_THRESHOLD = 4
DEFAULT_API_VERSION = "2024-09-01"
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
# Published input limits: analyze text and userPrompt up to 10,000 characters; Prompt Shields
# takes up to 5 documents of 10,000 characters in total per call.
MAX_TEXT_CHARS = 10_000
MAX_SHIELD_DOCUMENTS = 5
MAX_SHIELD_DOCUMENT_CHARS = 10_000
_SPLIT_LOOKBACK = 1_000  # how far back from a chunk's end to look for whitespace to split at
_SAFE_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_CONFIG_KEYS = (
    "endpoint",
    "auth",
    "api_key_env",
    "api_version",
    "categories",
    "output_type",
    "blocklists",
    "halt_on_blocklist_hit",
    "prompt_shield",
    *RESILIENCE_CONFIG_KEYS,
)

TokenProvider = Callable[[], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class PromptShieldSettings:
    # pieces used as ``documents`` (everything else that is a user message is the prompt)
    document_kinds: frozenset[PieceKind] = frozenset({PieceKind.TOOL_RESULT})
    document_roles: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AzureSettings:
    endpoint: str
    auth: str  # "key" or "entra"
    api_key_env: str | None  # the variable's name; the key itself never lives in settings
    api_version: str
    thresholds: Mapping[str, int]
    output_type: str
    blocklists: tuple[str, ...]
    halt_on_blocklist_hit: bool
    prompt_shield: PromptShieldSettings | None
    policy: ResiliencePolicy

    @property
    def max_severity(self) -> int:
        return OUTPUT_TYPES[self.output_type]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AzureSettings:
        if not isinstance(config, Mapping):
            raise CheckConfigError(f"{_WHERE}: config must be a mapping")
        reject_unknown_keys(config, _CONFIG_KEYS, _WHERE)
        endpoint = require_str(config, "endpoint", _WHERE).rstrip("/")
        if not endpoint.startswith(("https://", "http://")):
            raise CheckConfigError(f"{_WHERE}: endpoint must start with https:// or http://")
        auth = read_str(config, "auth", _WHERE, default="key")
        if auth not in ("key", "entra"):
            raise CheckConfigError(f"{_WHERE}: auth must be 'key' or 'entra', got {auth!r}")
        api_key_env = read_str(config, "api_key_env", _WHERE)
        if auth == "key" and api_key_env is None:
            raise CheckConfigError(
                f"{_WHERE}: api_key_env (the name of the variable holding the key) is required "
                "unless auth is 'entra'"
            )
        output_type = read_str(config, "output_type", _WHERE, default="FourSeverityLevels")
        if output_type not in OUTPUT_TYPES:
            raise CheckConfigError(
                f"{_WHERE}: output_type must be one of {', '.join(OUTPUT_TYPES)}, "
                f"got {output_type!r}"
            )
        thresholds = _read_thresholds(config.get("categories"), OUTPUT_TYPES[output_type])
        blocklists = _read_names(config.get("blocklists"), "blocklists")
        prompt_shield = _read_prompt_shield(config.get("prompt_shield"))
        if not thresholds and not blocklists and prompt_shield is None:
            raise CheckConfigError(
                f"{_WHERE}: nothing to check: give categories, blocklists or prompt_shield"
            )
        return cls(
            endpoint=endpoint,
            auth=auth,
            api_key_env=api_key_env,
            api_version=read_str(config, "api_version", _WHERE, default=DEFAULT_API_VERSION)
            or DEFAULT_API_VERSION,
            thresholds=thresholds,
            output_type=output_type,
            blocklists=blocklists,
            halt_on_blocklist_hit=read_bool(config, "halt_on_blocklist_hit", False, _WHERE),
            prompt_shield=prompt_shield,
            policy=ResiliencePolicy.from_config(config, _WHERE),
        )


def _read_thresholds(value: Any, max_severity: int) -> dict[str, int]:
    """Category -> lowest severity that yields a finding. Absent: every category at 4."""
    if value is None:
        return {category: DEFAULT_THRESHOLD for category in CATEGORIES}
    if not isinstance(value, Mapping):
        raise CheckConfigError(f"{_WHERE}: categories must map a category to a threshold")
    thresholds: dict[str, int] = {}
    for category, threshold in value.items():
        if category not in CATEGORIES:
            raise CheckConfigError(
                f"{_WHERE}: categories: unknown category {category!r} "
                f"(known: {', '.join(CATEGORIES)})"
            )
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise CheckConfigError(f"{_WHERE}: categories.{category} must be an integer")
        if not 1 <= threshold <= max_severity:
            raise CheckConfigError(
                f"{_WHERE}: categories.{category} must be between 1 and {max_severity} "
                f"for this output_type, got {threshold}"
            )
        thresholds[category] = threshold
    return thresholds


def _read_names(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise CheckConfigError(f"{_WHERE}: {key} must be a list of non-empty strings")
    return tuple(value)


def _read_prompt_shield(value: Any) -> PromptShieldSettings | None:
    if value is None or value is False:
        return None
    if value is True:
        return PromptShieldSettings()
    if not isinstance(value, Mapping):
        raise CheckConfigError(f"{_WHERE}: prompt_shield must be true, false or a mapping")
    reject_unknown_keys(value, ("document_kinds", "document_roles"), f"{_WHERE}: prompt_shield")
    kinds: set[PieceKind] = set()
    for name in _read_names(value.get("document_kinds", ["tool_result"]), "document_kinds"):
        try:
            kinds.add(PieceKind(name))
        except ValueError:
            known = ", ".join(k.value for k in PieceKind)
            raise CheckConfigError(
                f"{_WHERE}: prompt_shield.document_kinds: unknown kind {name!r} (known: {known})"
            ) from None
    roles = _read_names(value.get("document_roles"), "document_roles")
    return PromptShieldSettings(frozenset(kinds), frozenset(roles))


class _Secret:
    """Holds a credential; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"


class EntraTokenSource:
    """Entra ID tokens from ``azure-identity`` (optional dependency), refreshed before expiry.

    The sync ``DefaultAzureCredential`` runs in a thread: its async twin needs aiohttp.
    """

    def __init__(self, scope: str = ENTRA_SCOPE) -> None:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError as exc:
            raise CheckConfigError(
                f"{_WHERE}: auth 'entra' needs the azure-identity package ({exc})"
            ) from exc
        self._credential = DefaultAzureCredential()
        self._scope = scope
        self._token: _Secret | None = None
        self._expires_on = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        async with self._lock:
            if self._token is None or time.time() > self._expires_on - 300:
                access = await asyncio.to_thread(self._credential.get_token, self._scope)
                self._token = _Secret(access.token)
                self._expires_on = float(access.expires_on)
            return self._token.reveal()


def split_text(text: str, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """Split into chunks of at most ``limit`` characters, at whitespace when one is near."""
    chunks: list[str] = []
    start = 0
    while len(text) - start > limit:
        end = start + limit
        cut = end
        for i in range(end - 1, max(start, end - _SPLIT_LOOKBACK), -1):
            if text[i].isspace():
                cut = i + 1  # the whitespace stays with the left chunk
                break
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return chunks


@dataclass(frozen=True, slots=True)
class _ShieldCall:
    prompt_piece: int | None
    prompt: str | None
    document_pieces: tuple[int, ...]
    documents: tuple[str, ...]


def plan_shield_calls(
    prompts: Sequence[tuple[int, str]], documents: Sequence[tuple[int, str]]
) -> list[_ShieldCall]:
    """Pack prompt and document chunks into shieldPrompt calls within the service's limits."""
    calls: list[_ShieldCall] = []
    p = d = 0
    while p < len(prompts) or d < len(documents):
        prompt_piece, prompt = prompts[p] if p < len(prompts) else (None, None)
        p += 1
        doc_pieces: list[int] = []
        docs: list[str] = []
        total = 0
        while (
            d < len(documents)
            and len(docs) < MAX_SHIELD_DOCUMENTS
            and total + len(documents[d][1]) <= MAX_SHIELD_DOCUMENT_CHARS
        ):
            doc_pieces.append(documents[d][0])
            docs.append(documents[d][1])
            total += len(documents[d][1])
            d += 1
        calls.append(_ShieldCall(prompt_piece, prompt, tuple(doc_pieces), tuple(docs)))
    return calls


class AzureContentSafetyCheck:
    provider = PROVIDER

    def __init__(
        self,
        settings: AzureSettings,
        *,
        profile: str | None = None,
        metrics: RemoteMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        token_provider: TokenProvider | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.profile = profile or httpx.URL(settings.endpoint).host
        self._key: _Secret | None = None
        self._token_provider = token_provider
        if settings.auth == "key" and token_provider is None:
            assert settings.api_key_env is not None
            self._key = _Secret(secret_from_env(settings.api_key_env, f"{_WHERE} {self.profile}"))
        elif settings.auth == "entra" and token_provider is None:
            self._token_provider = EntraTokenSource()
        policy = settings.policy
        self._http = httpx.AsyncClient(
            base_url=f"{settings.endpoint}/contentsafety",
            # The resilience layer enforces the per-attempt timeout; this one only backs it up.
            timeout=httpx.Timeout(policy.timeout_s + 1.0),
            limits=httpx.Limits(max_connections=policy.max_concurrency),
            transport=transport,
        )
        self.caller = ResilientCaller(PROVIDER, self.profile, policy, metrics=metrics, clock=clock)

    def max_span(self) -> int | None:
        return None

    async def aclose(self) -> None:
        self.caller.close()
        await self._http.aclose()

    async def scan(self, pieces: Sequence[TextPiece], ctx: CheckContext) -> CheckResult:
        targets = [p for p in pieces if p.text.strip()]
        analyses: list[Coroutine[Any, Any, list[Finding]]] = []
        if self.settings.thresholds or self.settings.blocklists:
            analyses = [self._analyze_piece(piece) for piece in targets]
        shield = self.settings.prompt_shield
        if shield is not None and ctx.stage is Stage.INPUT:
            analyses.extend(self._shield(plan) for plan in self._shield_plan(targets, shield))
        result = CheckResult()
        for findings in await run_all(analyses):
            result.findings.extend(findings)
        return result

    # ------------------------------------------------------------------ text:analyze

    async def _analyze_piece(self, piece: TextPiece) -> list[Finding]:
        chunks = split_text(piece.text)
        answers = await run_all(self._analyze_chunk(chunk) for chunk in chunks)
        worst: dict[str, int] = {}
        blocklists: dict[str, None] = {}
        for answer in answers:
            for category, severity in answer[0].items():
                worst[category] = max(severity, worst.get(category, 0))
            blocklists.update(dict.fromkeys(answer[1]))
        findings = []
        top = self.settings.max_severity
        for category, severity in worst.items():
            threshold = self.settings.thresholds.get(category)
            if threshold is not None and severity >= threshold:
                findings.append(
                    Finding(
                        type=f"content:{category}:{severity}",
                        piece=piece.index,
                        score=min(1.0, severity / top),
                    )
                )
        findings.extend(Finding(type=f"blocklist:{name}", piece=piece.index) for name in blocklists)
        return findings

    async def _analyze_chunk(self, chunk: str) -> tuple[dict[str, int], list[str]]:
        body: dict[str, Any] = {"text": chunk, "outputType": self.settings.output_type}
        if self.settings.thresholds:
            body["categories"] = list(self.settings.thresholds)
        if self.settings.blocklists:
            body["blocklistNames"] = list(self.settings.blocklists)
            body["haltOnBlocklistHit"] = self.settings.halt_on_blocklist_hit
        data = await self.caller.call(lambda: self._post("text:analyze", body))
        try:
            severities = {
                str(item["category"]): int(item.get("severity") or 0)
                for item in data.get("categoriesAnalysis") or []
            }
            hits = [str(m["blocklistName"]) for m in data.get("blocklistsMatch") or []]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self._bad_response("text:analyze") from None
        return severities, hits

    # ------------------------------------------------------------------ text:shieldPrompt

    def _shield_plan(
        self, pieces: Sequence[TextPiece], shield: PromptShieldSettings
    ) -> list[_ShieldCall]:
        prompts: list[tuple[int, str]] = []
        documents: list[tuple[int, str]] = []
        for piece in pieces:
            if piece.kind in shield.document_kinds or (
                piece.role is not None and piece.role in shield.document_roles
            ):
                documents.extend(
                    (piece.index, c) for c in split_text(piece.text, MAX_SHIELD_DOCUMENT_CHARS)
                )
            elif piece.kind is PieceKind.MESSAGE and piece.role in (None, "user"):
                prompts.extend((piece.index, c) for c in split_text(piece.text))
        return plan_shield_calls(prompts, documents)

    async def _shield(self, plan: _ShieldCall) -> list[Finding]:
        body: dict[str, Any] = {"documents": list(plan.documents)}
        if plan.prompt is not None:
            body["userPrompt"] = plan.prompt
        data = await self.caller.call(lambda: self._post("text:shieldPrompt", body))
        findings: list[Finding] = []
        try:
            if plan.prompt_piece is not None and data["userPromptAnalysis"]["attackDetected"]:
                findings.append(Finding(type="prompt_attack:jailbreak", piece=plan.prompt_piece))
            analyses = data.get("documentsAnalysis") or []
            if len(analyses) != len(plan.documents):
                raise ValueError("documentsAnalysis length")
            for piece_index, analysis in zip(plan.document_pieces, analyses, strict=True):
                if analysis["attackDetected"]:
                    findings.append(Finding(type="prompt_attack:indirect", piece=piece_index))
        except (KeyError, TypeError, ValueError):
            raise self._bad_response("text:shieldPrompt") from None
        # one finding per piece and type, however many chunks of it were flagged
        return list({(f.type, f.piece): f for f in findings}.values())

    # ------------------------------------------------------------------ HTTP

    async def _auth_headers(self) -> dict[str, str]:
        if self._token_provider is not None:
            return {"Authorization": f"Bearer {await self._token_provider()}"}
        assert self._key is not None
        return {"Ocp-Apim-Subscription-Key": self._key.reveal()}

    async def _post(self, operation: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        label = f"{PROVIDER} profile {self.profile!r}: {operation}"
        try:
            response = await self._http.post(
                f"/{operation}",
                params={"api-version": self.settings.api_version},
                json=body,
                headers=await self._auth_headers(),
            )
        except httpx.TimeoutException:
            raise RemoteTimeoutError(f"{label}: timed out") from None
        except httpx.TransportError as exc:
            raise RemoteCheckError(
                f"{label}: {type(exc).__name__}", kind=ErrorKind.TRANSPORT
            ) from None
        if response.status_code >= 300:
            raise _status_error(label, response)
        try:
            data = response.json()
        except ValueError:
            raise self._bad_response(operation) from None
        if not isinstance(data, Mapping):
            raise self._bad_response(operation)
        return data

    def _bad_response(self, operation: str) -> RemoteCheckError:
        return RemoteCheckError(
            f"{PROVIDER} profile {self.profile!r}: {operation}: unexpected response body",
            kind=ErrorKind.BAD_RESPONSE,
        )


def _status_error(label: str, response: httpx.Response) -> RemoteCheckError:
    status = response.status_code
    code = ""
    try:
        error = response.json().get("error") or {}
        candidate = str(error.get("code", ""))
        # Only a short identifier: the service's message may quote the input.
        code = candidate if _SAFE_CODE.fullmatch(candidate) else ""
    except (ValueError, AttributeError):
        pass
    if status == 429:
        kind = ErrorKind.THROTTLED
    elif status >= 500:
        kind = ErrorKind.SERVER
    else:
        kind = ErrorKind.CLIENT
    return RemoteCheckError(
        f"{label}: HTTP {status}{f' {code}' if code else ''}",
        kind=kind,
        status=status,
        retry_after_s=_retry_after(response.headers),
    )


def _retry_after(headers: httpx.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001)):
        if name in headers:
            try:
                return float(headers[name]) * scale
            except ValueError:
                return None
    try:
        return float(headers["retry-after"]) if "retry-after" in headers else None
    except ValueError:
        return None  # an HTTP date: let the jittered backoff decide


def build(
    config: Mapping[str, Any],
    *,
    base_dir: str | None = None,
    profile: str | None = None,
    metrics: RemoteMetrics | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """Build an Azure Content Safety check from a profile's ``config`` (``base_dir`` unused)."""
    del base_dir
    return AzureContentSafetyCheck(
        AzureSettings.from_config(config), profile=profile, metrics=metrics, clock=clock
    )
