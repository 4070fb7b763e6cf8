"""A local stand-in for Bedrock Runtime's ``ApplyGuardrail`` (rest-json, SigV4).

It serves ``POST /guardrail/{id}/version/{version}/apply``, verifies the SigV4 signature of every
request against the credentials it was given (as AWS does, independently of botocore), and
answers with the real response shapes from a small deterministic guardrail:

* denied topic ``Investment advice``: text mentioning "stock tips";
* content filters: "vermin" is HATE/HIGH, "punch you" is VIOLENCE/MEDIUM, and on INPUT
  "ignore previous instructions" is PROMPT_ATTACK/HIGH;
* custom word "frobnicate" and managed PROFANITY word "darn";
* PII: e-mail addresses ANONYMIZED as ``{EMAIL}``, US SSNs BLOCKED; regex ``ticket-id``
  (``TICKET-\\d{4}``) ANONYMIZED;
* contextual grounding: a ``guard_content`` block whose words are mostly absent from the
  ``grounding_source`` blocks is BLOCKED (GROUNDING score below 0.5).

Scripted replies (throttling, 5xx, held replies) take precedence, see ``FakeJsonServer``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any
from urllib.parse import quote

from .server import FakeJsonServer, Recorded, Reply

BLOCKED_MESSAGE = "Sorry, the model cannot answer this question."
_PATH = re.compile(r"^/guardrail/(?P<id>[^/]+)/version/(?P<version>[^/]+)/apply$")
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<akid>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
    r"Signature=(?P<sig>[0-9a-f]{64})$"
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_TICKET = re.compile(r"TICKET-\d{4}")


def error(status: int, code: str, message: str) -> Reply:
    """A rest-json error as AWS sends it: the code in a header, the message in the body."""
    return Reply(status, {"message": message}, {"x-amzn-ErrorType": f"{code}:http://internal"})


THROTTLED = error(429, "ThrottlingException", "Your request rate is too high.")
SERVER_ERROR = error(500, "InternalServerException", "Internal server error")
UNAVAILABLE = error(503, "ServiceUnavailableException", "Service unavailable")


class FakeBedrock(FakeJsonServer):
    def __init__(
        self,
        *,
        access_key: str,
        secret_key: str,
        session_token: str | None = None,
        region: str = "us-east-1",
        guardrails: dict[str, set[str]] | None = None,
    ) -> None:
        super().__init__()
        self.access_key = access_key
        self.secret_key = secret_key
        self.session_token = session_token
        self.region = region
        # guardrail id -> versions that exist
        self.guardrails = guardrails if guardrails is not None else {"gr-test": {"1", "DRAFT"}}
        self.signature_failures = 0

    # ------------------------------------------------------------------ protocol

    def respond(self, request: Recorded) -> Reply:
        problem = self.auth_problem(request)
        if problem is not None:
            self.signature_failures += 1
            return problem
        match = _PATH.match(request.path)
        if request.method != "POST" or match is None:
            return error(404, "UnknownOperationException", "Unknown operation")
        versions = self.guardrails.get(match["id"])
        if versions is None or match["version"] not in versions:
            return error(404, "ResourceNotFoundException", "The guardrail was not found.")
        body = request.json()
        if not isinstance(body, dict) or body.get("source") not in ("INPUT", "OUTPUT"):
            return error(400, "ValidationException", "source must be INPUT or OUTPUT")
        content = body.get("content")
        if not isinstance(content, list) or not content:
            return error(400, "ValidationException", "content must not be empty")
        return Reply(200, evaluate(body["source"], content))

    def auth_problem(self, request: Recorded) -> Reply | None:
        header = request.headers.get("authorization", "")
        found = _AUTH.match(header)
        if found is None:
            return error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        if found["akid"] != self.access_key:
            return error(
                403, "UnrecognizedClientException", "The security token included is invalid."
            )
        if self.session_token is not None:
            if request.headers.get("x-amz-security-token") != self.session_token:
                return error(403, "UnrecognizedClientException", "Invalid session token.")
        if found["region"] != self.region or found["service"] != "bedrock":
            return error(403, "InvalidSignatureException", "Credential should be scoped correctly.")
        expected = self._signature(request, found["signed"].split(";"), found["date"])
        if expected is None or not hmac.compare_digest(expected, found["sig"]):
            return error(403, "InvalidSignatureException", "The request signature does not match.")
        return None

    def _signature(self, request: Recorded, signed: list[str], date: str) -> str | None:
        amz_date = request.headers.get("x-amz-date")
        if amz_date is None or not amz_date.startswith(date) or "host" not in signed:
            return None
        canonical_headers = "".join(
            f"{name}:{' '.join(request.headers.get(name, '').split())}\n" for name in signed
        )
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, values in sorted(request.query.items())
            for v in sorted(values)
        )
        canonical = "\n".join(
            [
                request.method,
                quote(request.path, safe="/~"),
                query,
                canonical_headers,
                ";".join(signed),
                hashlib.sha256(request.raw_body).hexdigest(),
            ]
        )
        scope = f"{date}/{self.region}/bedrock/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = f"AWS4{self.secret_key}".encode()
        for part in (date, self.region, "bedrock", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------- the fake guardrail


def evaluate(source: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    texts = [(b.get("text") or {}) for b in content]
    guarded = [t.get("text", "") for t in texts if _is_guarded(t)]
    sources = [t.get("text", "") for t in texts if "grounding_source" in t.get("qualifiers", [])]
    joined = "\n".join(guarded)
    assessment: dict[str, Any] = {}
    topics = []
    if "stock tips" in joined.lower():
        topics.append(_acted({"name": "Investment advice", "type": "DENY"}, "BLOCKED"))
    if topics:
        assessment["topicPolicy"] = {"topics": topics}
    filters = []
    if "vermin" in joined.lower():
        filters.append(_content("HATE", "HIGH"))
    if "punch you" in joined.lower():
        filters.append(_content("VIOLENCE", "MEDIUM"))
    if source == "INPUT" and "ignore previous instructions" in joined.lower():
        filters.append(_content("PROMPT_ATTACK", "HIGH"))
    if filters:
        assessment["contentPolicy"] = {"filters": filters}
    words: dict[str, list[dict[str, Any]]] = {}
    if "frobnicate" in joined.lower():
        words["customWords"] = [_acted({"match": "frobnicate"}, "BLOCKED")]
    if "darn" in joined.lower():
        words["managedWordLists"] = [_acted({"match": "darn", "type": "PROFANITY"}, "BLOCKED")]
    if words:
        assessment["wordPolicy"] = words
    pii = [_acted({"match": m, "type": "EMAIL"}, "ANONYMIZED") for m in _EMAIL.findall(joined)]
    pii += [
        _acted({"match": m, "type": "US_SOCIAL_SECURITY_NUMBER"}, "BLOCKED")
        for m in _SSN.findall(joined)
    ]
    regexes = [
        _acted({"name": "ticket-id", "match": m, "regex": _TICKET.pattern}, "ANONYMIZED")
        for m in _TICKET.findall(joined)
    ]
    if pii or regexes:
        assessment["sensitiveInformationPolicy"] = {"piiEntities": pii, "regexes": regexes}
    if sources and guarded:
        score = _grounding_score(joined, " ".join(sources))
        grounding = {"type": "GROUNDING", "threshold": 0.5, "score": score}
        assessment["contextualGroundingPolicy"] = {
            "filters": [_acted(grounding, "BLOCKED" if score < 0.5 else "NONE")]
        }

    entries = [e for policy in _entries(assessment) for e in policy]
    blocked = any(e["action"] == "BLOCKED" for e in entries)
    anonymized = any(e["action"] == "ANONYMIZED" for e in entries)
    if blocked:
        outputs = [{"text": BLOCKED_MESSAGE}]
    elif anonymized:
        masked = _EMAIL.sub("{EMAIL}", joined)
        outputs = [{"text": _TICKET.sub("{ticket-id}", masked)}]
    else:
        outputs = []
    characters = sum(len(t) for t in guarded)
    return {
        "usage": {
            "topicPolicyUnits": 1,
            "contentPolicyUnits": 1,
            "wordPolicyUnits": 1,
            "sensitiveInformationPolicyUnits": 1,
            "sensitiveInformationPolicyFreeUnits": 0,
            "contextualGroundingPolicyUnits": 1 if sources else 0,
        },
        "action": "GUARDRAIL_INTERVENED" if blocked or anonymized else "NONE",
        "actionReason": "Guardrail blocked." if blocked else "No action.",
        "outputs": outputs,
        "assessments": [assessment] if assessment else [{}],
        "guardrailCoverage": {"textCharacters": {"guarded": characters, "total": characters}},
    }


def _is_guarded(text_block: dict[str, Any]) -> bool:
    qualifiers = text_block.get("qualifiers") or []
    return not qualifiers or "guard_content" in qualifiers


def _acted(entry: dict[str, Any], action: str) -> dict[str, Any]:
    return {**entry, "action": action, "detected": True}


def _content(kind: str, confidence: str) -> dict[str, Any]:
    return _acted({"type": kind, "confidence": confidence, "filterStrength": "HIGH"}, "BLOCKED")


def _entries(assessment: dict[str, Any]) -> list[list[dict[str, Any]]]:
    words = assessment.get("wordPolicy", {})
    sensitive = assessment.get("sensitiveInformationPolicy", {})
    return [
        assessment.get("topicPolicy", {}).get("topics", []),
        assessment.get("contentPolicy", {}).get("filters", []),
        words.get("customWords", []),
        words.get("managedWordLists", []),
        sensitive.get("piiEntities", []),
        sensitive.get("regexes", []),
        assessment.get("contextualGroundingPolicy", {}).get("filters", []),
    ]


def _grounding_score(answer: str, sources: str) -> float:
    answer_words = set(re.findall(r"\w+", answer.lower()))
    source_words = set(re.findall(r"\w+", sources.lower()))
    if not answer_words:
        return 1.0
    return round(len(answer_words & source_words) / len(answer_words), 2)
