"""AWS Bedrock Guardrails (``ApplyGuardrail``) as a guardrail check, provider ``bedrock``.

Each non-empty piece goes to the service in its own ``ApplyGuardrail`` call: the response's
assessments are not attributed to individual content blocks, so one call per piece is the only
way to say which piece a finding belongs to. Calls run concurrently (bounded by
``max_concurrency``) on a private thread pool because boto3 is synchronous.

The service's verdict becomes findings; the rule's action decides whether they block, redact or
are only recorded. Sensitive-information results the service ANONYMIZED (and nothing BLOCKED)
also give the piece's masked text in ``CheckResult.rewritten``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

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

PROVIDER = "bedrock"
_WHERE = "bedrock"
_VERSION = re.compile(r"(?:[1-9][0-9]{0,7}|DRAFT)")
# qualifiers a profile can give to pieces; ``guard_content`` is implied for the checked piece
CONTEXT_QUALIFIERS = ("grounding_source", "query")
_CONFIG_KEYS = (
    "guardrail_id",
    "guardrail_version",
    "region",
    "endpoint_url",
    "qualifiers",
    "include_detected",
    *RESILIENCE_CONFIG_KEYS,
)
_THROTTLING_CODES = frozenset(
    {"ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException"}
)
_CONFIDENCE_SCORE = {"NONE": 0.0, "LOW": 1 / 3, "MEDIUM": 2 / 3, "HIGH": 1.0}
_ACTED = frozenset({"BLOCKED", "ANONYMIZED"})

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BedrockSettings:
    guardrail_id: str
    guardrail_version: str
    region: str | None
    endpoint_url: str | None
    # context qualifier -> kinds of piece that provide it (contextual grounding)
    qualifiers: Mapping[str, frozenset[PieceKind]]
    # also report what the guardrail detected without acting on (its own detect mode)
    include_detected: bool
    policy: ResiliencePolicy

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BedrockSettings:
        if not isinstance(config, Mapping):
            raise CheckConfigError(f"{_WHERE}: config must be a mapping")
        reject_unknown_keys(config, _CONFIG_KEYS, _WHERE)
        guardrail_id = require_str(config, "guardrail_id", _WHERE)
        if len(guardrail_id) > 2048:
            raise CheckConfigError(f"{_WHERE}: guardrail_id is longer than 2048 characters")
        version = require_str(config, "guardrail_version", _WHERE)
        if not _VERSION.fullmatch(version):
            raise CheckConfigError(
                f"{_WHERE}: guardrail_version must be a number 1-99999999 or DRAFT, got {version!r}"
            )
        endpoint_url = read_str(config, "endpoint_url", _WHERE)
        if endpoint_url is not None and not endpoint_url.startswith(("https://", "http://")):
            raise CheckConfigError(f"{_WHERE}: endpoint_url must start with https:// or http://")
        return cls(
            guardrail_id=guardrail_id,
            guardrail_version=version,
            region=read_str(config, "region", _WHERE),
            endpoint_url=endpoint_url,
            qualifiers=_read_qualifiers(config.get("qualifiers")),
            include_detected=read_bool(config, "include_detected", False, _WHERE),
            policy=ResiliencePolicy.from_config(config, _WHERE),
        )


def _read_qualifiers(value: Any) -> Mapping[str, frozenset[PieceKind]]:
    """``{grounding_source: [tool_result], query: [message]}``: which pieces give context."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CheckConfigError(
            f"{_WHERE}: qualifiers must map grounding_source/query to lists of piece kinds"
        )
    result: dict[str, frozenset[PieceKind]] = {}
    for qualifier, kinds in value.items():
        if qualifier not in CONTEXT_QUALIFIERS:
            raise CheckConfigError(
                f"{_WHERE}: qualifiers: unknown qualifier {qualifier!r} "
                f"(known: {', '.join(CONTEXT_QUALIFIERS)}; guard_content is implied)"
            )
        if not isinstance(kinds, list | tuple) or not kinds:
            raise CheckConfigError(f"{_WHERE}: qualifiers.{qualifier} must be a list of kinds")
        parsed: set[PieceKind] = set()
        for kind in kinds:
            try:
                parsed.add(PieceKind(kind))
            except ValueError:
                known = ", ".join(k.value for k in PieceKind)
                raise CheckConfigError(
                    f"{_WHERE}: qualifiers.{qualifier}: unknown piece kind {kind!r} "
                    f"(known: {known})"
                ) from None
        result[qualifier] = frozenset(parsed)
    return result


