"""Recognizers for the ``presidio`` check: offline, faster variants of the stock ones, and
custom pattern recognizers declared in YAML.

Why these exist (measured on a 1 KB prompt, see docs/pii.md):

* Presidio's ``PhoneRecognizer`` runs the whole ``phonenumbers`` matcher once per region (8 by
  default) and takes most of the analysis time. :class:`FastPhoneRecognizer` finds candidate
  digit runs with one regular expression and validates each with ``phonenumbers`` metadata for
  the plausible regions only. It also scores by strength of evidence (international prefix,
  region-typical grouping) so that clearly formatted numbers pass ``min_score`` without a
  context word, while bare digit runs still need one.
* ``EmailRecognizer`` validates domains through the module-level ``tldextract`` extractor, which
  fetches the Public Suffix List over the network on first use. :class:`OfflineEmailRecognizer`
  uses an extractor limited to the snapshot bundled with tldextract.
* Cheap pre-checks skip a recognizer's regular expressions when the text cannot hold a match
  (no ``@`` for e-mail addresses, too few digits for card numbers and SSNs).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import phonenumbers
import regex
from phonenumbers import PhoneMetadata, PhoneNumber, PhoneNumberFormat, PhoneNumberType
from presidio_analyzer import EntityRecognizer, LocalRecognizer, Pattern, PatternRecognizer
from presidio_analyzer import RecognizerResult as Result
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    CryptoRecognizer,
    DateRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    MacAddressRecognizer,
    MedicalLicenseRecognizer,
    NhsRecognizer,
    UrlRecognizer,
    UsBankRecognizer,
    UsItinRecognizer,
    UsLicenseRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
    UuidRecognizer,
)

from guardrails.pii.config import CustomRecognizerSpec, PresidioConfig, Validation

# ---------------------------------------------------------------------------------------------
# checksums


def luhn_valid(value: str) -> bool:
    digits = [int(c) for c in value if c.isdigit()]
    if len(digits) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def mod97_valid(value: str) -> bool:
    """ISO 7064 MOD 97-10 over the alphanumerics as written (A=10 ... Z=35)."""
    chars = [c for c in value.upper() if c.isalnum()]
    if len(chars) < 3:
        return False
    try:
        number = int("".join(str(int(c, 36)) for c in chars))
    except ValueError:  # a non-ASCII alphanumeric
        return False
    return number % 97 == 1


def iban_valid(value: str) -> bool:
    """The IBAN check: move country code and check digits to the end, then MOD 97-10."""
    compact = "".join(c for c in value.upper() if c.isalnum())
    if len(compact) < 15 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    return mod97_valid(compact[4:] + compact[:4])


CHECKSUMS: dict[Validation, Callable[[str], bool]] = {
    Validation.LUHN: luhn_valid,
    Validation.MOD97: mod97_valid,
    Validation.IBAN: iban_valid,
}


# ---------------------------------------------------------------------------------------------
# e-mail without network


@functools.cache
def offline_suffix_extractor() -> Any:
    """A tldextract extractor that never touches the network or the disk cache.

    ``suffix_list_urls=()`` disables the download and ``cache_dir=None`` the cache, so the
    Public Suffix List snapshot shipped inside the tldextract package is what gets used.
    """
    import tldextract

    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail pattern, validated against the bundled suffix list only.

    The pattern is only tried on the token around each ``@`` (a domain is at most 255
    characters), instead of at every position of the text.
    """

    _TOKEN_MAX = 256
    _DOMAIN_MAX = 256

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_language=supported_language)
        pattern = EmailRecognizer.PATTERNS[0]
        self._pattern = regex.compile(pattern.regex, flags=self.global_regex_flags)

    def validate_result(self, pattern_text: str) -> bool:
        domain = pattern_text.rpartition("@")[2]
        return bool(offline_suffix_extractor()(domain).fqdn)

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: Any = None,
        regex_flags: int | None = None,
    ) -> list[Result]:
        results: list[Result] = []
        done = 0  # end of the last match; later '@'s inside it are skipped
        at = text.find("@")
        while at >= 0:
            if at >= done:
                # Start at the beginning of the token holding the '@', so an over-long local
                # part is matched whole rather than from an arbitrary point inside it.
                window_start = at
                lowest = max(done, at - self._TOKEN_MAX)
                while window_start > lowest and not text[window_start - 1].isspace():
                    window_start -= 1
                window_end = min(len(text), at + self._DOMAIN_MAX)
                for m in self._pattern.finditer(text, window_start, window_end):
                    if m.start() <= at < m.end():
                        done = m.end()
                        if self.validate_result(m.group()):
                            # Validation raises the score to the maximum, as in Presidio.
                            results.append(
                                Result(self.supported_entities[0], m.start(), m.end(), 1.0)
                            )
                        break
            at = text.find("@", at + 1)
        return results


