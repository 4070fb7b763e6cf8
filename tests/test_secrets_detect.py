"""Detection steps of the secret scanner, one at a time, on small hand-written rule sets."""

from __future__ import annotations

import base64
import random
import string
from urllib.parse import quote

import pytest
from secrets_fakes import Fakes, j

from guardrails.secrets import SecretScanner, parse_gitleaks_toml, shannon_entropy
from guardrails.secrets.detect import SecretFinding, non_overlapping
from guardrails.secrets.patterns import Regex, RuleMatcher, lazy_prefix

f = Fakes(7)
GHP = j("gh", "p_") + f.mixed(36)  # a fake GitHub token, built at run time

TOKEN_RULES = """
[[rules]]
id = "fake-token"
regex = '''\\b(tok_[A-Za-z0-9]{24})\\b'''
keywords = ["tok_"]
entropy = 3.0
"""


def scanner(toml: str, **kwargs: object) -> SecretScanner:
    return SecretScanner(parse_gitleaks_toml(toml), **kwargs)  # type: ignore[arg-type]


def ids(findings: list[SecretFinding]) -> list[str]:
    return [x.rule_id for x in findings]


# --- keyword pre-filter ----------------------------------------------------------------------

PREFILTER_RULES = """
[[rules]]
id = "needs-keyword"
regex = '''abc[0-9]{4}'''
keywords = ["ZZMarker"]
"""


def test_rule_runs_only_when_a_keyword_occurs() -> None:
    s = scanner(PREFILTER_RULES)
    assert s.scan("value abc1234") == []  # the regex alone would match
    assert ids(s.scan("zzmarker: abc1234")) == ["needs-keyword"]
    assert ids(s.scan("ZZMARKER abc1234")) == ["needs-keyword"]  # keywords are case-blind


def test_rule_without_keywords_always_runs() -> None:
    s = scanner("[[rules]]\nid = 'always'\nregex = '''abc[0-9]{4}'''\n")
    assert ids(s.scan("value abc1234")) == ["always"]


# --- entropy -----------------------------------------------------------------------------------


def test_shannon_entropy_values() -> None:
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("ab") == pytest.approx(1.0)
    assert shannon_entropy("abcd") == pytest.approx(2.0)
    assert shannon_entropy("aabb") == pytest.approx(1.0)
    # Gitleaks divides code-point counts by the UTF-8 length: one 2-byte character -> 0.5
    assert shannon_entropy("é") == pytest.approx(0.5)


def test_entropy_threshold_is_exclusive() -> None:
    s = scanner("[[rules]]\nid = 'e'\nregex = '''v=([a-z]+)'''\nentropy = 2.0\n")
    assert s.scan("v=abcd") == []  # entropy exactly 2.0 is dropped
    found = s.scan("v=abcde")
    assert ids(found) == ["e"]
    assert found[0].entropy == pytest.approx(shannon_entropy("abcde"))


def test_low_entropy_placeholder_is_dropped() -> None:
    s = scanner(TOKEN_RULES)
    assert s.scan("tok_" + "x" * 24) == []
    assert ids(s.scan("tok_" + f.mixed(24))) == ["fake-token"]


# --- secret group and spans ------------------------------------------------------------------


def test_secret_group_selects_the_span() -> None:
    s = scanner("[[rules]]\nid = 'g'\nregex = '''(user)=(\\w+);(pass)=(\\w+)'''\nsecretGroup = 4\n")
    text = "login user=alice;pass=Hunter2Hunter2 done"
    [found] = s.scan(text)
    assert text[found.start : found.end] == "Hunter2Hunter2"
    assert text[found.match_start : found.match_end] == "user=alice;pass=Hunter2Hunter2"


def test_first_non_empty_group_is_the_secret_by_default() -> None:
    s = scanner("[[rules]]\nid = 'g'\nregex = '''key=(?:(\\d+)|([a-z]+))'''\n")
    text = "key=abcdef"
    [found] = s.scan(text)
    assert text[found.start : found.end] == "abcdef"