class _DropWireDebug(logging.Filter):
    """Drops botocore's DEBUG records on the loggers that dump requests and responses.

    Those records carry the text being checked, the PII the service matched and, for temporary
    credentials, the ``X-Amz-Security-Token`` header. Nothing of that may reach logs, whatever
    level an operator sets.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_WIRE_LOGGERS = ("botocore.endpoint", "botocore.parsers", "botocore.auth", "botocore.awsrequest")


def _silence_wire_debug() -> None:
    for name in _WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropWireDebug) for f in logger.filters):
            logger.addFilter(_DropWireDebug())


class BedrockGuardrailCheck:
    provider = PROVIDER

    def __init__(
        self,
        settings: BedrockSettings,
        *,
        profile: str | None = None,
        metrics: RemoteMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        session: boto3.session.Session | None = None,
    ) -> None:
        self.settings = settings
        policy = settings.policy
        self.profile = profile or settings.guardrail_id
        session = session if session is not None else boto3.session.Session()
        region = settings.region or session.region_name
        if not region:
            raise CheckConfigError(
                f"{_WHERE}: region is required (in config, or AWS_REGION / AWS_DEFAULT_REGION)"
            )
        _silence_wire_debug()
        boto_config = BotoConfig(
            connect_timeout=policy.timeout_s,
            read_timeout=policy.timeout_s,
            # Retries are ours (ResilientCaller) so they share the breaker and the metrics.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=policy.max_concurrency,
            user_agent_extra="llm-cache-sidecar",
        )
        self._client = session.client(
            "bedrock-runtime",
            region_name=region,
            endpoint_url=settings.endpoint_url,
            config=boto_config,
        )
        # A call abandoned on timeout keeps its thread until botocore's own read timeout; twice
        # the concurrency limit leaves room for those without letting threads grow unbounded.
        self._executor = ThreadPoolExecutor(
            max_workers=2 * policy.max_concurrency, thread_name_prefix="bedrock-guardrail"
        )
        self.caller = ResilientCaller(PROVIDER, self.profile, policy, metrics=metrics, clock=clock)

    def max_span(self) -> int | None:
        return None  # the service judges the whole text

    async def scan(self, pieces: Sequence[TextPiece], ctx: CheckContext) -> CheckResult:
        source = "INPUT" if ctx.stage is Stage.INPUT else "OUTPUT"
        targets = [p for p in pieces if p.text.strip()]
        context = self._grounding_context(targets, ctx)
        verdicts = await run_all(self._apply(piece, source, context) for piece in targets)
        result = CheckResult()
        for piece, (findings, masked) in zip(targets, verdicts, strict=True):
            result.findings.extend(findings)
            if masked is not None and masked != piece.text:
                result.rewritten[piece.index] = masked
        return result

    def _grounding_context(
        self, pieces: Sequence[TextPiece], ctx: CheckContext
    ) -> list[dict[str, Any]]:
        """Context blocks (grounding sources, query) for contextual grounding checks.

        The sources (tool results) and the question arrive on the input stage, the answer on
        the output stage: the input stage keeps them in the request's memory (never logged or
        cached) and the output stage sends them with each answer piece.
        """
        if not self.settings.qualifiers:
            return []
        key = f"bedrock.grounding:{self.profile}"
        if ctx.stage is Stage.INPUT:
            remembered: list[tuple[str, str]] = []
            for qualifier, kinds in self.settings.qualifiers.items():
                matching = [p.text for p in pieces if p.kind in kinds]
                if qualifier == "query":
                    users = [p.text for p in pieces if p.kind in kinds and p.role in (None, "user")]
                    matching = users[-1:]  # the question the answer will respond to
                remembered.extend((qualifier, text) for text in matching)
            ctx.request_state[key] = remembered
            return []
        return [
            {"text": {"text": text, "qualifiers": [qualifier]}}
            for qualifier, text in ctx.request_state.get(key) or []
        ]

    async def _apply(
        self, piece: TextPiece, source: str, context: list[dict[str, Any]]
    ) -> tuple[list[Finding], str | None]:
        text_block: dict[str, Any] = {"text": piece.text}
        if context:
            text_block["qualifiers"] = ["guard_content"]
        call = functools.partial(
            self._client.apply_guardrail,
            guardrailIdentifier=self.settings.guardrail_id,
            guardrailVersion=self.settings.guardrail_version,
            source=source,
            content=[*context, {"text": text_block}],
        )

        async def attempt() -> tuple[list[Finding], str | None]:
            loop = asyncio.get_running_loop()
            try:
                response: Mapping[str, Any] = await loop.run_in_executor(self._executor, call)
            except (ClientError, BotoCoreError) as exc:
                raise self._classify(exc) from None
            # Interpreted inside the attempt so a malformed answer counts against the breaker.
            return interpret_response(
                response, piece, include_detected=self.settings.include_detected
            )

        return await self.caller.call(attempt)

    def _classify(self, exc: Exception) -> RemoteCheckError:
        label = f"{PROVIDER} profile {self.profile!r}"
        if isinstance(exc, ClientError):
            # Only the error code and status: the service's message may quote the input.
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            retry_after = _retry_after(exc.response.get("ResponseMetadata", {}))
            if code in _THROTTLING_CODES or status == 429:
                kind = ErrorKind.THROTTLED
            elif isinstance(status, int) and status >= 500:
                kind = ErrorKind.SERVER
            else:
                kind = ErrorKind.CLIENT
            return RemoteCheckError(
                f"{label}: {code} (HTTP {status})",
                kind=kind,
                status=status if isinstance(status, int) else None,
                retry_after_s=retry_after,
            )
        if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
            return RemoteTimeoutError(f"{label}: {type(exc).__name__}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return RemoteCheckError(
                f"{label}: no usable AWS credentials ({type(exc).__name__})", kind=ErrorKind.CLIENT
            )
        if isinstance(exc, EndpointConnectionError | ConnectionClosedError):
            return RemoteCheckError(f"{label}: {type(exc).__name__}", kind=ErrorKind.TRANSPORT)
        return RemoteCheckError(f"{label}: {type(exc).__name__}", kind=ErrorKind.TRANSPORT)

    async def aclose(self) -> None:
        self.caller.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def _retry_after(metadata: Mapping[str, Any]) -> float | None:
    value = (metadata.get("HTTPHeaders") or {}).get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- response mapping


def _policy_entries(assessment: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(finding type, entry) for every entry of an assessment that names what was found."""
    for topic in (assessment.get("topicPolicy") or {}).get("topics") or []:
        yield f"topic:{topic.get('name', 'unnamed')}", topic
    for flt in (assessment.get("contentPolicy") or {}).get("filters") or []:
        yield f"content:{flt.get('type', 'UNKNOWN')}:{flt.get('confidence', 'NONE')}", flt
    words = assessment.get("wordPolicy") or {}
    for word in words.get("customWords") or []:
        yield "word:custom", word
    for word in words.get("managedWordLists") or []:
        yield f"word:{word.get('type', 'managed')}", word
    sensitive = assessment.get("sensitiveInformationPolicy") or {}
    for entity in sensitive.get("piiEntities") or []:
        yield f"pii:{entity.get('type', 'UNKNOWN')}", entity
    for regex in sensitive.get("regexes") or []:
        yield f"regex:{regex.get('name', 'unnamed')}", regex
    for flt in (assessment.get("contextualGroundingPolicy") or {}).get("filters") or []:
        yield f"grounding:{flt.get('type', 'UNKNOWN')}", flt