# ---------------------------------------------------------------------------------------------
# digit-count pre-checks for the stock pattern recognizers

_DIGIT = re.compile(r"\d")
_ASCII_DIGITS = b"0123456789"


def _has_digits(text: str, minimum: int) -> bool:
    """At least ``minimum`` characters that ``\\d`` matches. ASCII text (most prompts) is
    counted with one C pass over its bytes (a few microseconds per KB, where iterating regex
    matches cost tens); other text keeps the regex, whose ``\\d`` also matches non-ASCII
    digits."""
    if text.isascii():
        return len(text) - len(text.encode("ascii").translate(None, _ASCII_DIGITS)) >= minimum
    count = 0
    for _ in _DIGIT.finditer(text):
        count += 1
        if count >= minimum:
            return True
    return False


class PrecheckedCreditCardRecognizer(CreditCardRecognizer):
    """Presidio's card recognizer plus Mastercard's 2221-2720 range (issued since 2017, not in
    the stock pattern), skipped when the text has fewer than 12 digits."""

    MASTERCARD_2_SERIES = Pattern(
        "Mastercard 2-series (weak)",
        r"\b(2(?:2[2-9]\d|[3-6]\d{2}|7[01]\d|720))[- ]?(\d{4})[- ]?(\d{4})[- ]?(\d{4})\b",
        0.3,
    )

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            patterns=[*CreditCardRecognizer.PATTERNS, self.MASTERCARD_2_SERIES],
            supported_language=supported_language,
        )

    # Both patterns start with four digits, an optional separator and three more digits:
    # without that shape (most texts with a dozen digits) neither can match. Searched with the
    # ``regex`` module the patterns run on, so ``\d`` means the same (tests/test_pii_prefilters.py).
    _MAY_MATCH = regex.compile(r"\d{4}[- ]?\d{3}")

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: Any = None,
        regex_flags: int | None = None,
    ) -> list[Result]:
        if not _has_digits(text, 12) or not self._MAY_MATCH.search(text):
            return []
        results: list[Result] = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if not _inside_longer_code(text, r.start, r.end)]


# A digit group joined to the match by one separator: the match is part of a longer code
# (an IBAN with a wrong checksum, "820-5388135-7145076" order numbers), not a card number.
_CODE_BEFORE = re.compile(r"[A-Za-z0-9]*\d[A-Za-z0-9]*[ \-]$")
_CODE_AFTER = re.compile(r"[ \-]?[A-Za-z0-9]*\d")


def _inside_longer_code(text: str, start: int, end: int) -> bool:
    return bool(
        _CODE_BEFORE.search(text, max(0, start - 12), start) or _CODE_AFTER.match(text, end)
    )


class StrictSsnRecognizer(UsSsnRecognizer):
    """Presidio's SSN recognizer, also rejecting area numbers 900-999 (never issued as SSNs;
    that range is used for ITINs)."""

    def invalidate_result(self, pattern_text: str) -> bool:
        digits = "".join(c for c in pattern_text if c.isdigit())
        if digits[:1] == "9":
            return True
        return bool(super().invalidate_result(pattern_text))

    # Any of the five patterns needs one of these shapes; checked with one stdlib search:
    #   (?<!\d)\d{3}[- .]?\d{2}[- .]?\d{4}(?!\d) | \d{5}-\d{4} | \d{3}-\d{6}
    # written with the digit every shape starts with taken out in front, so
    # the search skips to digits in C instead of trying three branches at every character (a
    # seventh of the time on a 1 KB prompt); the first branch's "no digit before" becomes "not
    # two digits ending at the first one". Same texts found (tests/test_pii_prefilters.py).
    _MAY_MATCH = re.compile(
        r"\d(?:(?<!\d\d)\d{2}[- .]?\d{2}[- .]?\d{4}(?!\d)|\d{4}-\d{4}|\d{2}-\d{6})"
    )

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: Any = None,
        regex_flags: int | None = None,
    ) -> list[Result]:
        # Every shape has nine digits: counting them first spares most texts the search.
        if not _has_digits(text, 9) or not self._MAY_MATCH.search(text):
            return []
        results: list[Result] = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return results