def test_redaction_span_covers_only_the_secret() -> None:
    s = SecretScanner.builtin()
    text = f"Here is my token {GHP} - please don't share it."
    [found] = s.scan(text)
    assert found.rule_id == "github-pat"
    assert text[found.start : found.end] == GHP
    redacted = text[: found.start] + "[SECRET:github-pat]" + text[found.end :]
    assert redacted == "Here is my token [SECRET:github-pat] - please don't share it."


def test_offsets_are_string_indices_in_non_ascii_text() -> None:
    s = SecretScanner.builtin()
    text = f"héllo wörld 日本語 🙂 token {GHP} ünd"
    [found] = s.scan(text)
    assert text[found.start : found.end] == GHP


def test_lone_surrogates_do_not_break_scanning() -> None:
    s = SecretScanner.builtin()
    text = "broken \ud800 json " + GHP
    [found] = s.scan(text)
    assert text[found.start : found.end] == GHP


# --- allowlists and stopwords ----------------------------------------------------------------


def allow_rules(allowlist: str) -> str:
    return (
        "[[rules]]\nid = 'kv'\nregex = '''(\\w+)=([A-Za-z0-9]{8,})'''\nsecretGroup = 2\n"
        + allowlist
    )


def test_allowlist_regex_targets_secret_match_or_line() -> None:
    text = "# fixture\ndemo=Abcdef123456 and more"
    on_secret = allow_rules("[[rules.allowlists]]\nregexes = ['''^Abc''']\n")
    on_match = allow_rules(
        "[[rules.allowlists]]\nregexTarget = 'match'\nregexes = ['''^demo=''']\n"
    )
    on_line = allow_rules(
        "[[rules.allowlists]]\nregexTarget = 'line'\nregexes = ['''and more$''']\n"
    )
    misses_secret = allow_rules("[[rules.allowlists]]\nregexes = ['''^demo''']\n")
    for toml in (on_secret, on_match, on_line):
        assert scanner(toml).scan(text) == []
    assert ids(scanner(misses_secret).scan(text)) == ["kv"]


def test_stopwords_are_case_insensitive_substrings_of_the_secret() -> None:
    toml = allow_rules("[[rules.allowlists]]\nstopwords = ['sample']\n")
    assert scanner(toml).scan("k=mySAMPLEvalue9") == []
    assert ids(scanner(toml).scan("sample=Abcdef123456")) == ["kv"]  # only the secret counts


def test_large_stopword_lists_use_the_same_semantics() -> None:
    words = [f"word{i:03d}" for i in range(50)] + ["needle"]
    toml = allow_rules(f"[[rules.allowlists]]\nstopwords = {words!r}\n")
    assert scanner(toml).scan("k=xxNEEDLExx99") == []
    assert ids(scanner(toml).scan("k=xxHAYSTACKxx99")) == ["kv"]


def test_and_condition_needs_every_criterion() -> None:
    toml = allow_rules(
        "[[rules.allowlists]]\ncondition = 'AND'\nregexes = ['''^Test''']\n"
        "stopwords = ['fixture']\n"
    )
    s = scanner(toml)
    assert s.scan("k=TestFixture123") == []  # both hold
    assert ids(s.scan("k=TestValue1234")) == ["kv"]  # regex only
    assert ids(s.scan("k=MyFixture1234")) == ["kv"]  # stopword only


def test_and_condition_with_paths_never_applies_without_a_path() -> None:
    toml = allow_rules(
        "[[rules.allowlists]]\ncondition = 'AND'\npaths = ['''\\.md$''']\nregexes = ['''.''']\n"
    )
    s = scanner(toml)
    assert ids(s.scan("k=Abcdef123456")) == ["kv"]
    assert s.scan("k=Abcdef123456", path="README.md") == []


def test_global_allowlist_applies_to_all_rules_or_to_its_targets() -> None:
    rules = TOKEN_RULES + "[[rules]]\nid = 'other'\nregex = '''\\b(oth_[a-z0-9]{12})\\b'''\n"
    token = "tok_" + f.mixed(24)
    other = "oth_" + f.chars(string.ascii_lowercase, 12)
    text = f"{token} {other}"
    everywhere = "[[allowlists]]\nregexes = ['''.''']\n" + rules
    targeted = "[[allowlists]]\ntargetRules = ['other']\nregexes = ['''.''']\n" + rules
    assert scanner(everywhere).scan(text) == []
    assert ids(scanner(targeted).scan(text)) == ["fake-token"]


