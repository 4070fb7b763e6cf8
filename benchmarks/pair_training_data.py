"""Synthetic question pairs for training the pair model (``benchmarks/train_pair_model.py``).

Two kinds, both made by program with a seeded RNG:

* hard negatives: a question and a copy with one change that changes the answer -- a
  negation, another number, unit, day or month, another tool or language, source and target
  swapped ("A to B" / "B to A", also with other prepositions on each side, and the two words
  around "to" / "into" / "than" of a training question swapped), another position or scope
  (first / last / every), another comparative pole, another task, format or audience,
  another verb or object of the same kind;
* positives that keep the meaning: one or two typos (also typos that land on another real
  word, "reset" / "rest"), the same question again (case, spacing, final punctuation),
  another opening ("How do I" / "How can I" / "How to"), politeness and filler wrappers,
  contractions, a question turned into a request, an independent clause moved, a synonym.

The base questions come from two places: templates filled from the word lists below, and the
Quora questions of the training split (perturbed the same way where a rule applies).

This generator and its word lists are written apart from the frozen development set
(``benchmarks/data/dev_set/``, hand-written, read by ``build_dev_pairs.py``): no code or list
is shared, so the dev set stays an independent check of what this data teaches.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Example:
    a: str
    b: str
    same: bool
    kind: str


# -------------------------------------------------------------------- word lists
TOOLS = [
    ["Python", "Ruby", "Perl", "PHP", "Scala", "Elixir", "Haskell", "Lua", "Dart", "Julia"],
    ["Django", "Rails", "Laravel", "Spring Boot", "Express", "Phoenix", "ASP.NET", "Gin"],
    ["Ansible", "Puppet", "Chef", "SaltStack", "Pulumi", "CloudFormation"],
    ["Podman", "containerd", "LXC", "Vagrant", "VirtualBox", "VMware"],
    ["Cassandra", "DynamoDB", "CouchDB", "Neo4j", "MariaDB", "Oracle", "Snowflake", "BigQuery"],
    ["Jest", "Mocha", "Cypress", "Selenium", "Playwright", "JUnit", "RSpec"],
    ["Zendesk", "Freshdesk", "Intercom", "HubSpot", "Salesforce", "Jira", "Trello", "Asana"],
    ["Fedora", "Debian", "Arch Linux", "FreeBSD", "Alpine", "openSUSE", "Windows 11"],
    ["Svelte", "Angular", "Ember", "SolidJS", "Preact", "Next.js", "Nuxt"],
    ["Vim", "Emacs", "Sublime Text", "IntelliJ", "Eclipse", "Atom", "Xcode"],
    ["Heroku", "Netlify", "Vercel", "DigitalOcean", "Linode", "Render", "Fly.io"],
    ["CircleCI", "Travis CI", "Buildkite", "TeamCity", "Drone", "Bamboo"],
]
OBJECTS = [
    "a config file",
    "a log file",
    "a cron schedule",
    "a database backup",
    "a user account",
    "an API token",
    "a TLS certificate",
    "a webhook",
    "a Git submodule",
    "a build artifact",
    "a staging environment",
    "a firewall rule",
    "a DNS record",
    "a message queue",
    "a shopping cart",
    "a loyalty card",
    "a gift voucher",
    "a support ticket",
    "a warranty claim",
    "an invoice template",
    "a mailing list",
    "a calendar invite",
    "a spreadsheet formula",
    "a histogram",
    "a matrix",
    "a polynomial",
    "a sorting function",
    "a hash map",
]
VERB_PAIRS = [
    ("enable", "disable"),
    ("install", "uninstall"),
    ("encrypt", "decrypt"),
    ("lock", "unlock"),
    ("archive", "unarchive"),
    ("import", "export"),
    ("upload", "download"),
    ("start", "stop"),
    ("open", "close"),
    ("create", "delete"),
    ("attach", "detach"),
    ("add", "remove"),
    ("show", "hide"),
    ("allow", "block"),
    ("grant", "revoke"),
    ("compress", "extract"),
    ("mount", "unmount"),
    ("follow", "unfollow"),
    ("pin", "unpin"),
    ("publish", "unpublish"),
]
SIBLING_VERBS = [
    ["rename", "duplicate", "move", "edit", "share", "back up", "restore", "validate"],
    ["sort", "filter", "group", "paginate", "cache", "index", "profile"],
    ["schedule", "reschedule", "postpone", "confirm"],
]
CONVERSIONS = [
    ("a tuple", "a dictionary"),
    ("YAML", "TOML"),
    ("epoch seconds", "an ISO string"),
    ("feet", "meters"),
    ("ounces", "grams"),
    ("liters", "gallons"),
    ("Markdown", "HTML"),
    ("XML", "JSON"),
    ("a bitmap", "a vector image"),
    ("a spreadsheet", "a database table"),
    ("snake case", "camel case"),
    ("binary", "octal"),
    ("inches", "centimeters"),
    ("hours", "minutes"),
    ("a float", "a string"),
    ("a char", "an int"),
    ("mp3", "wav"),
    ("a generator", "a list"),
    ("a query string", "a dict"),
    ("seconds", "milliseconds"),
]
PLACES = [
    ("staging", "production"),
    ("my laptop", "the server"),
    ("the old repo", "the new repo"),
    ("the main branch", "the release branch"),
    ("Slack", "Teams"),
    ("iCloud", "OneDrive"),
    ("the primary", "the replica"),
    ("my wallet", "my bank account"),
    ("Trello", "Asana"),
    ("the left pane", "the right pane"),
    ("the cloud", "the local disk"),
]
POSITIONS = [
    ("first", "last"),
    ("first", "every"),
    ("last", "every"),
    ("top", "bottom"),
    ("oldest", "newest"),
    ("leading", "trailing"),
    ("first", "second"),
    ("each", "the first"),
    ("all", "only one"),
    ("the next", "the previous"),
    ("the earliest", "the latest"),
    ("odd", "even"),
    ("the highest", "the lowest"),
]
POSITION_TARGETS = [
    "{p} row of a dataframe",
    "{p} character in a string",
    "{p} word of each line",
    "{p} entry in the log",
    "{p} item of an array",
    "{p} commit on the branch",
    "{p} element of a queue",
    "{p} column of the sheet",
    "{p} invoice of the account",
    "{p} page of the report",
    "{p} match of the pattern",
    "{p} line of the output",
]
POSITION_VERBS = ["remove", "get", "print", "highlight", "replace", "select", "read", "skip"]
FORMS = [
    ["sonnet", "ballad", "free verse poem", "acrostic", "couplet", "ode"],
    ["press release", "newsletter", "memo", "text message", "Facebook post", "speech"],
    ["numbered list", "table", "paragraph", "CSV", "code block", "outline", "flowchart"],
    ["summary", "critique", "translation", "rebuttal", "headline", "abstract"],
]
TOPICS = [
    "the ocean",
    "winter mornings",
    "our product launch",
    "remote teams",
    "coffee",
    "the quarterly results",
    "a lost dog",
    "climate policy",
    "machine learning",
    "friendship",
    "the new office",
    "cloud costs",
    "a job offer",
    "customer onboarding",
]
AUDIENCES = [
    "a beginner",
    "a senior engineer",
    "a ten year old",
    "a lawyer",
    "a grandparent",
    "a CEO",
    "a nurse",
    "a first-year student",
    "a product manager",
    "a native speaker",
]
TONES = [("formal", "casual"), ("shorter", "longer"), ("polite", "blunt"), ("serious", "funny")]
COMPARATIVES = [
    ("faster", "slower"),
    ("cheaper", "more expensive"),
    ("safer", "riskier"),
    ("bigger", "smaller"),
    ("higher", "lower"),
    ("easier", "harder"),
    ("newer", "older"),
    ("more", "fewer"),
    ("better", "worse"),
]
UNITS = [
    ("MB", "GB"),
    ("seconds", "minutes"),
    ("km", "miles"),
    ("kg", "lbs"),
    ("%", "points"),
    ("dollars", "euros"),
    ("cores", "threads"),
    ("hours", "days"),
    ("Celsius", "Kelvin"),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "March", "April", "June", "August", "September", "October", "November"]
SYNONYMS = {
    "fix": "repair",
    "quickest": "fastest",
    "simplest": "easiest",
    "begin": "start",
    "purchase": "buy",
    "obtain": "get",
    "modify": "change",
    "erase": "wipe",
    "large": "big",
    "error": "failure",
    "help": "assist",
    "show": "display",
    "need": "require",
    "ways": "methods",
    "improve": "enhance",
    "check": "verify",
    "find": "locate",
    "use": "utilize",
    "build": "construct",
    "problem": "issue",
    "correct": "right",
}
WRAP_BEFORE = [
    "Hi! ",
    "Hello, ",
    "Quick question: ",
    "Hey team, ",
    "Sorry if this is basic, but ",
    "Could you help? ",
    "I was wondering: ",
    "Urgent: ",
    "Hi there. ",
    "Good morning, ",
]
WRAP_AFTER = [
    " Thanks!",
    " Thank you.",
    " Any help appreciated.",
    " Cheers",
    " TIA",
    " :)",
    " Thanks in advance.",
    " (asking for a friend)",
]
CONTRACTIONS = [
    ("do not", "don't"),
    ("does not", "doesn't"),
    ("cannot", "can't"),
    ("what is", "what's"),
    ("I am", "I'm"),
    ("it is", "it's"),
    ("is not", "isn't"),
    ("I have", "I've"),
    ("there is", "there's"),
    ("I would", "I'd"),
    ("will not", "won't"),
]
AUX_NEGATE = [
    (r"\bis\b", "is not"),
    (r"\bdoes\b", "does not"),
    (r"\bcan\b", "cannot"),
    (r"\bshould\b", "should not"),
    (r"\bwill\b", "will not"),
    (r"\bare\b", "are not"),
    (r"\bdo\b", "don't"),
    (r"\bwas\b", "wasn't"),
    (r"\bwith\b", "without"),
]
KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"
QUESTION_FRAMES = [
    "How do I {x}?",
    "How can I {x}?",
    "What is the way to {x}?",
    "Is there a way to {x}?",
    "Best way to {x}?",
    "Can someone explain how to {x}?",
    "Steps to {x}",
]
REQUEST_FRAMES = ["Tell me how to {x}", "Show me how to {x}", "I need to {x}", "Help me {x}"]


# -------------------------------------------------------------------- base questions
def _tool(rng: random.Random) -> tuple[list[str], str]:
    group = rng.choice(TOOLS)
    return group, rng.choice(group)


def _action(rng: random.Random) -> str:
    verb = rng.choice([v for pair in VERB_PAIRS for v in pair] + SIBLING_VERBS[0])
    return f"{verb} {rng.choice(OBJECTS)}"


def _frame(rng: random.Random, action: str) -> str:
    return rng.choice(QUESTION_FRAMES).format(x=action)


# -------------------------------------------------------------------- negatives
def neg_direction(rng: random.Random) -> Example:
    if rng.random() < 0.6:
        x, y = rng.choice(CONVERSIONS)
        verb = rng.choice(["convert", "turn", "cast", "change", "map"])
        word = "into" if rng.random() < 0.3 else "to"
        a = f"{verb} {x} {word} {y}"
        b = f"{verb} {y} {word} {x}"
    else:
        x, y = rng.choice(PLACES)
        verb = rng.choice(["move", "copy", "sync", "migrate", "transfer", "forward", "push"])
        thing = rng.choice(["the data", "my files", "the settings", "the users", "a folder"])
        a = f"{verb} {thing} from {x} to {y}"
        b = f"{verb} {thing} from {y} to {x}"
    if rng.random() < 0.5:
        a, b = _frame(rng, a), _frame(rng, b)
    else:
        a, b = a[0].upper() + a[1:], b[0].upper() + b[1:]
    return Example(a, b, False, "direction")


def neg_position(rng: random.Random) -> Example:
    p, q = rng.choice(POSITIONS)
    target = rng.choice(POSITION_TARGETS)
    verb = rng.choice(POSITION_VERBS)
    _, tool = _tool(rng)
    tail = f" in {tool}" if rng.random() < 0.5 else ""
    article = "" if p.startswith(("the", "only", "all", "each", "every")) else "the "
    article_q = "" if q.startswith(("the", "only", "all", "each", "every")) else "the "
    a = _frame(rng, f"{verb} " + target.format(p=article + p) + tail)
    b = _frame(rng, f"{verb} " + target.format(p=article_q + q) + tail)
    return Example(a, b, False, "position")


def neg_task(rng: random.Random) -> Example:
    kind = rng.random()
    topic = rng.choice(TOPICS)
    if kind < 0.4:
        x, y = rng.sample(rng.choice(FORMS), 2)
        lead = rng.choice(
            [
                "Write a {f} about {t}",
                "Draft a {f} on {t}",
                "Give me a {f} for {t}",
                "Compose a {f} about {t}",
                "Turn my notes on {t} into a {f}",
            ]
        )
        a, b = lead.format(f=x, t=topic), lead.format(f=y, t=topic)
    elif kind < 0.7:
        x, y = rng.sample(AUDIENCES, 2)
        lead = rng.choice(
            [
                "Explain {t} to {a}",
                "Describe {t} for {a}",
                "How would you explain {t} to {a}?",
                "Teach {t} to {a}",
            ]
        )
        a, b = lead.format(t=topic, a=x), lead.format(t=topic, a=y)
    elif kind < 0.85:
        x, y = rng.choice(TONES)
        if rng.random() < 0.5:
            x, y = y, x
        lead = rng.choice(
            [
                "Make this message {w}",
                "Rewrite my note about {t} to be {w}",
                "Can you make the email {w}?",
            ]
        )
        a, b = lead.format(w=x, t=topic), lead.format(w=y, t=topic)
    else:
        group = rng.choice(TOOLS[:1] + TOOLS[8:9])
        x, y = rng.sample(group, 2)
        job = rng.choice(
            [
                "a function that parses dates",
                "a script that renames files",
                "a retry helper",
                "a small web server",
                "a linked list",
            ]
        )
        a, b = f"Write {job} in {x}", f"Write {job} in {y}"
    return Example(a, b, False, "task")


def neg_entity(rng: random.Random) -> Example:
    group, x = _tool(rng)
    y = rng.choice([t for t in group if t != x])
    action = _action(rng)
    lead = rng.choice(["{q} in {t}", "{q} with {t}", "{q} on {t}", "{t}: {q}"])
    a = lead.format(q=_frame(rng, action).rstrip("?"), t=x)
    b = a.replace(x, y)
    return Example(a, b, False, "entity")


def neg_antonym(rng: random.Random) -> Example:
    x, y = rng.choice(VERB_PAIRS)
    if rng.random() < 0.5:
        x, y = y, x
    obj = rng.choice(OBJECTS)
    _, tool = _tool(rng)
    frame = rng.choice(QUESTION_FRAMES)
    a = frame.format(x=f"{x} {obj} in {tool}")
    b = frame.format(x=f"{y} {obj} in {tool}")
    return Example(a, b, False, "antonym")


def neg_sibling(rng: random.Random) -> Example:
    """One verb or object replaced by another of the same kind (a real word, no typo)."""
    frame = rng.choice(QUESTION_FRAMES)
    _, tool = _tool(rng)
    if rng.random() < 0.5:
        x, y = rng.sample(rng.choice(SIBLING_VERBS), 2)
        obj = rng.choice(OBJECTS)
        a, b = frame.format(x=f"{x} {obj} in {tool}"), frame.format(x=f"{y} {obj} in {tool}")
    else:
        verb = rng.choice(SIBLING_VERBS[0])
        x, y = rng.sample(OBJECTS, 2)
        a, b = frame.format(x=f"{verb} {x} in {tool}"), frame.format(x=f"{verb} {y} in {tool}")
    return Example(a, b, False, "sibling")


def neg_number(rng: random.Random) -> Example:
    kind = rng.random()
    _, tool = _tool(rng)
    if kind < 0.35:
        n = rng.choice([2, 3, 5, 8, 10, 16, 24, 30, 64, 100, 250, 512])
        m = rng.choice([k for k in (1, 4, 6, 12, 15, 20, 32, 45, 90, 128, 200, 1000) if k != n])
        unit = rng.choice(UNITS)[0]
        lead = rng.choice(
            [
                "Set the limit to {n} {u} in {t}",
                "Is {n} {u} enough for {t}?",
                "How do I allocate {n} {u} to {t}?",
                "Why does {t} take {n} {u}?",
            ]
        )
        a, b = lead.format(n=n, u=unit, t=tool), lead.format(n=m, u=unit, t=tool)
    elif kind < 0.55:
        u, v = rng.choice(UNITS)
        n = rng.choice([1, 2, 5, 10, 40, 60])
        lead = rng.choice(
            [
                "Set the timeout to {n} {u}",
                "Convert {n} {u} for the report",
                "Is {n} {u} a lot for {t}?",
            ]
        )
        a, b = lead.format(n=n, u=u, t=tool), lead.format(n=n, u=v, t=tool)
    elif kind < 0.75:
        x, y = rng.sample(DAYS if rng.random() < 0.5 else MONTHS, 2)
        lead = rng.choice(
            [
                "Is support available on {d}?",
                "Can the delivery arrive by {d}?",
                "Schedule the deploy for {d}",
                "Why did the job fail on {d}?",
            ]
        )
        a, b = lead.format(d=x), lead.format(d=y)
    else:
        major = rng.choice([2, 3, 4, 5, 11, 14, 16, 18])
        x, y = f"{major}.{rng.randint(0, 9)}", f"{major}.{rng.randint(10, 19)}"
        lead = rng.choice(
            [
                "What changed in {t} {v}?",
                "How do I upgrade to {t} {v}?",
                "Is {t} {v} still supported?",
            ]
        )
        a, b = lead.format(t=tool, v=x), lead.format(t=tool, v=y)
    return Example(a, b, False, "number")


def neg_comparative(rng: random.Random) -> Example:
    x, y = rng.choice(COMPARATIVES)
    group, t1 = _tool(rng)
    t2 = rng.choice([t for t in group if t != t1])
    if rng.random() < 0.5:
        a, b = f"Is {t1} {x} than {t2}?", f"Is {t2} {x} than {t1}?"
    else:
        a, b = f"Is {t1} {x} than {t2}?", f"Is {t1} {y} than {t2}?"
    return Example(a, b, False, "comparative")


def neg_negation(rng: random.Random, base: str) -> Example | None:
    for pattern, replacement in rng.sample(AUX_NEGATE, len(AUX_NEGATE)):
        if re.search(pattern, base, flags=re.IGNORECASE):
            b = re.sub(pattern, replacement, base, count=1, flags=re.IGNORECASE)
            return Example(base, b, False, "negation")
    return None


def neg_number_in(rng: random.Random, base: str) -> Example | None:
    numbers = re.findall(r"\b\d+\b", base)
    if not numbers:
        return None
    n = rng.choice(numbers)
    m = str(int(n) + rng.choice([1, 2, 5, 10, -1]) if int(n) > 1 else int(n) + 3)
    return Example(base, re.sub(rf"\b{n}\b", m, base, count=1), False, "number")


def neg_from_to_in(base: str) -> Example | None:
    m = re.search(r"\bfrom (\w+) to (\w+)\b", base)
    if not m or m.group(1).lower() == m.group(2).lower():
        return None
    swapped = base[: m.start()] + f"from {m.group(2)} to {m.group(1)}" + base[m.end() :]
    return Example(base, swapped, False, "direction")


# prepositions that point from a source to a target; "vs" and "and" are symmetric, so left out
_TOWARDS = ("to", "into", "onto")
_NOT_AN_ARGUMENT = frozenset(
    "how what why when where which who is are do does can could should would will a an the "
    "i you we it my your our want wants need needs like going able have has had way ways "
    "used trying try tried best easiest fastest possible steps step order".split()
)


def neg_direction_mixed(rng: random.Random) -> Example:
    """Source and target swapped with other wording on each side ("copy from the host into
    the container" / "copy from the container to the host"), in a sentence of its own."""
    x, y = rng.choice(
        PLACES + [(a.removeprefix("a "), b.removeprefix("a ")) for a, b in CONVERSIONS]
    )
    verb = rng.choice(["copy", "send", "move", "switch", "port", "translate", "pipe", "export"])
    thing = rng.choice(["", "the files ", "my notes ", "the config ", "the logs "])
    first, second = rng.choice(_TOWARDS), rng.choice(_TOWARDS)
    a = f"{verb} {thing}from {x} {first} {y}"
    b = rng.choice(
        [
            f"{verb} {thing}from {y} {second} {x}",
            f"{verb} {thing}{second} {x} from {y}",
            f"{verb} {thing}{y} {second} {x}",
        ]
    )
    if rng.random() < 0.5:
        a, b = _frame(rng, a), _frame(rng, b)
    else:
        a, b = a[0].upper() + a[1:], b[0].upper() + b[1:]
    return Example(a, b, False, "direction")


def neg_swap_around_in(base: str) -> Example | None:
    """A training question with the two words around "to" / "into" / "than" swapped ("convert
    PDF to Word" / "convert Word to PDF", "Is Java faster than Python" / "... Python than
    Java"): the same words, the other direction."""
    for m in re.finditer(r"\b([A-Za-z][\w.+#-]*) (to|into|onto|than) ([A-Za-z][\w.+#-]*)\b", base):
        left, word, right = m.group(1), m.group(2), m.group(3)
        if left.lower() in _NOT_AN_ARGUMENT or right.lower() in _NOT_AN_ARGUMENT:
            continue
        if left.lower() == right.lower() or len(left) < 2 or len(right) < 2:
            continue
        swapped = base[: m.start()] + f"{right} {word} {left}" + base[m.end() :]
        return Example(base, swapped, False, "direction")
    return None


# -------------------------------------------------------------------- positives
def typo(rng: random.Random, word: str) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.random()
    if kind < 0.3:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # swap neighbours
    if kind < 0.55:
        return word[:i] + word[i + 1 :]  # drop
    if kind < 0.75:
        return word[:i] + word[i] + word[i:]  # double
    return word[:i] + rng.choice(KEYBOARD) + word[i + 1 :]  # replace


def pos_typos(rng: random.Random, base: str) -> Example | None:
    words = base.split(" ")
    long_ = [i for i, w in enumerate(words) if len(w.strip("?.,!")) >= 4]
    if not long_:
        return None
    for i in rng.sample(long_, min(len(long_), rng.choice([1, 1, 2]))):
        core = words[i].rstrip("?.,!")
        words[i] = typo(rng, core) + words[i][len(core) :]
    return Example(base, " ".join(words), True, "typo")


def real_word_typos(word: str, words: frozenset[str]) -> list[str]:
    """Single-letter slips of ``word`` that are other real words ("reset" -> "rest",
    "what" -> "wat" is not; "their" -> "there" is)."""
    lower = word.lower()
    out = set()
    for i in range(len(lower)):
        out.add(lower[:i] + lower[i + 1 :])  # drop
        if i + 1 < len(lower):
            out.add(lower[:i] + lower[i + 1] + lower[i] + lower[i + 2 :])  # swap
        for c in KEYBOARD:
            out.add(lower[:i] + c + lower[i + 1 :])  # replace
    out.discard(lower)
    return sorted(w for w in out if len(w) >= 3 and w in words)


def pos_real_word_typo(rng: random.Random, base: str, words: frozenset[str]) -> Example | None:
    """A typo that lands on another real word: the same question, mistyped."""
    tokens = base.split(" ")
    order = [i for i, t in enumerate(tokens) if len(t.strip("?.,!")) >= 4]
    rng.shuffle(order)
    for i in order:
        core = tokens[i].rstrip("?.,!")
        options = real_word_typos(core, words)
        if options:
            slip = rng.choice(options)
            slip = slip[0].upper() + slip[1:] if core[0].isupper() else slip
            tokens[i] = slip + tokens[i][len(core) :]
            return Example(base, " ".join(tokens), True, "typo_real")
    return None


def pos_identical(rng: random.Random, base: str) -> Example:
    """The same question again, or with only case, spacing or final punctuation changed."""
    kind = rng.random()
    if kind < 0.4:
        b = base
    elif kind < 0.7:
        b = base.rstrip("?.!") + rng.choice(["", "?", "??", ".", " ?"])
    else:
        b = base.lower() if rng.random() < 0.5 else base[0].lower() + base[1:]
    return Example(base, b, True, "identical")


_FRAME_SWAPS = [
    ("How do I ", ["How can I ", "How to ", "How should I ", "What's the way to ", "Ways to "]),
    ("How can I ", ["How do I ", "How to ", "Is there a way to ", "What is the best way to "]),
    ("What is ", ["What's ", "Whats ", "Tell me what is "]),
    ("Can I ", ["Is it possible to ", "Am I able to ", "Could I "]),
    ("Is it possible to ", ["Can I ", "Can you "]),
    ("How to ", ["How do I ", "How can I ", "How does one "]),
    ("What are ", ["What're ", "Which are ", "List "]),
]


def pos_frame(rng: random.Random, base: str) -> Example | None:
    """Another opening that asks the same thing ("How do I" / "How can I" / "How to")."""
    for lead, others in _FRAME_SWAPS:
        if base.startswith(lead):
            return Example(base, rng.choice(others) + base[len(lead) :], True, "frame")
    return None


def pos_wrap(rng: random.Random, base: str) -> Example:
    b = base
    if rng.random() < 0.7:
        b = rng.choice(WRAP_BEFORE) + b[0].lower() + b[1:]
    if rng.random() < 0.5 or b == base:
        b = b + rng.choice(WRAP_AFTER)
    return Example(base, b, True, "wrapper")


def pos_contraction(rng: random.Random, base: str) -> Example | None:
    for long_, short in rng.sample(CONTRACTIONS, len(CONTRACTIONS)):
        if re.search(rf"\b{long_}\b", base, flags=re.IGNORECASE):
            return Example(base, re.sub(rf"\b{long_}\b", short, base, flags=re.I), True, "contr")
        if re.search(rf"\b{short}\b", base, flags=re.IGNORECASE):
            return Example(base, re.sub(rf"\b{short}\b", long_, base, flags=re.I), True, "contr")
    return None


def pos_synonym(rng: random.Random, base: str) -> Example | None:
    words = re.findall(r"\w+", base.lower())
    options = [w for w in words if w in SYNONYMS] + [w for w in words if w in SYNONYMS.values()]
    if not options:
        return None
    w = rng.choice(options)
    other = SYNONYMS.get(w) or next(k for k, v in SYNONYMS.items() if v == w)
    return Example(base, re.sub(rf"\b{w}\b", other, base, count=1, flags=re.I), True, "synonym")


def pos_request(rng: random.Random) -> Example:
    action = _action(rng)
    _, tool = _tool(rng)
    action = f"{action} in {tool}" if rng.random() < 0.6 else action
    a = rng.choice(QUESTION_FRAMES).format(x=action)
    if rng.random() < 0.5:
        b = rng.choice(REQUEST_FRAMES).format(x=action)
    else:
        b = rng.choice(QUESTION_FRAMES).format(x=action)
        if b == a:
            b = rng.choice(REQUEST_FRAMES).format(x=action)
    return Example(a, b, True, "request")


def pos_reorder(rng: random.Random) -> Example:
    _, tool = _tool(rng)
    action = _action(rng)
    a = f"How do I {action} in {tool}?"
    b = rng.choice(
        [
            f"In {tool}, how do I {action}?",
            f"{tool}: how do I {action}?",
            f"How do I {action}, using {tool}?",
        ]
    )
    return Example(a, b, True, "reorder")


def pos_plain(rng: random.Random, base: str) -> Example:
    b = base.lower().rstrip("?") if rng.random() < 0.5 else base.upper()
    return Example(base, b, True, "case")


# -------------------------------------------------------------------- the mix
def _templated_base(rng: random.Random) -> str:
    _, tool = _tool(rng)
    return rng.choice(
        [
            _frame(rng, f"{_action(rng)} in {tool}"),
            f"Why does {tool} fail when I {_action(rng)}?",
            f"Is it possible to {_action(rng)} with {tool}?",
            f"What should I do if {tool} cannot {rng.choice(SIBLING_VERBS[0])} my files?",
        ]
    )


MIXES = ("round1", "round2")


def generate(
    count: int,
    seed: int,
    quora_questions: Sequence[str],
    words: frozenset[str] = frozenset(),
    mix: str = "round1",
) -> list[Example]:
    """``count`` examples, about half hard negatives and half meaning-preserving positives.

    ``mix`` "round1" is the mix the bundled model was trained on; "round2" adds direction
    swaps with other prepositions and from training questions, typos onto real words (from
    ``words``, real English words), identical pairs and other openings. (A model trained on
    round 2 did no better on the tuning split: docs/semantic-correctness.md.)"""
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}: choose from {MIXES}")
    rng = random.Random(seed)
    templated: list[Callable[[random.Random], Example]] = [
        neg_direction,
        neg_direction,
        neg_position,
        neg_position,
        neg_task,
        neg_task,
        neg_entity,
        neg_antonym,
        neg_sibling,
        neg_sibling,
        neg_number,
        neg_comparative,
    ]
    if mix == "round2":
        templated.append(neg_direction_mixed)
    pick = _round1 if mix == "round1" else _round2
    out: list[Example] = []
    while len(out) < count:
        base = rng.choice(quora_questions) if rng.random() < 0.5 else _templated_base(rng)
        if len(base) > 200:
            continue
        ex = pick(rng, rng.random(), base, templated, words)
        if ex is None or (ex.a == ex.b and ex.kind != "identical"):
            continue
        # a typo on top of a hard negative is still a hard negative; teaches "typo != same"
        if not ex.same and rng.random() < 0.15:
            noisy = pos_typos(rng, ex.b)
            if noisy is not None:
                ex = Example(ex.a, noisy.b, False, ex.kind)
        if rng.random() < 0.5:
            ex = Example(ex.b, ex.a, ex.same, ex.kind)
        out.append(ex)
    return out