class PrecheckedIpRecognizer(IpRecognizer):
    """Presidio's IP patterns, with the IPv6 ones (the costly part) only run when the text has
    ``::`` or six colon-separated hex groups, and the IPv4 one only when it has ``digit.digit``.
    """

    # "digit.digit", found from its dot: a literal first lets the search skip to each "." in C
    # (a seventeenth of the time of r"\d\.\d" on 1 KB; same texts, tests/test_pii_prefilters.py)
    _MAY_HAVE_V4 = re.compile(r"\.(?<=\d\.)\d")
    _MAY_HAVE_V6 = re.compile(r"::|(?:[0-9A-Fa-f]{1,4}:){6}")

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_language=supported_language)
        v4 = [p for p in IpRecognizer.PATTERNS if p.name == "IPv4"]
        v6 = [p for p in IpRecognizer.PATTERNS if p.name != "IPv4"]
        self._v4 = IpRecognizer(patterns=v4, supported_language=supported_language)
        self._v6 = IpRecognizer(patterns=v6, supported_language=supported_language)

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: Any = None,
        regex_flags: int | None = None,
    ) -> list[Result]:
        results: list[Result] = []
        # An IPv4 address has four digits, the six-group IPv6 shape six colons: both counted
        # before the searches (cheaper than a regex pass over the whole text).
        if _has_digits(text, 4) and self._MAY_HAVE_V4.search(text):
            results += self._v4.analyze(text, entities, nlp_artifacts, regex_flags)
        if "::" in text or (text.count(":") >= 6 and self._MAY_HAVE_V6.search(text)):
            results += self._v6.analyze(text, entities, nlp_artifacts, regex_flags)
        for r in results:  # report as this recognizer, whose context words apply
            r.recognition_metadata = {
                Result.RECOGNIZER_NAME_KEY: type(self).__name__,
                Result.RECOGNIZER_IDENTIFIER_KEY: self.id,
            }
        return results


class PrecheckedIbanRecognizer(IbanRecognizer):
    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: Any = None,
        regex_flags: int | None = None,
    ) -> list[Result]:
        if not _has_digits(text, 12):
            return []
        results: list[Result] = super().analyze(text, entities, nlp_artifacts)
        return results


# ---------------------------------------------------------------------------------------------
# phone numbers

# A candidate: optional international prefix, then digits separated by at most three
# separator characters. The repetition is possessive so a run that is too long (a card number)
# or glued to more text fails as a whole instead of yielding a shorter prefix of itself.
_PHONE_CANDIDATE = re.compile(
    # Every candidate starts with "+", "(" or a digit: the lookahead, tested first, turns most
    # positions away before the two lookbehinds run (a third less time on a 1 KB prompt; the
    # same matches, tests/test_pii_prefilters.py).
    r"(?=[+(\d])"
    r"(?<![\w+\-./#@:=&?%$€£])"  # not inside a word, id, version, URL or amount
    r"(?<!\d[ \-.])"  # not a later group of a longer digit run (IBAN, card number)
    r"(?:\+|00)?\(?\d(?:[ \-.()/\u00a0]{1,3}\d|\d){6,17}+"
    r"(?![\w@+]|[\-.:/,]\d)"
)
# What every candidate holds: its first seven digits with their separators. Searched first,
# led by a digit (scanned for in C): most texts have no such run and skip the candidate search,
# whose lookarounds are tried at every position (tests/test_pii_prefilters.py).
_PHONE_DIGITS = re.compile(r"\d(?:[ \-.()/\u00a0]{1,3}\d|\d){6}")
_NON_DIGIT = re.compile(r"\D")
_SEPARATOR_RUN = re.compile(r"[^\d+]+")
# Shapes that are other things: IPv4 addresses, dates, SSNs.
_NOT_A_PHONE = re.compile(
    r"^(?:\d{1,3}(?:\.\d{1,3}){3}"
    r"|\d{4}[-./]\d{1,2}[-./]\d{1,2}"
    r"|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}"
    r"|\d{3}([- ])\d{2}\1\d{4})$"
)
# Regions where numbers are customarily written without the trunk prefix.
_TRUNK_PREFIX_OPTIONAL = frozenset({"US", "CA", "IN", "BR"})
# ... but in India only for mobile numbers; landlines are written with the leading 0.
_TRUNK_OPTIONAL_MOBILE_ONLY = frozenset({"IN"})
_MOBILE_TYPES = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)

