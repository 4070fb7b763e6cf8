"""Rule files: loading and validation (the model they load into is ``guardrails.ruleset``).

A rule file has two top-level keys: ``profiles`` (named check configurations, built once at
load) and ``rules`` (which profiles run on which traffic, and what happens on a finding).
Validation collects every problem in every file before failing, and each error names the
file, the rule id or profile name and the line:column of the offending YAML node, so
``sidecar check-config`` can report everything in one pass.

Profiles form one namespace across all loaded files (a rule may use a profile defined in
another file); rule ids are unique across files.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cel
import yaml

from guardrails.base import Check, CheckConfigError
from guardrails.registry import PROVIDERS, build_check
from guardrails.ruleset import (
    DEFAULT_SCAN,
    Action,
    ApplyTo,
    OnError,
    Profile,
    Redaction,
    Rule,
    RuleError,
    RuleFileError,
    RuleSet,
    Scan,
    close_checks,
)

# The model is importable from here too (``from guardrails.rules import RuleSet``).
__all__ = [
    "CEL_VARIABLES",
    "Action",
    "ApplyTo",
    "OnError",
    "Profile",
    "Redaction",
    "Rule",
    "RuleError",
    "RuleFileError",
    "RuleSet",
    "check_key",
    "close_checks",
    "compile_condition",
    "load_rule_files",
    "validate_rule_files",
]

log = logging.getLogger(__name__)


#: Variables a ``when`` expression may read (documented in docs/guardrails.md).
CEL_VARIABLES: tuple[str, ...] = tuple(
    "model provider path request_type stage headers params messages text_length cache_key".split()
)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_TOP_KEYS = ("profiles", "rules")
_PROFILE_KEYS = ("provider", "config", "redaction", "description")
_RULE_KEYS: tuple[str, ...] = tuple(
    "id description enabled when apply_to profiles action sampling_rate timeout_ms on_error"
    " priority block_status scan".split()
)
DEFAULT_TIMEOUT_MS = 1000
DEFAULT_PRIORITY = 100
MAX_TIMEOUT_MS = 600_000
# Names bound by comprehension macros (messages.exists(m, ...)) are reported as variables by
# Program.variables(); they are not free variables of the rule environment.
_MACRO_BINDING = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,(?:\s*([A-Za-z_]\w*)\s*,)?"
)
# Two representative environments used to surface type errors at load time: one populated,
# one empty, so both branches of common guards (size(messages) > 0 && ...) get exercised.
# fmt: off
_PROBES: tuple[dict[str, Any], ...] = (
    {"model": "gpt-4o", "provider": "openai", "path": "/v1/chat/completions",
     "request_type": "chat", "stage": "input", "headers": {"content-type": "application/json"},
     "params": {"temperature": 0.5, "max_tokens": 16, "stream": False},
     "messages": [{"role": "user", "content": "hello"}], "text_length": 5, "cache_key": "0123"},
    {"model": "", "provider": "", "path": "", "request_type": "embeddings", "stage": "output",
     "headers": {}, "params": {}, "messages": [], "text_length": 0, "cache_key": ""},
)
# fmt: on


def _discard(checks: Sequence[Check]) -> None:
    """Close checks built for a rule set that failed validation."""
    if not checks:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(close_checks(checks))
        return
    task = loop.create_task(close_checks(checks))
    _PENDING_CLOSES.add(task)
    task.add_done_callback(_PENDING_CLOSES.discard)


_PENDING_CLOSES: set[asyncio.Task[None]] = set()


def check_key(provider: str, config: Any, base_dir: str) -> str:
    blob = json.dumps([provider, config, base_dir], sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def _short_cel_message(exc: BaseException) -> str:
    text = str(exc)
    syntax = re.search(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)", text)
    if syntax:
        return f"CEL syntax error at {syntax.group(1)}:{syntax.group(2)} of the expression: " + (
            syntax.group(3)
        )
    first = text.split("\n", 1)[0]
    first = first.split(". CEL", 1)[0].split(". Check", 1)[0].split(". Convert", 1)[0]
    return first[:200]


def compile_condition(source: str) -> tuple[Any, frozenset[str], list[str]]:
    """Compile a ``when`` expression; returns (program, variables, problems)."""
    try:
        program = cel.compile(source)
    except Exception as exc:  # noqa: BLE001 - the binding raises ValueError, be tolerant
        return None, frozenset(), [_short_cel_message(exc)]
    bound = {name for m in _MACRO_BINDING.finditer(source) for name in m.groups() if name}
    used = set(program.variables()) - bound
    unknown = sorted(used - set(CEL_VARIABLES))
    if unknown:
        known = ", ".join(CEL_VARIABLES)
        return None, frozenset(), [f"unknown CEL variable(s) {', '.join(unknown)} (known: {known})"]
    problems: list[str] = []
    for probe in _PROBES:
        try:
            result = program.execute(probe)
        except TypeError as exc:
            problems.append(f"CEL type error: {_short_cel_message(exc)}")
        except RuntimeError as exc:
            if "Undefined variable or function" in str(exc):
                problems.append(
                    "CEL type error: unknown function or wrong argument types: "
                    + _short_cel_message(exc)
                )
            # other runtime errors (missing map key, bad index) depend on the request's data
        except Exception:  # noqa: BLE001,S110 - data-dependent failures are not load errors
            pass
        else:
            if not isinstance(result, bool):
                got = type(result).__name__
                problems.append(f"CEL type error: condition must evaluate to a bool, got {got}")
        if problems:
            break
    if problems:
        return None, frozenset(), problems
    return program, frozenset(used), []


class _FileReader:
    """Walks one file's YAML node tree and records errors with node positions."""

    def __init__(self, path: str, errors: list[RuleError]) -> None:
        self.path = path
        self.errors = errors
        self.loader: yaml.SafeLoader | None = None

    @property
    def failed(self) -> bool:
        return any(e.file == self.path for e in self.errors)

    def error(self, node: yaml.Node | None, subject: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        column = node.start_mark.column + 1 if node is not None else 0
        self.errors.append(RuleError(self.path, line, column, subject, message))

    def compose(self) -> yaml.Node | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            self.error(None, "", f"cannot read rule file: {exc}")
            return None
        self.loader = yaml.SafeLoader(text)
        try:
            return self.loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 0
            col = mark.column + 1 if mark else 0
            problem = exc.problem or exc.context or "invalid YAML"
            self.errors.append(RuleError(self.path, line, col, "", f"YAML error: {problem}"))
            return None

    def value(self, node: yaml.Node) -> Any:
        assert self.loader is not None
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.error(node, "", f"YAML error: {exc}")
            return None

    def mapping(
        self, node: yaml.Node, subject: str, allowed: Sequence[str] | None, what: str
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, subject, f"{what} must be a mapping")
            return None
        items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.error(key_node, subject, f"{what}: keys must be strings")
                continue
            if key in items:
                self.error(key_node, subject, f"duplicate key {key!r}")
                continue
            if allowed is not None and key not in allowed:
                self.error(
                    key_node, subject, f"unknown key {key!r} (allowed: {', '.join(allowed)})"
                )
                continue
            items[key] = (key_node, value_node)
        return items

    def close(self) -> None:
        if self.loader is not None:
            self.loader.dispose()


class _Invalid(ValueError):
    """A field value failed validation; the message says what was expected."""


def _enum_of(kind: type[enum.StrEnum]) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        try:
            return kind(raw)
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            raise _Invalid(f"{raw!r} is not one of {allowed}") from None

    return parse


def _integer(lo: int | None, hi: int | None) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Invalid(f"expected an integer, got {raw!r}")
        if (lo is not None and raw < lo) or (hi is not None and raw > hi):
            raise _Invalid(f"{raw} must be between {lo} and {hi}")
        return raw

    return parse


def _percent(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= 100:
        raise _Invalid(f"expected a number 0-100, got {raw!r}")
    return float(raw)


def _boolean(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise _Invalid(f"expected true or false, got {raw!r}")
    return raw


def _string(raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Invalid(f"expected a string, got {raw!r}")
    return raw


def _scan(raw: Any) -> tuple[Scan, ...]:
    names = [raw] if isinstance(raw, str) else raw
    allowed = ", ".join(m.value for m in Scan)
    if not isinstance(names, list) or not names:
        raise _Invalid(f"expected a non-empty list of {allowed}, got {raw!r}")
    out: list[Scan] = []
    for name in names:
        try:
            target = Scan(name)
        except ValueError:
            raise _Invalid(f"{name!r} is not one of {allowed}") from None
        if target not in out:
            out.append(target)
    return tuple(out)


_REQUIRED = object()
# key -> (parser, default); the _REQUIRED default marks a required key.
_PROFILE_FIELDS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "redaction": (_enum_of(Redaction), Redaction.REPLACE),
    "description": (_string, ""),
}
_RULE_FIELDS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "apply_to": (_enum_of(ApplyTo), _REQUIRED),
    "action": (_enum_of(Action), _REQUIRED),
    "on_error": (_enum_of(OnError), OnError.BLOCK),
    "sampling_rate": (_percent, 100.0),
    "timeout_ms": (_integer(1, MAX_TIMEOUT_MS), DEFAULT_TIMEOUT_MS),
    "priority": (_integer(-(2**31), 2**31), DEFAULT_PRIORITY),
    "block_status": (_integer(400, 499), None),
    "enabled": (_boolean, True),
    "description": (_string, ""),
    "scan": (_scan, DEFAULT_SCAN),
}


class _Loader:
    def __init__(
        self, paths: Sequence[str], reuse: Mapping[str, Check] | None, remote_metrics: Any = None
    ) -> None:
        self.paths = list(paths)
        self.remote_metrics = remote_metrics
        self.reuse = dict(reuse or {})
        self.errors: list[RuleError] = []
        self.profiles: dict[str, Profile] = {}
        self.profile_names: dict[str, str] = {}  # every declared name -> file (even if broken)
        self.checks: dict[str, Check] = {}
        self.built: list[Check] = []  # newly built (not reused), closed on failure
        self.rules: list[Rule] = []
        self.rule_ids: dict[str, str] = {}

    def load(self) -> RuleSet:
        parsed: list[tuple[_FileReader, dict[str, tuple[yaml.Node, yaml.Node]]]] = []
        for path in self.paths:
            reader = _FileReader(path, self.errors)
            root = reader.compose()
            if root is None and not reader.failed:
                # An empty file is far more likely a half-written one than a wish for no rules
                # (that is `rules: []`); loading it would silently drop every rule.
                reader.error(None, "", "rule file is empty (write `rules: []` for no rules)")
            top = reader.mapping(root, "", _TOP_KEYS, "the top level") if root else None
            if top is None:
                reader.close()
            else:
                parsed.append((reader, top))
        try:
            # Profiles first, from every file, so rules may use profiles from other files.
            for reader, top in parsed:
                if "profiles" in top:
                    self._profiles(reader, top["profiles"][1])
            for reader, top in parsed:
                if "rules" in top:
                    self._rules(reader, top["rules"][1])
        finally:
            for reader, _ in parsed:
                reader.close()
        if self.errors:
            _discard(self.built)
            order = {path: i for i, path in enumerate(self.paths)}
            self.errors.sort(key=lambda e: (order.get(e.file, -1), e.line, e.column))
            raise RuleFileError(self.errors)
        ordered = sorted(enumerate(self.rules), key=lambda pair: (pair[1].priority, pair[0]))
        return RuleSet(
            files=tuple(self.paths),
            profiles=self.profiles,
            rules=tuple(rule for _, rule in ordered),
            checks=self.checks,
        )

    def _fields(
        self,
        reader: _FileReader,
        node: yaml.Node,
        subject: str,
        fields: Mapping[str, tuple[yaml.Node, yaml.Node]],
        spec: Mapping[str, tuple[Callable[[Any], Any], Any]],
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, (parse, default) in spec.items():
            if key not in fields:
                if default is _REQUIRED:
                    reader.error(node, subject, f"missing required key {key!r}")
                    default = None
                values[key] = default
                continue
            value_node = fields[key][1]
            try:
                values[key] = parse(reader.value(value_node))
            except _Invalid as exc:
                reader.error(value_node, subject, f"{key}: {exc}")
        return values

    def _profiles(self, reader: _FileReader, node: yaml.Node) -> None:
        items = reader.mapping(node, "", None, "profiles")
        for name, (key_node, value_node) in (items or {}).items():
            subject = f"profile {name!r}"
            if not _ID.match(name):
                reader.error(key_node, subject, "profile names use letters, digits, '_.:-'")
            if name in self.profile_names:
                other = self.profile_names[name]
                reader.error(key_node, subject, f"profile already defined in {other}")
                continue
            self.profile_names[name] = reader.path
            self._profile(reader, name, subject, value_node)

    def _profile(self, reader: _FileReader, name: str, subject: str, node: yaml.Node) -> None:
        fields = reader.mapping(node, subject, _PROFILE_KEYS, "a profile")
        if fields is None:
            return
        n_errors = len(self.errors)
        values = self._fields(reader, node, subject, fields, _PROFILE_FIELDS)
        provider = None
        if "provider" not in fields:
            reader.error(node, subject, "missing required key 'provider'")
        else:
            provider_node = fields["provider"][1]
            provider = reader.value(provider_node)
            if not isinstance(provider, str) or provider not in PROVIDERS:
                known = ", ".join(sorted(PROVIDERS))
                reader.error(provider_node, subject, f"unknown provider {provider!r} ({known})")
        config_node = fields["config"][1] if "config" in fields else node
        config = reader.value(config_node) if "config" in fields else {}
        if config is None:
            config = {}
        elif not isinstance(config, Mapping):
            reader.error(config_node, subject, "config: expected a mapping")
        if len(self.errors) > n_errors or not isinstance(provider, str):
            return
        base_dir = os.path.dirname(os.path.abspath(reader.path))
        key = check_key(provider, config, base_dir)
        check = self.checks.get(key) or self.reuse.get(key)
        if check is None:
            try:
                check = build_check(
                    provider,
                    config,
                    base_dir=base_dir,
                    profile=name,
                    remote_metrics=self.remote_metrics,
                )
            except CheckConfigError as exc:
                reader.error(config_node, subject, f"invalid {provider} config: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - a factory bug must not abort validation
                reader.error(config_node, subject, f"{provider} check failed to build: {exc!r}")
                return
            self.built.append(check)
        self.checks[key] = check
        self.profiles[name] = Profile(
            name,
            provider,
            dict(config),
            values["redaction"],
            check,
            reader.path,
            node.start_mark.line + 1,
        )

    def _rules(self, reader: _FileReader, node: yaml.Node) -> None:
        if not isinstance(node, yaml.SequenceNode):
            reader.error(node, "", "rules must be a list")
            return
        for index, item in enumerate(node.value):
            self._rule(reader, index, item)

    def _rule(self, reader: _FileReader, index: int, node: yaml.Node) -> None:
        rule_id = _peek_id(node)
        subject = f"rule {rule_id!r}" if rule_id else f"rules[{index}]"
        n_errors = len(self.errors)
        fields = reader.mapping(node, subject, _RULE_KEYS, "a rule")
        if fields is None:
            return
        if "id" not in fields:
            reader.error(node, subject, "missing required key 'id'")
        elif rule_id is None:
            raw_id = reader.value(fields["id"][1])
            message = f"id: expected 1-128 letters, digits or '_.:-', got {raw_id!r}"
            reader.error(fields["id"][1], subject, message)
        elif rule_id in self.rule_ids:
            other = self.rule_ids[rule_id]
            reader.error(fields["id"][1], subject, f"duplicate rule id (also in {other})")
        else:
            self.rule_ids[rule_id] = reader.path
        values = self._fields(reader, node, subject, fields, _RULE_FIELDS)
        profiles = self._rule_profiles(reader, node, subject, fields)
        when_node = fields["when"][1] if "when" in fields else None
        when = reader.value(when_node) if when_node is not None else "true"
        if isinstance(when, bool):  # `when: true` without quotes is a YAML boolean
            when = "true" if when else "false"
        program, variables = None, frozenset[str]()
        if not isinstance(when, str) or not when.strip():
            reader.error(when_node, subject, "when: expected a CEL expression string")
        else:
            program, variables, problems = compile_condition(when)
            for problem in problems:
                reader.error(when_node or node, subject, f"when: {problem}")
        if len(self.errors) > n_errors or rule_id is None:
            return
        self.rules.append(
            Rule(
                id=rule_id,
                when=when,
                program=program,
                variables=variables,
                profiles=profiles,
                file=reader.path,
                line=node.start_mark.line + 1,
                **values,
            )
        )

    def _rule_profiles(
        self,
        reader: _FileReader,
        node: yaml.Node,
        subject: str,
        fields: Mapping[str, tuple[yaml.Node, yaml.Node]],
    ) -> tuple[str, ...]:
        if "profiles" not in fields:
            reader.error(node, subject, "missing required key 'profiles'")
            return ()
        node = fields["profiles"][1]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            reader.error(node, subject, "profiles: expected a non-empty list of profile names")
            return ()
        names: list[str] = []
        for item in node.value:
            name = reader.value(item)
            if not isinstance(name, str):
                reader.error(item, subject, f"profiles: expected a profile name, got {name!r}")
            elif name in names:
                reader.error(item, subject, f"profiles: {name!r} is listed twice")
            elif name not in self.profile_names:
                defined = ", ".join(sorted(self.profile_names)) or "none"
                reader.error(item, subject, f"unknown profile {name!r} (defined: {defined})")
            else:
                names.append(name)
        return tuple(names)


def _peek_id(node: yaml.Node) -> str | None:
    """The rule's id if it is a valid plain string, so every error can name the rule."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if getattr(key_node, "value", None) == "id" and isinstance(value_node, yaml.ScalarNode):
                value = value_node.value
                if value_node.tag.endswith(":str") and _ID.match(value):
                    return str(value)
    return None


def load_rule_files(
    paths: Sequence[str | os.PathLike[str]],
    *,
    reuse_checks: Mapping[str, Check] | None = None,
    remote_metrics: Any = None,
) -> RuleSet:
    """Load and validate rule files; raises RuleFileError listing every problem.

    ``reuse_checks`` (a previous RuleSet's ``checks``) lets a reload keep check instances whose
    provider, config and directory are unchanged, so heavy checks are not rebuilt.
    ``remote_metrics`` (a ``guardrails.remote_metrics.RemoteMetrics``) is shared by the checks
    that call remote services, so their calls are exported with the sidecar's metrics.
    """
    if not paths:
        return RuleSet.empty()
    return _Loader([os.fspath(p) for p in paths], reuse_checks, remote_metrics).load()


def validate_rule_files(paths: Sequence[str | os.PathLike[str]]) -> list[RuleError]:
    """Every problem in the files (empty when they are valid). Built checks are closed."""
    try:
        ruleset = load_rule_files(paths)
    except RuleFileError as exc:
        return exc.errors
    _discard(list(ruleset.checks.values()))
    return []
