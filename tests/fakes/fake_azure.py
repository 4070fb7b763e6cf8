"""A local stand-in for Azure AI Content Safety's text operations.

Serves ``POST /contentsafety/text:analyze`` and ``POST /contentsafety/text:shieldPrompt`` with
the ``api-version`` query parameter, ``Ocp-Apim-Subscription-Key`` (or a bearer token) auth and
the service's JSON shapes and input limits. Its classifier is deterministic:

* severities come from markers in the text, ``<Hate:5>`` meaning severity 5 on the eight-level
  scale; FourSeverityLevels answers round down to 0/2/4/6 as the service does;
* blocklists are substring matches (case-insensitive) of the items given to the constructor;
* a prompt or document is an attack when it contains "ignore previous instructions" or
  "you are DAN".
"""

from __future__ import annotations

import re
from typing import Any

from .server import FakeJsonServer, Recorded, Reply

CATEGORIES = ("Hate", "SelfHarm", "Sexual", "Violence")
ANALYZE_VERSIONS = {"2023-10-01", "2024-09-01"}
SHIELD_VERSIONS = {"2024-09-01"}
_MARKER = re.compile(r"<(Hate|SelfHarm|Sexual|Violence):([0-7])>")
_ATTACKS = ("ignore previous instructions", "you are dan")


def error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}})


THROTTLED = Reply(
    429,
    {"error": {"code": "TooManyRequests", "message": "Rate limit is exceeded."}},
    {"Retry-After": "0"},
)
SERVER_ERROR = error(500, "InternalServerError", "Internal server error.")


class FakeAzureContentSafety(FakeJsonServer):
    def __init__(
        self,
        *,
        key: str | None = None,
        bearer_token: str | None = None,
        blocklists: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.key = key
        self.bearer_token = bearer_token
        self.blocklists = blocklists or {}

    def respond(self, request: Recorded) -> Reply:
        if not self._authorized(request):
            return error(401, "401", "Access denied due to invalid subscription key.")
        version = (request.query.get("api-version") or [""])[0]
        if request.path == "/contentsafety/text:analyze":
            if version not in ANALYZE_VERSIONS:
                return error(404, "404", "Resource not found")
            return self._analyze(request.json())
        if request.path == "/contentsafety/text:shieldPrompt":
            if version not in SHIELD_VERSIONS:
                return error(404, "404", "Resource not found")
            return self._shield(request.json())
        return error(404, "404", "Resource not found")

    def _authorized(self, request: Recorded) -> bool:
        if self.key is not None and request.headers.get("ocp-apim-subscription-key") == self.key:
            return True
        bearer = request.headers.get("authorization", "")
        return self.bearer_token is not None and bearer == f"Bearer {self.bearer_token}"

    def _analyze(self, body: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return error(400, "InvalidRequestBody", "text is required")
        text: str = body["text"]
        if len(text) > 10_000:
            return error(400, "InvalidRequestBody", "text exceeds 10000 characters")
        categories = body.get("categories") or list(CATEGORIES)
        if any(c not in CATEGORIES for c in categories):
            return error(400, "InvalidRequestBody", "unknown category")
        output_type = body.get("outputType", "FourSeverityLevels")
        if output_type not in ("FourSeverityLevels", "EightSeverityLevels"):
            return error(400, "InvalidRequestBody", "unknown outputType")
        matches = []
        for name in body.get("blocklistNames") or []:
            if name not in self.blocklists:
                return error(404, "NotFound", "blocklist not found")
            for i, item in enumerate(self.blocklists[name]):
                if item.lower() in text.lower():
                    matches.append(
                        {
                            "blocklistName": name,
                            "blocklistItemId": f"id-{i}",
                            "blocklistItemText": item,
                        }
                    )
        analysis = []
        if not (matches and body.get("haltOnBlocklistHit")):
            for category in categories:
                found = [int(s) for c, s in _MARKER.findall(text) if c == category]
                severity = max(found, default=0)
                if output_type == "FourSeverityLevels":
                    severity -= severity % 2
                analysis.append({"category": category, "severity": severity})
        return Reply(200, {"blocklistsMatch": matches, "categoriesAnalysis": analysis})

    def _shield(self, body: Any) -> Reply:
        if not isinstance(body, dict):
            return error(400, "InvalidRequestBody", "body must be an object")
        prompt = body.get("userPrompt")
        documents = body.get("documents") or []
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > 10_000):
            return error(400, "InvalidRequestBody", "userPrompt too long")
        if len(documents) > 5 or sum(len(d) for d in documents) > 10_000:
            return error(400, "InvalidRequestBody", "documents exceed the limits")
        return Reply(
            200,
            {
                "userPromptAnalysis": {"attackDetected": _is_attack(prompt or "")},
                "documentsAnalysis": [{"attackDetected": _is_attack(d)} for d in documents],
            },
        )


def _is_attack(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _ATTACKS)