def test_allow_comment_is_ignored_unless_enabled() -> None:
    text = "tok_" + f.mixed(24) + "  # gitleaks:allow"
    assert ids(scanner(TOKEN_RULES).scan(text)) == ["fake-token"]
    assert scanner(TOKEN_RULES, honor_allow_comments=True).scan(text) == []


# --- paths -----------------------------------------------------------------------------------

PATH_RULES = """
[[rules]]
id = "p12-file"
path = '''\\.p12$'''

[[rules]]
id = "yaml-only"
regex = '''kind: Secret'''
path = '''\\.ya?ml$'''
"""


def test_path_rules() -> None:
    s = scanner(PATH_RULES)
    # prompts have no path: path-only rules never fire, path restrictions are ignored
    assert ids(s.scan("kind: Secret")) == ["yaml-only"]
    assert ids(s.scan("kind: Secret", path="deploy.yaml")) == ["yaml-only"]
    assert s.scan("kind: Secret", path="notes.txt") == []
    [p12] = s.scan("", path="certs/client.p12")
    assert (p12.rule_id, p12.start, p12.end) == ("p12-file", -1, -1)


# --- de-duplication --------------------------------------------------------------------------

DEDUPE_RULES = (
    TOKEN_RULES
    + """
[[rules]]
id = "generic-assignment"
regex = '''(?i)token\\s*=\\s*([A-Za-z0-9_]{12,})'''
"""
)


def test_generic_finding_yields_to_a_specific_one_on_the_same_line() -> None:
    s = scanner(DEDUPE_RULES)
    token = "tok_" + f.mixed(24)
    assert ids(s.scan(f"token = {token}")) == ["fake-token"]
    # a generic secret that no specific rule found stays
    assert ids(s.scan(f"token = {f.mixed(20)}")) == ["generic-assignment"]


def test_dedupe_is_per_line() -> None:
    s = scanner(DEDUPE_RULES)
    token = "tok_" + f.mixed(24)
    text = f"token = {token}\nagain: {token}"
    # the specific rule finds both copies; the generic one on line 0 is a duplicate
    assert sorted(ids(s.scan(text))) == ["fake-token", "fake-token"]
    text = f"token = {token}\n"
    assert ids(s.scan(text)) == ["fake-token"]


# --- decoding --------------------------------------------------------------------------------


def test_base64_hex_and_percent_segments_are_decoded() -> None:
    s = SecretScanner.builtin()
    inner = f"export TOKEN={GHP}"
    percent = quote(inner, safe="")
    for encoded, kind, span in (
        # the span is the encoded segment holding the secret ...
        (base64.b64encode(inner.encode()).decode(), "base64", None),
        (inner.encode().hex(), "hex", None),
        # ... or the secret itself when only the text around it was encoded
        (percent, "percent", GHP),
    ):
        text = f"config blob: {encoded} (end)"
        [found] = s.scan(text)
        assert found.rule_id == "github-pat"
        assert found.encodings == (kind,)
        assert text[found.start : found.end] == (span or encoded)


def test_nested_encodings_are_decoded_recursively() -> None:
    s = SecretScanner.builtin()
    once = base64.b64encode(f"token: {GHP}".encode())
    twice = base64.b64encode(b"payload " + once).decode()
    [found] = s.scan(f"data={twice}")
    assert found.rule_id == "github-pat"
    assert found.encodings == ("base64", "base64")
    assert SecretScanner.builtin(max_decode_depth=1).scan(f"data={twice}") == []


def test_decoding_can_be_switched_off_and_plain_secrets_are_not_reported_twice() -> None:
    encoded = base64.b64encode(f"gh token {GHP}".encode()).decode()
    assert SecretScanner.builtin(max_decode_depth=0).scan(encoded) == []
    text = f"{GHP} and {encoded}"
    found = SecretScanner.builtin().scan(text)
    assert [(x.rule_id, x.encodings) for x in found] == [
        ("github-pat", ()),
        ("github-pat", ("base64",)),
    ]