Templated = Sequence[Callable[[random.Random], Example]]


def _round1(
    rng: random.Random, r: float, base: str, templated: Templated, words: frozenset[str]
) -> Example | None:
    if r < 0.34:
        return rng.choice(templated)(rng)
    if r < 0.42:
        return neg_negation(rng, base) or neg_number_in(rng, base) or neg_from_to_in(base)
    if r < 0.47:
        return neg_number_in(rng, base) or neg_from_to_in(base)
    if r < 0.70:
        return pos_typos(rng, base)
    if r < 0.78:
        return pos_wrap(rng, base)
    if r < 0.83:
        return pos_contraction(rng, base) or pos_synonym(rng, base)
    if r < 0.88:
        return pos_synonym(rng, base) or pos_plain(rng, base)
    if r < 0.95:
        return pos_request(rng)
    return pos_reorder(rng)


def _round2(
    rng: random.Random, r: float, base: str, templated: Templated, words: frozenset[str]
) -> Example | None:
    if r < 0.30:
        return rng.choice(templated)(rng)
    if r < 0.36:
        return neg_negation(rng, base) or neg_number_in(rng, base) or neg_from_to_in(base)
    if r < 0.39:
        return neg_number_in(rng, base) or neg_from_to_in(base)
    if r < 0.45:
        return neg_swap_around_in(base) or neg_from_to_in(base) or neg_direction_mixed(rng)
    if r < 0.63:
        return pos_typos(rng, base)
    if r < 0.66:
        return pos_real_word_typo(rng, base, words) if words else None
    if r < 0.69:
        return pos_identical(rng, base)
    if r < 0.75:
        return pos_frame(rng, base) or pos_wrap(rng, base)
    if r < 0.80:
        return pos_wrap(rng, base)
    if r < 0.84:
        return pos_contraction(rng, base) or pos_synonym(rng, base)
    if r < 0.88:
        return pos_synonym(rng, base) or pos_plain(rng, base)
    if r < 0.95:
        return pos_request(rng)
    return pos_reorder(rng)