PHONE_CONTEXT = [
    "phone",
    "telephone",
    "tel",
    "mobile",
    "cell",
    "cellphone",
    "call",
    "fax",
    "whatsapp",
    "sms",
    "landline",
    "hotline",
    "dial",
    "reach",
    "contact",
    "ring",
]


class FastPhoneRecognizer(LocalRecognizer):
    """Phone numbers: one candidate regex, then ``phonenumbers`` validation.

    Scores: a valid number written with ``+``/``00`` and a country code scores
    ``INTERNATIONAL``; a valid national number whose digit groups agree with the region's usual
    format scores ``GROUPED``; any other valid number scores ``WEAK`` and needs a context word
    (``call``, ``phone`` ...) to pass the default ``min_score``.
    """

    INTERNATIONAL = 0.7
    GROUPED = 0.6
    WEAK = 0.4

    def __init__(
        self,
        regions: Sequence[str],
        supported_language: str = "en",
        context: list[str] | None = None,
    ) -> None:
        self._regions = [_region_rule(r) for r in regions]
        super().__init__(
            supported_entities=["PHONE_NUMBER"],
            supported_language=supported_language,
            context=context if context is not None else list(PHONE_CONTEXT),
            name="FastPhoneRecognizer",
        )

    def load(self) -> None:
        pass

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: Any = None,
        regex_flags: int | None = None,
    ) -> list[Result]:
        if not _has_digits(text, 7) or not _PHONE_DIGITS.search(text):
            return []
        results: list[Result] = []
        for match in _PHONE_CANDIDATE.finditer(text):
            score = self.score_candidate(match.group())
            if score is not None:
                results.append(Result("PHONE_NUMBER", match.start(), match.end(), score))
        return results

    def score_candidate(self, candidate: str) -> float | None:
        # "+44 (0)20 ..." writes the trunk prefix in brackets next to the country code.
        digits = _NON_DIGIT.sub("", candidate.replace("(0)", ""))
        if candidate.startswith("+") or candidate.startswith("00"):
            return self._international(digits[2:] if candidate.startswith("00") else digits)
        if not 7 <= len(digits) <= 12 or _NOT_A_PHONE.match(candidate):
            return None
        # Try every region: the first valid one may not be the one whose format fits (a French
        # "02 98 10 71 72" is also a valid British number without the French grouping).
        best: float | None = None
        for rule in self._regions:
            region = rule[0]
            number = _national_number(candidate, digits, *rule)
            if number is None or not phonenumbers.is_valid_number_for_region(number, region):
                continue
            if rule[3] and region in _TRUNK_OPTIONAL_MOBILE_ONLY and not digits.startswith("0"):
                if phonenumbers.number_type(number) not in _MOBILE_TYPES:
                    continue
            if _grouping_agrees(candidate, digits, number):
                return self.GROUPED
            best = self.WEAK
        return best

    def _international(self, digits: str) -> float | None:
        if not 8 <= len(digits) <= 15:
            return None
        try:
            number = phonenumbers.parse("+" + digits, None)
        except phonenumbers.NumberParseException:
            return None
        return self.INTERNATIONAL if phonenumbers.is_valid_number(number) else None


def _region_rule(region: str) -> tuple[str, int, str | None, bool]:
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None:
        raise ValueError(f"unknown phone region {region!r}")
    trunk = metadata.national_prefix or None
    return region, int(metadata.country_code or 0), trunk, region in _TRUNK_PREFIX_OPTIONAL


def _national_number(
    candidate: str,
    digits: str,
    region: str,
    country_code: int,
    trunk: str | None,
    trunk_optional: bool,
) -> PhoneNumber | None:
    if trunk is None:
        # No trunk prefix (Italy, Spain ...): leading zeros are part of the number, which
        # phonenumbers.parse handles.
        try:
            return phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            return None
    if digits.startswith(trunk):
        national = digits[len(trunk) :]
    elif trunk_optional:
        national = digits
    else:
        return None
    if len(national) < 6 or national.startswith("0"):
        return None
    return PhoneNumber(country_code=country_code, national_number=int(national))


