"""Which request ids may travel as a response header value (``header_safe_id``)."""

from __future__ import annotations

import pytest

from sidecar.context import header_safe_id, new_request_id


@pytest.mark.parametrize("rid", ["a", "req-42", "x" * 256, new_request_id()])
def test_visible_ascii_ids_travel_as_headers(rid: str) -> None:
    assert header_safe_id(rid) == rid


@pytest.mark.parametrize(
    "rid",
    ["", "x" * 257, "two words", "tab\there", "ends-with-newline\n", "inner\nbreak", "caf\u00e9"],
)
def test_other_ids_stay_out_of_headers(rid: str) -> None:
    assert header_safe_id(rid) is None