def _entry_score(finding_type: str, entry: Mapping[str, Any]) -> float:
    if finding_type.startswith("content:"):
        return _CONFIDENCE_SCORE.get(str(entry.get("confidence")), 1.0)
    if finding_type.startswith("grounding:"):
        # The service's score says how grounded the answer is; a finding's score says how sure
        # the problem is, so it is the complement.
        score = entry.get("score")
        return 1.0 - float(score) if isinstance(score, int | float) else 1.0
    return 1.0


def interpret_response(
    response: Mapping[str, Any], piece: TextPiece, *, include_detected: bool = False
) -> tuple[list[Finding], str | None]:
    """Turn one ApplyGuardrail response into findings and, when anonymized, the masked text."""
    action = response.get("action")
    if action not in ("NONE", "GUARDRAIL_INTERVENED"):
        raise RemoteCheckError(
            f"{PROVIDER}: response has no valid action", kind=ErrorKind.BAD_RESPONSE
        )
    findings: list[Finding] = []
    blocked = anonymized = False
    # where to look for the next occurrence of a matched string (repeated entries, repeated text)
    search_from: dict[str, int] = {}
    for assessment in response.get("assessments") or []:
        for finding_type, entry in _policy_entries(assessment):
            entry_action = str(entry.get("action", "NONE"))
            if entry_action not in _ACTED and not (include_detected and entry.get("detected")):
                continue
            blocked |= entry_action == "BLOCKED"
            anonymized |= entry_action == "ANONYMIZED"
            start = end = -1
            match = entry.get("match")
            if isinstance(match, str) and match:
                found = piece.text.find(match, search_from.get(match, 0))
                if found >= 0:
                    start, end = found, found + len(match)
                    search_from[match] = end
            findings.append(
                Finding(
                    type=finding_type,
                    piece=piece.index,
                    start=start,
                    end=end,
                    score=_entry_score(finding_type, entry),
                )
            )
    if action == "GUARDRAIL_INTERVENED" and not (blocked or anonymized):
        # An intervention we cannot attribute (e.g. a newer policy type) must not pass silently.
        findings.append(Finding(type="bedrock:intervened", piece=piece.index))
    masked: str | None = None
    if action == "GUARDRAIL_INTERVENED" and anonymized and not blocked:
        outputs = response.get("outputs") or []
        texts = [o.get("text") for o in outputs if isinstance(o, Mapping)]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise RemoteCheckError(
                f"{PROVIDER}: anonymized response without output text",
                kind=ErrorKind.BAD_RESPONSE,
            )
        masked = "".join(t for t in texts if isinstance(t, str))
    return findings, masked


def build(
    config: Mapping[str, Any],
    *,
    base_dir: str | None = None,
    profile: str | None = None,
    metrics: RemoteMetrics | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """Build a Bedrock check from a profile's ``config`` (``base_dir`` is unused)."""
    del base_dir
    return BedrockGuardrailCheck(
        BedrockSettings.from_config(config), profile=profile, metrics=metrics, clock=clock
    )
