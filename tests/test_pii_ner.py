"""An optional spaCy NER model, loaded from a local directory, adds PERSON/LOCATION/ORGANIZATION.

No trained model is downloaded: the test saves a small rule-based spaCy pipeline (an
``entity_ruler`` with the same labels a trained English model produces) and points
``nlp_model`` at it, which exercises the same loading and mapping path as ``en_core_web_sm``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import spacy

from guardrails.base import CheckContext, Stage, TextPiece
from guardrails.pii.check import build


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(  # type: ignore[attr-defined]
        [
            {"label": "PERSON", "pattern": [{"LOWER": "dana"}, {"LOWER": "keller"}]},
            {"label": "GPE", "pattern": "Lisbon"},
            {"label": "ORG", "pattern": "Globex"},
            {"label": "DATE", "pattern": "Monday"},
        ]
    )
    path = tmp_path_factory.mktemp("models") / "tiny_ner"
    nlp.to_disk(path)
    return path


async def test_ner_entities_from_a_model_directory(model_dir: Path) -> None:
    check = build(
        {
            "nlp_model": model_dir.name,
            "entities": ["PERSON", "LOCATION", "ORGANIZATION", "EMAIL_ADDRESS"],
            "redaction": "reversible",
        },
        base_dir=str(model_dir.parent),
    )
    text = "Dana Keller from Globex in Lisbon wrote from dana@globex.com on Monday."
    ctx = CheckContext(stage=Stage.INPUT, request_id="r", request_type="chat")
    result = await check.scan([TextPiece(0, text)], ctx)
    assert [(f.type, text[f.start : f.end], f.replacement) for f in result.findings] == [
        ("PERSON", "Dana Keller", "[PERSON_1]"),
        ("ORGANIZATION", "Globex", "[ORGANIZATION_1]"),
        ("LOCATION", "Lisbon", "[LOCATION_1]"),
        ("EMAIL_ADDRESS", "dana@globex.com", "[EMAIL_ADDRESS_1]"),
    ]


async def test_ner_entities_not_configured_are_not_reported(model_dir: Path) -> None:
    check = build({"nlp_model": str(model_dir), "entities": ["PERSON"]})
    found = [(d.entity, d.start) for d in check.detect("Dana Keller visited Lisbon.")]
    assert found == [("PERSON", 0)]
