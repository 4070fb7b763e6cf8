"""Generate the PII benchmark set: ``python -m benchmarks.pii_data`` (fixed seed, deterministic).

Each case is a short prompt in support, sales or engineering language holding ``k`` personal
values (gold spans) and ``k`` look-alike values that are not personal data (order numbers,
versions, timestamps, invoice ids, numbers failing their checksum ...), so the set has as many
negatives as positives. Card numbers pass Luhn, IBANs pass MOD 97 for their country format,
phone numbers are valid for their region according to ``phonenumbers`` metadata.

Output: ``benchmarks/data/pii_cases.jsonl``, one object per line::

    {"id": "c0001", "domain": "support", "text": "...",
     "entities": [{"type": "EMAIL_ADDRESS", "start": 10, "end": 30, "style": "plain"}],
     "negatives": [{"kind": "version", "start": 50, "end": 57}]}
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phonenumbers
from phonenumbers import PhoneNumber, PhoneNumberFormat

SEED = 20260722
CASES = 400
OUT = Path(__file__).parent / "data" / "pii_cases.jsonl"

Value = tuple[str, str]  # (text, style)

# --------------------------------------------------------------------------------------------
# positives


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # doubled positions once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def card(rng: random.Random) -> Value:
    brand = rng.choice(["visa", "visa", "mc", "mc2", "amex", "discover"])
    if brand == "visa":
        number = _luhn_complete("4", 16, rng)
    elif brand == "mc":
        number = _luhn_complete(str(rng.randint(51, 55)), 16, rng)
    elif brand == "mc2":
        number = _luhn_complete(str(rng.randint(2221, 2720)), 16, rng)
    elif brand == "amex":
        number = _luhn_complete(rng.choice(["34", "37"]), 15, rng)
    else:
        number = _luhn_complete("6011", 16, rng)
    style = rng.choice(["spaces", "spaces", "dashes", "compact"])
    if brand == "amex":
        groups = [number[:4], number[4:10], number[10:]]
    else:
        groups = [number[i : i + 4] for i in range(0, 16, 4)]
    sep = {"spaces": " ", "dashes": "-", "compact": ""}[style]
    return sep.join(groups), f"{brand}/{style}"


# country: (length of BBAN, BBAN layout: n digit, a upper letter, c alphanumeric)
_IBAN_LAYOUT = {
    "DE": "18n",
    "GB": "4a14n",
    "FR": "10n11c2n",
    "ES": "20n",
    "IT": "1a10n12c",
    "NL": "4a10n",
    "BE": "12n",
    "CH": "5n12c",
    "AT": "16n",
    "PL": "24n",
    "IE": "4a14n",
    "SE": "20n",
}


def _bban(layout: str, rng: random.Random) -> str:
    out = []
    num = ""
    for ch in layout:
        if ch.isdigit():
            num += ch
            continue
        pool = {
            "n": string.digits,
            "a": string.ascii_uppercase,
            "c": string.digits + string.ascii_uppercase,
        }[ch]
        out.append("".join(rng.choice(pool) for _ in range(int(num))))
        num = ""
    return "".join(out)


def iban(rng: random.Random) -> Value:
    country = rng.choice(sorted(_IBAN_LAYOUT))
    bban = _bban(_IBAN_LAYOUT[country], rng)
    rearranged = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in rearranged)) % 97
    compact = f"{country}{check:02d}{bban}"
    style = rng.choice(["print", "print", "compact"])
    if style == "print":
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4)), f"{country}/print"
    return compact, f"{country}/compact"


# region: (national-number prefixes, styles). Regions outside the recognizer's default list
# (ES, IT, NL, AU) appear in international formats only.
_PHONE_PLAN: dict[str, tuple[list[str], list[str]]] = {
    "US": (
        ["212", "415", "646", "312", "617", "206", "303", "512", "404", "702"],
        ["national", "national", "dashes", "dashes", "dots", "one-dashes", "intl", "e164", "bare"],
    ),
    "CA": (["416", "604", "514", "613"], ["national", "dashes", "intl", "bare"]),
    "GB": (
        ["20", "121", "161", "131", "7400", "7700", "7911"],
        ["national", "national", "intl", "intl0"],
    ),
    "DE": (
        ["30", "40", "89", "221", "151", "160", "176", "171"],
        ["national", "national", "slash", "intl", "00"],
    ),
    "FR": (["1", "2", "3", "4", "5", "6", "7"], ["national", "national", "dots", "intl"]),
    "IN": (["98", "97", "91", "81", "70", "63"], ["intl", "no-trunk", "no-trunk", "national"]),
    "BR": (["119", "219", "319", "113", "212"], ["national", "national", "intl"]),
    "IL": (["50", "52", "54", "2", "3", "4"], ["national", "national", "intl"]),
    "ES": (["6", "91", "93"], ["intl", "e164"]),
    "IT": (["3"], ["intl", "e164"]),
    "NL": (["6", "20", "10"], ["intl", "e164"]),
    "AU": (["4", "2", "3"], ["intl", "00"]),
}


def _valid_number(region: str, prefixes: list[str], rng: random.Random) -> PhoneNumber:
    cc = phonenumbers.country_code_for_region(region)
    for _ in range(2000):
        prefix = rng.choice(prefixes)
        length = rng.randint(max(len(prefix) + 4, 7), 11)
        nsn = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix)))
        number = PhoneNumber(country_code=cc, national_number=int(nsn))
        if phonenumbers.is_valid_number_for_region(number, region):
            return number
    raise RuntimeError(f"no valid number found for {region}")


def phone(rng: random.Random) -> Value:
    region = rng.choice(sorted(_PHONE_PLAN))
    prefixes, styles = _PHONE_PLAN[region]
    number = _valid_number(region, prefixes, rng)
    style = rng.choice(styles)
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    intl = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    nsn = str(number.national_number)
    text = {
        "national": national,
        "intl": intl,
        "e164": e164,
        "bare": nsn,
        "dashes": f"{nsn[:3]}-{nsn[3:6]}-{nsn[6:]}",
        "dots": national.replace(" ", ".") if region == "FR" else f"{nsn[:3]}.{nsn[3:6]}.{nsn[6:]}",
        "one-dashes": f"1-{nsn[:3]}-{nsn[3:6]}-{nsn[6:]}",
        "intl0": intl.replace(" ", " (0)", 1),
        "slash": national.replace(" ", "/", 1),
        "no-trunk": national.lstrip("0"),
        "00": "00" + intl[1:],
    }[style]
    return text, f"{region}/{style}"


_FIRST = ["dana", "li", "omar", "sofia", "jan", "priya", "lucas", "emma", "kenji", "ana", "tom"]
_LAST = ["keller", "nguyen", "haddad", "rossi", "kowalski", "sharma", "silva", "martin", "ito"]
_DOMAINS = [
    "example.com",
    "acme-corp.io",
    "firma.de",
    "mail.example.org",
    "shop.co.uk",
    "contoso.fr",
    "globex.com.br",
    "initech.net",
]


def email(rng: random.Random) -> Value:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice(
        [f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{rng.randint(1, 99)}", first]
    )
    if rng.random() < 0.15:
        local += "+" + rng.choice(["billing", "test", "news"])
    return f"{local}@{rng.choice(_DOMAINS)}", "plain"


def ip(rng: random.Random) -> Value:
    kind = rng.choice(["v4", "v4", "v4", "v4-private", "v6"])
    if kind == "v4":
        parts = [
            rng.randint(11, 223),
            rng.randint(0, 255),
            rng.randint(0, 255),
            rng.randint(1, 254),
        ]
        return ".".join(map(str, parts)), kind
    if kind == "v4-private":
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}", kind
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(4)]
    return f"2001:db8:{groups[0]}:{groups[1]}::{groups[2]}", kind


def ssn(rng: random.Random) -> Value:
    while True:
        area = rng.randint(1, 899)
        if area != 666:
            break
    group, serial = rng.randint(1, 99), rng.randint(1, 9999)
    style = rng.choice(["dashes", "dashes", "dashes", "spaces", "bare"])
    sep = {"dashes": "-", "spaces": " ", "bare": ""}[style]
    return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}", style


GENERATORS: dict[str, Callable[[random.Random], Value]] = {
    "CREDIT_CARD": card,
    "IBAN_CODE": iban,
    "PHONE_NUMBER": phone,
    "EMAIL_ADDRESS": email,
    "IP_ADDRESS": ip,
    "US_SSN": ssn,
}

# Sentences carrying one value. Phone sentences mix ones with a context word and ones without.
POSITIVE_TEMPLATES: dict[str, list[str]] = {
    "CREDIT_CARD": [
        "The customer was charged twice on card {v} and wants one charge reversed.",
        "Please update the payment method to {v}, expiry 09/27.",
        "Refund the last invoice to card {v}.",
        "Their corporate card {v} was declined at checkout this morning.",
        "I paid with {v} but the receipt never arrived.",
    ],
    "IBAN_CODE": [
        "Send the refund to IBAN {v} within five working days.",
        "The supplier changed their bank account to {v}; please update the vendor record.",
        "Can you confirm that payouts now go to {v}?",
        "Wire the deposit to {v} and reference the contract number.",
    ],
    "PHONE_NUMBER": [
        "Please call me back at {v} after 3 pm.",
        "My mobile is {v} if the courier needs directions.",
        "Phone: {v}",
        "You can reach her on {v} during office hours.",
        "Tel. {v} (front desk).",
        "Text the on-call engineer at {v} if the job fails again.",
        "His number is {v}, he prefers mornings.",
        "Contact person: the site manager, {v}.",
        "The lead gave {v} as the best way to talk about pricing.",
        "Add {v} to the escalation list for the Frankfurt cluster.",
    ],
    "EMAIL_ADDRESS": [
        "Please reply to {v} with the updated quote.",
        "The alert should go to {v} instead of the shared inbox.",
        "Forward the contract to {v} for signature.",
        "User {v} cannot reset their password.",
    ],
    "IP_ADDRESS": [
        "The requests come from {v} and hit the rate limit.",
        "Whitelist {v} on the staging firewall.",
        "SSH into {v} and restart the worker.",
        "Our monitoring shows packet loss to {v} since Monday.",
    ],
    "US_SSN": [
        "For the tax form, her SSN is {v}.",
        "Social security number {v} was entered twice in the HR system.",
        "The W-2 lists SSN {v}; please verify before filing.",
        "Employee onboarding: SSN {v}, start date next Monday.",
    ],
}

# --------------------------------------------------------------------------------------------
# negatives (look-alikes)


def _bad_luhn(rng: random.Random) -> str:
    number = _luhn_complete("4", 16, rng)
    wrong = str((int(number[-1]) + rng.randint(1, 9)) % 10)
    number = number[:-1] + wrong
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


def _bad_iban(rng: random.Random) -> str:
    text, _ = iban(rng)
    check = int(text[2:4])
    return text[:2] + f"{(check + rng.randint(1, 50)) % 97 + 2:02d}"[-2:] + text[4:]


NEGATIVES: dict[str, tuple[Callable[[random.Random], str], list[str]]] = {
    "order": (
        lambda r: rng_choice(
            r,
            [
                f"#{r.randint(10_000_000, 99_999_999)}",
                f"ORD-{r.randint(2019, 2026)}-{r.randint(100000, 999999)}",
                f"PO {r.randint(4_500_000_000, 4_599_999_999)}",
                f"{r.randint(100, 999)}-{r.randint(1000000, 9999999)}-"
                f"{r.randint(1000000, 9999999)}",
            ],
        ),
        ["Order {v} shipped yesterday but tracking shows no movement.", "Check order {v}."],
    ),
    "version": (
        lambda r: rng_choice(
            r,
            [
                f"v{r.randint(1, 20)}.{r.randint(0, 40)}.{r.randint(0, 99)}",
                f"{r.randint(1, 12)}.{r.randint(0, 9)}."
                f"{r.randint(100, 19999)}.{r.randint(1, 4000)}",
                "1.2.840.113549.1.1.11",
                f"{r.randint(3, 6)}.{r.randint(0, 19)}.0-{r.randint(100, 599)}.el9",
            ],
        ),
        ["We upgraded the agent to {v} last night.", "The crash started with build {v}."],
    ),
    "timestamp": (
        lambda r: rng_choice(
            r,
            [
                f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
                f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}",
                f"2025-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:"
                f"{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z",
                str(r.randint(1_600_000_000, 1_790_000_000)),
                f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/2024",
                f"{r.randint(1, 28):02d}.{r.randint(1, 12):02d}.2025",
            ],
        ),
        ["The job failed at {v} according to the logs.", "Last login: {v}."],
    ),
    "invoice": (
        lambda r: rng_choice(
            r,
            [
                f"INV-{r.randint(2020, 2026)}-{r.randint(1, 99999):05d}",
                f"{r.randint(2020, 2026)}{r.randint(1, 12):02d}{r.randint(1, 28):02d}-"
                f"{r.randint(1, 9999):04d}",
                f"RE {r.randint(1000, 9999)} {r.randint(100, 999)}",
            ],
        ),
        ["Invoice {v} is still marked unpaid.", "Attach invoice {v} to the ticket."],
    ),
    "card-like": (
        _bad_luhn,
        ["Reference {v} appears on the bank statement.", "The terminal printed {v}."],
    ),
    "iban-like": (
        _bad_iban,
        ["The form rejected account {v} as invalid.", "Old account reference {v} (closed)."],
    ),
    "ip-like": (
        lambda r: rng_choice(
            r,
            [
                f"{r.randint(256, 999)}.{r.randint(0, 255)}."
                f"{r.randint(0, 255)}.{r.randint(0, 255)}",
                f"{r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}",
            ],
        ),
        ["Firmware {v} is on the affected routers.", "Set the ratio to {v} in the config."],
    ),
    "ssn-like": (
        lambda r: rng_choice(
            r,
            [
                f"000-{r.randint(10, 99)}-{r.randint(1000, 9999)}",
                f"666-{r.randint(10, 99)}-{r.randint(1000, 9999)}",
                f"9{r.randint(10, 99)}-{r.randint(70, 99)}-{r.randint(1000, 9999)}",
                "123-45-6789",
            ],
        ),
        ["Placeholder id {v} was used in the test data.", "Form field shows {v}."],
    ),
    "phone-like": (
        lambda r: rng_choice(
            r,
            [
                f"(1{r.randint(10, 99)}) {r.randint(200, 999)}-{r.randint(1000, 9999)}",
                f"555-{r.randint(1000, 9999)}",
                f"{r.randint(10, 99)} {r.randint(100, 999)} units",
                f"ext. {r.randint(100, 9999)}",
            ],
        ),
        ["The sheet lists {v} for the Berlin site.", "Column B shows {v}."],
    ),
    "tracking": (
        lambda r: rng_choice(
            r,
            [
                "1Z" + "".join(r.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
                f"JJD{r.randint(10**17, 10**18 - 1)}",
            ],
        ),
        ["Tracking number {v} shows the parcel in Leipzig.", "Parcel {v} was returned."],
    ),
}


def rng_choice(rng: random.Random, options: list[str]) -> str:
    return rng.choice(options)


OPENERS = {
    "support": [
        "Hi team, a customer escalated this today.",
        "Support ticket summary follows.",
        "Can you help me draft a reply to this customer?",
    ],
    "sales": [
        "Notes from today's call with a prospect.",
        "Please prepare a follow-up for this lead.",
        "Summarise this account update for the CRM.",
    ],
    "engineering": [
        "Incident notes for the postmortem.",
        "Debugging the billing service, here is what I have.",
        "Quick question about the deployment.",
    ],
}
CLOSERS = [
    "Thanks!",
    "What should I tell them?",
    "Please keep it short.",
    "Can you write the reply?",
    "Anything else we should check?",
]


def build_case(index: int, rng: random.Random) -> dict[str, Any]:
    domain = rng.choice(sorted(OPENERS))
    k = rng.choice([1, 2, 2, 3])
    types = [rng.choice(sorted(GENERATORS)) for _ in range(k)]
    kinds = [rng.choice(sorted(NEGATIVES)) for _ in range(k)]
    items: list[tuple[str, str, str]] = []
    sentences: list[tuple[str, str, str, str]] = []
    for t in types:
        value, style = GENERATORS[t](rng)
        sentences.append(("pos", t, style, rng.choice(POSITIVE_TEMPLATES[t]).replace("{v}", "\0")))
        items.append(("pos", t, value))
    for kind in kinds:
        make, templates = NEGATIVES[kind]
        sentences.append(("neg", kind, "", rng.choice(templates).replace("{v}", "\0")))
        items.append(("neg", kind, make(rng)))
    order = list(range(len(sentences)))
    rng.shuffle(order)
    text = rng.choice(OPENERS[domain])
    entities: list[dict[str, object]] = []
    negatives: list[dict[str, object]] = []
    for i in order:
        role, label, style, sentence = sentences[i]
        value = items[i][2]
        before, _, after = sentence.partition("\0")
        text += " " + before
        start = len(text)
        text += value
        span = {"start": start, "end": len(text)}
        if role == "pos":
            entities.append({"type": label, **span, "style": style})
        else:
            negatives.append({"kind": label, **span})
        text += after
    text += " " + rng.choice(CLOSERS)
    return {
        "id": f"c{index:04d}",
        "domain": domain,
        "text": text,
        "entities": entities,
        "negatives": negatives,
    }


def generate(cases: int = CASES, seed: int = SEED) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [build_case(i, rng) for i in range(cases)]


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows = generate()
    with OUT.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    positives = sum(len(r["entities"]) for r in rows)
    negatives = sum(len(r["negatives"]) for r in rows)
    print(f"wrote {len(rows)} cases ({positives} positives, {negatives} negatives) to {OUT}")


if __name__ == "__main__":
    main()