def _boundaries_from_end(text: str, total_digits: int) -> set[int]:
    """Positions of separator runs, counted in digits from the end of the number."""
    positions: set[int] = set()
    seen = 0
    for part in _SEPARATOR_RUN.split(text.strip()):
        seen += sum(c.isdigit() for c in part)
        if 0 < seen < total_digits:
            positions.add(total_digits - seen)
    return positions


def _grouping_agrees(candidate: str, digits: str, number: PhoneNumber) -> bool:
    """True when the candidate has separators and splits no digit group of the region's
    national format (merging groups is fine: ``0171 2345678`` vs ``0171 234 5678``)."""
    mine = _boundaries_from_end(candidate, len(digits))
    if not mine:
        return False
    formatted = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    formatted_digits = sum(c.isdigit() for c in formatted)
    allowed = _boundaries_from_end(formatted, formatted_digits) | {formatted_digits}
    return mine <= allowed


# ---------------------------------------------------------------------------------------------
# custom recognizers from YAML


class CustomPatternRecognizer(PatternRecognizer):
    """A recognizer declared in configuration: regexes, optional context words and checksum."""

    def __init__(self, spec: CustomRecognizerSpec, supported_language: str) -> None:
        self._checksum = CHECKSUMS.get(spec.validation)
        flags = regex.DOTALL | regex.MULTILINE
        if not spec.case_sensitive:
            flags |= regex.IGNORECASE
        super().__init__(
            supported_entity=spec.entity,
            name=f"custom:{spec.name}",
            supported_language=supported_language,
            patterns=[Pattern(p.name, p.regex, p.score) for p in spec.patterns],
            context=list(spec.context),
            global_regex_flags=flags,
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        # None keeps the pattern's score; True raises it to 1.0; False drops the match.
        if self._checksum is None:
            return None
        return self._checksum(pattern_text)


# ---------------------------------------------------------------------------------------------
# the registry table

_BUILTIN: dict[str, Callable[[PresidioConfig], EntityRecognizer]] = {
    "EMAIL_ADDRESS": lambda c: OfflineEmailRecognizer(supported_language=c.language),
    "PHONE_NUMBER": lambda c: FastPhoneRecognizer(c.phone_regions, supported_language=c.language),
    "CREDIT_CARD": lambda c: PrecheckedCreditCardRecognizer(supported_language=c.language),
    "IBAN_CODE": lambda c: PrecheckedIbanRecognizer(supported_language=c.language),
    "US_SSN": lambda c: StrictSsnRecognizer(supported_language=c.language),
    "IP_ADDRESS": lambda c: PrecheckedIpRecognizer(supported_language=c.language),
    "URL": lambda c: UrlRecognizer(supported_language=c.language),
    "DATE_TIME": lambda c: DateRecognizer(supported_language=c.language),
    "MAC_ADDRESS": lambda c: MacAddressRecognizer(supported_language=c.language),
    "UUID": lambda c: UuidRecognizer(supported_language=c.language),
    "CRYPTO": lambda c: CryptoRecognizer(supported_language=c.language),
    "US_BANK_NUMBER": lambda c: UsBankRecognizer(supported_language=c.language),
    "US_DRIVER_LICENSE": lambda c: UsLicenseRecognizer(supported_language=c.language),
    "US_ITIN": lambda c: UsItinRecognizer(supported_language=c.language),
    "US_PASSPORT": lambda c: UsPassportRecognizer(supported_language=c.language),
    "UK_NHS": lambda c: NhsRecognizer(supported_language=c.language),
    "MEDICAL_LICENSE": lambda c: MedicalLicenseRecognizer(supported_language=c.language),
}

BUILTIN_ENTITIES: frozenset[str] = frozenset(_BUILTIN)


def build_recognizers(config: PresidioConfig) -> list[EntityRecognizer]:
    """Recognizers for the configured pattern entities and custom recognizers (no NER)."""
    recognizers = [_BUILTIN[e](config) for e in config.entities if e in _BUILTIN]
    recognizers += [CustomPatternRecognizer(s, config.language) for s in config.custom_recognizers]
    return recognizers


def entities_of(recognizers: Iterable[EntityRecognizer]) -> set[str]:
    found: set[str] = set()
    for recognizer in recognizers:
        found.update(recognizer.supported_entities)
    return found