def test_binary_looking_segments_are_not_decoded() -> None:
    s = scanner(TOKEN_RULES)
    noise = base64.b64encode(bytes(range(256))).decode()
    assert s.scan(noise) == []


# --- overlapping findings --------------------------------------------------------------------


def test_overlapping_findings_merge_into_one_span() -> None:
    toml = """
[[rules]]
id = "short"
regex = '''SEC[0-9]{6}'''

[[rules]]
id = "long"
regex = '''pre-SEC[0-9]{6}-post'''
"""
    text = "x pre-SEC123456-post y"
    found = scanner(toml).scan(text)
    assert sorted(ids(found)) == ["long", "short"]
    [merged] = non_overlapping(found)
    assert merged.rule_id == "long"  # the widest wins
    assert text[merged.start : merged.end] == "pre-SEC123456-post"


def test_non_overlapping_keeps_separate_spans_apart() -> None:
    a = SecretFinding("a", 0, 5, 0, 5, 3.0, 0)
    b = SecretFinding("b", 5, 9, 5, 9, 3.0, 0)  # touching, not overlapping
    c = SecretFinding("c", 8, 12, 8, 12, 3.0, 0)
    merged = non_overlapping([c, a, b])
    assert [(m.rule_id, m.start, m.end) for m in merged] == [
        ("a", 0, 5),
        ("b", 5, 12),
    ]  # b and c tie: earliest


# --- composite rules and limits --------------------------------------------------------------


def test_required_rule_must_match_nearby() -> None:
    toml = """
[[rules]]
id = "client-id"
regex = '''client_id=(\\w+)'''
skipReport = true

[[rules]]
id = "client-secret"
regex = '''client_secret=(\\w+)'''
[[rules.required]]
id = "client-id"
withinLines = 1
"""
    s = scanner(toml)
    assert ids(s.scan("client_id=abc\nclient_secret=Zx9Qw8Er7")) == ["client-secret"]
    assert s.scan("client_secret=Zx9Qw8Er7") == []
    assert s.scan("client_id=abc\n\n\nclient_secret=Zx9Qw8Er7") == []


def test_too_many_matches_truncates_the_scan() -> None:
    s = scanner("[[rules]]\nid = 'n'\nregex = '''n[0-9]'''\n", max_matches=100)
    report = s.scan_report("n1 " * 500)
    assert report.truncated
    assert not s.scan_report("n1 " * 50).truncated


# --- lazy-prefix acceleration ---------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"(?i)[\w.-]{0,50}?(?:api|key)(?:[ \t\w.-]{0,20})[\s'\"]{0,3}(?:=|:)[\s'\"]{0,3}"
        r"([a-z0-9]{8})(?:[\s'\";]|$)",
        r"(?i)[\w.-]{0,5}?(?:ab)c?",
        r"[a-c]{0,3}?b+",
    ],
)
def test_prefix_acceleration_matches_plain_search(pattern: str) -> None:
    assert lazy_prefix(pattern) is not None
    fast = RuleMatcher(pattern, "test")
    plain = Regex(pattern, "test")
    rng = random.Random(3)
    alphabet = "abcAB=: \t\n'\"k.-_yei0123"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))).encode()
        assert [s[:2] for s in fast.spans(text)] == list(plain.spans(text)), text


def test_patterns_with_top_level_alternation_are_not_split() -> None:
    assert lazy_prefix(r"[\w]{0,9}?abc|def") is None
    assert lazy_prefix(r"[\w]{0,9}?(?:abc|def)") is not None
    assert lazy_prefix(r"[\w|]{0,9}?x[|]") is not None


# --- secrets stay out of results ------------------------------------------------------------


def test_findings_never_carry_the_secret_text() -> None:
    s = SecretScanner.builtin()
    password = f.mixed(20)
    text = (
        f"token={GHP}\npostgres://app:{password}@db:5432/x\n"
        + base64.b64encode(f"key {GHP}".encode()).decode()
    )
    report = s.scan_report(text)
    assert len(report.findings) >= 3
    rendered = [repr(report), str(report)]
    for found in report.findings:
        rendered += [repr(found), str(found), str(found.to_dict())]
        rendered += [str(getattr(found, name)) for name in found.__slots__]
    for blob in rendered:
        assert GHP not in blob
        assert password not in blob
