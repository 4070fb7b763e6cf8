"""Rule sets in Gitleaks' TOML config format.

This module only parses and merges; regexes are compiled (and their errors reported) by
``guardrails.secrets.detect.SecretScanner``. Field names follow Gitleaks v8 (``config.go``,
``rule.go``) so an existing ``.gitleaks.toml`` loads unchanged. Fields that only make sense
for files in git history (``commits``, allowlist ``paths``) are parsed and kept, so a scan
that passes a path can honour them, but prompts have neither a path nor a commit.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from guardrails.base import CheckConfigError

log = logging.getLogger(__name__)

# Gitleaks follows [extend] up to this depth; deeper chains are almost certainly a loop.
MAX_EXTEND_DEPTH = 2
BUILTIN_RESOURCE = "builtin.toml"
BUILTIN_SOURCE = "builtin"


class SecretsConfigError(CheckConfigError):
    """A secrets rule file is invalid. The message names the file, rule and field."""


@dataclass(frozen=True, slots=True)
class Allowlist:
    """Conditions under which a finding is not reported."""

    description: str = ""
    match_all: bool = False  # condition = "AND"; default OR
    regex_target: str = "secret"  # secret | match | line
    regexes: tuple[str, ...] = ()
    stopwords: tuple[str, ...] = ()  # stored lower-cased
    paths: tuple[str, ...] = ()
    commits: tuple[str, ...] = ()
    target_rules: tuple[str, ...] = ()  # global allowlists only


@dataclass(frozen=True, slots=True)
class Required:
    """A rule a composite rule needs nearby (Gitleaks v8.28 ``[[rules.required]]``)."""

    rule_id: str
    within_lines: int | None = None
    within_columns: int | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    description: str = ""
    regex: str | None = None
    secret_group: int = 0
    entropy: float = 0.0
    keywords: tuple[str, ...] = ()  # stored lower-cased
    path: str | None = None
    tags: tuple[str, ...] = ()
    allowlists: tuple[Allowlist, ...] = ()
    skip_report: bool = False
    required: tuple[Required, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleSet:
    """An ordered set of rules plus the global allowlists."""

    rules: tuple[Rule, ...]
    allowlists: tuple[Allowlist, ...] = ()
    title: str = ""
    source: str = ""  # where it came from, for error messages

    def rule_ids(self) -> list[str]:
        return [r.id for r in self.rules]


@dataclass(slots=True)
class _Extend:
    use_default: bool = False
    path: str | None = None
    disabled_rules: tuple[str, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------
# field readers: each names the place of the problem in its error message


def _where(source: str, ctx: str) -> str:
    return f"{source}: {ctx}" if ctx else source


def _str(value: Any, source: str, ctx: str, name: str) -> str:
    if not isinstance(value, str):
        raise SecretsConfigError(
            f"{_where(source, ctx)}: field {name!r} must be a string, got {type(value).__name__}"
        )
    return value


def _opt_str(table: Mapping[str, Any], name: str, source: str, ctx: str) -> str | None:
    if name not in table:
        return None
    return _str(table[name], source, ctx, name)


def _str_list(table: Mapping[str, Any], name: str, source: str, ctx: str) -> tuple[str, ...]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SecretsConfigError(f"{_where(source, ctx)}: field {name!r} must be a list of strings")
    return tuple(value)


def _number(table: Mapping[str, Any], name: str, source: str, ctx: str) -> float:
    value = table.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SecretsConfigError(
            f"{_where(source, ctx)}: field {name!r} must be a non-negative number"
        )
    return float(value)


def _int(table: Mapping[str, Any], name: str, source: str, ctx: str) -> int | None:
    if name not in table:
        return None
    value = table[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SecretsConfigError(
            f"{_where(source, ctx)}: field {name!r} must be a non-negative integer"
        )
    return value


def _bool(table: Mapping[str, Any], name: str, source: str, ctx: str) -> bool:
    value = table.get(name, False)
    if not isinstance(value, bool):
        raise SecretsConfigError(f"{_where(source, ctx)}: field {name!r} must be true or false")
    return value


def _table(value: Any, source: str, ctx: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SecretsConfigError(f"{_where(source, ctx)}: must be a table")
    return value


# ---------------------------------------------------------------------------------------------
# parsing


def _parse_allowlist(raw: Any, source: str, ctx: str, *, global_list: bool) -> Allowlist:
    table = _table(raw, source, ctx)
    condition = (_opt_str(table, "condition", source, ctx) or "OR").upper()
    if condition not in ("OR", "AND"):
        raise SecretsConfigError(
            f'{_where(source, ctx)}: field \'condition\' must be "OR" or "AND", '
            f"got {table['condition']!r}"
        )
    target = _opt_str(table, "regexTarget", source, ctx) or "secret"
    if target not in ("secret", "match", "line"):
        raise SecretsConfigError(
            f'{_where(source, ctx)}: field \'regexTarget\' must be "secret", "match" or '
            f'"line", got {target!r}'
        )
    target_rules = _str_list(table, "targetRules", source, ctx)
    if target_rules and not global_list:
        raise SecretsConfigError(
            f"{_where(source, ctx)}: field 'targetRules' is only valid in a global allowlist"
        )
    allowlist = Allowlist(
        description=_opt_str(table, "description", source, ctx) or "",
        match_all=condition == "AND",
        regex_target=target,
        regexes=_str_list(table, "regexes", source, ctx),
        stopwords=tuple(s.lower() for s in _str_list(table, "stopwords", source, ctx)),
        paths=_str_list(table, "paths", source, ctx),
        commits=_str_list(table, "commits", source, ctx),
        target_rules=target_rules,
    )
    if not (allowlist.regexes or allowlist.stopwords or allowlist.paths or allowlist.commits):
        raise SecretsConfigError(
            f"{_where(source, ctx)}: an allowlist needs at least one of "
            "'regexes', 'stopwords', 'paths' or 'commits'"
        )
    return allowlist


def _parse_required(raw: Any, source: str, ctx: str) -> Required:
    table = _table(raw, source, ctx)
    rule_id = _opt_str(table, "id", source, ctx)
    if not rule_id:
        raise SecretsConfigError(f"{_where(source, ctx)}: field 'id' is required")
    return Required(
        rule_id=rule_id,
        within_lines=_int(table, "withinLines", source, ctx),
        within_columns=_int(table, "withinColumns", source, ctx),
    )


def _parse_rule(raw: Any, index: int, source: str) -> Rule:
    table = _table(raw, source, f"rule #{index + 1}")
    rule_id = table.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise SecretsConfigError(f"{source}: rule #{index + 1} has no 'id'")
    ctx = f"rule {rule_id!r}"
    secret_group = _int(table, "secretGroup", source, ctx) or 0
    allowlists: list[Allowlist] = []
    if "allowlist" in table and "allowlists" in table:
        raise SecretsConfigError(
            f"{source}: {ctx}: use either [rules.allowlist] or [[rules.allowlists]], not both"
        )
    if "allowlist" in table:  # pre-v8.25 single table
        allowlists.append(
            _parse_allowlist(table["allowlist"], source, f"{ctx} allowlist", global_list=False)
        )
    raw_lists = table.get("allowlists", [])
    if not isinstance(raw_lists, list):
        raise SecretsConfigError(f"{source}: {ctx}: 'allowlists' must be an array of tables")
    for i, item in enumerate(raw_lists):
        allowlists.append(
            _parse_allowlist(item, source, f"{ctx} allowlist #{i + 1}", global_list=False)
        )
    raw_required = table.get("required", [])
    if not isinstance(raw_required, list):
        raise SecretsConfigError(f"{source}: {ctx}: 'required' must be an array of tables")
    return Rule(
        id=rule_id,
        description=_opt_str(table, "description", source, ctx) or "",
        regex=_opt_str(table, "regex", source, ctx),
        secret_group=secret_group,
        entropy=_number(table, "entropy", source, ctx),
        keywords=tuple(k.lower() for k in _str_list(table, "keywords", source, ctx)),
        path=_opt_str(table, "path", source, ctx),
        tags=_str_list(table, "tags", source, ctx),
        allowlists=tuple(allowlists),
        skip_report=_bool(table, "skipReport", source, ctx),
        required=tuple(
            _parse_required(r, source, f"{ctx} required #{i + 1}")
            for i, r in enumerate(raw_required)
        ),
    )


def _parse_document(
    doc: Mapping[str, Any], source: str
) -> tuple[list[Rule], list[Allowlist], _Extend, str]:
    if "allowlist" in doc and "allowlists" in doc:
        raise SecretsConfigError(
            f"{source}: use either the [allowlist] table or [[allowlists]], not both"
        )
    global_lists: list[Allowlist] = []
    if "allowlist" in doc:
        global_lists.append(
            _parse_allowlist(doc["allowlist"], source, "[allowlist]", global_list=True)
        )
    raw_lists = doc.get("allowlists", [])
    if not isinstance(raw_lists, list):
        raise SecretsConfigError(f"{source}: 'allowlists' must be an array of tables")
    for i, item in enumerate(raw_lists):
        global_lists.append(
            _parse_allowlist(item, source, f"[[allowlists]] #{i + 1}", global_list=True)
        )

    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        raise SecretsConfigError(f"{source}: 'rules' must be an array of tables ([[rules]])")
    rules = [_parse_rule(r, i, source) for i, r in enumerate(raw_rules)]
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise SecretsConfigError(f"{source}: rule id {rule.id!r} is defined twice")
        seen.add(rule.id)

    extend = _Extend()
    if "extend" in doc:
        table = _table(doc["extend"], source, "[extend]")
        extend = _Extend(
            use_default=_bool(table, "useDefault", source, "[extend]"),
            path=_opt_str(table, "path", source, "[extend]"),
            disabled_rules=_str_list(table, "disabledRules", source, "[extend]"),
        )
        if extend.use_default and extend.path:
            raise SecretsConfigError(
                f"{source}: [extend] sets both 'useDefault' and 'path'; choose one"
            )
    title = doc.get("title", "")
    return rules, global_lists, extend, title if isinstance(title, str) else ""


def _merge_rule(base: Rule, override: Rule) -> Rule:
    """Gitleaks' extend semantics: set fields override, lists are appended."""
    return replace(
        base,
        description=override.description or base.description,
        entropy=override.entropy or base.entropy,
        secret_group=override.secret_group or base.secret_group,
        regex=override.regex if override.regex is not None else base.regex,
        path=override.path if override.path is not None else base.path,
        tags=base.tags + override.tags,
        keywords=base.keywords + tuple(k for k in override.keywords if k not in base.keywords),
        allowlists=base.allowlists + override.allowlists,
        skip_report=override.skip_report or base.skip_report,
        required=override.required or base.required,
    )


def merge_rulesets(
    base: RuleSet, override: RuleSet, *, disabled_rules: Iterable[str] = ()
) -> RuleSet:
    """``override`` extends ``base``: its rules come first and win field by field."""
    disabled = set(disabled_rules)
    base_by_id = {r.id: r for r in base.rules if r.id not in disabled}
    merged: list[Rule] = []
    for rule in override.rules:
        parent = base_by_id.pop(rule.id, None)
        merged.append(_merge_rule(parent, rule) if parent is not None else rule)
    merged.extend(r for r in base.rules if r.id in base_by_id)
    return RuleSet(
        rules=tuple(merged),
        allowlists=override.allowlists + base.allowlists,
        title=override.title or base.title,
        source=override.source,
    )


def _validate(ruleset: RuleSet) -> RuleSet:
    ids = {r.id for r in ruleset.rules}
    for rule in ruleset.rules:
        if rule.regex is None and rule.path is None:
            raise SecretsConfigError(
                f"{ruleset.source}: rule {rule.id!r} needs a 'regex' or a 'path'"
            )
        for req in rule.required:
            if req.rule_id not in ids:
                raise SecretsConfigError(
                    f"{ruleset.source}: rule {rule.id!r} requires unknown rule {req.rule_id!r}"
                )
    for allowlist in ruleset.allowlists:
        for target in allowlist.target_rules:
            if target not in ids:
                raise SecretsConfigError(
                    f"{ruleset.source}: global allowlist targets unknown rule {target!r}"
                )
    return ruleset


def _read_toml(text: str, source: str) -> Mapping[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SecretsConfigError(f"{source}: not valid TOML: {exc}") from exc


def _load(text: str, source: str, base_dir: Path | None, depth: int) -> RuleSet:
    rules, allowlists, extend, title = _parse_document(_read_toml(text, source), source)
    own = RuleSet(rules=tuple(rules), allowlists=tuple(allowlists), title=title, source=source)
    if not (extend.use_default or extend.path):
        return own
    if depth >= MAX_EXTEND_DEPTH:
        raise SecretsConfigError(
            f"{source}: [extend] chain is deeper than {MAX_EXTEND_DEPTH} (Gitleaks' limit)"
        )
    if extend.use_default:
        # We do not ship Gitleaks' default rules; the built-in pack stands in for them.
        log.warning(
            "%s: [extend] useDefault = true extends the sidecar's built-in rule pack, "
            "not Gitleaks' default rules",
            source,
        )
        parent = builtin_ruleset()
    else:
        assert extend.path is not None
        parent_path = Path(extend.path)
        if not parent_path.is_absolute():
            parent_path = (base_dir or Path.cwd()) / parent_path
        parent = _load_file(parent_path, depth + 1)
    return merge_rulesets(parent, own, disabled_rules=extend.disabled_rules)


def _load_file(path: Path, depth: int = 0) -> RuleSet:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SecretsConfigError(f"secrets rule file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretsConfigError(f"cannot read secrets rule file {path}: {exc}") from exc
    return _load(text, str(path), path.parent, depth)


def load_gitleaks_config(path: str | Path) -> RuleSet:
    """Load a Gitleaks TOML file, following ``[extend]`` (paths relative to the file)."""
    return _validate(_load_file(Path(path)))


def parse_gitleaks_toml(text: str, *, source: str = "<string>") -> RuleSet:
    """Parse TOML text; ``[extend] path`` is resolved against the working directory."""
    return _validate(_load(text, source, None, 0))


_builtin_cache: RuleSet | None = None


def builtin_ruleset() -> RuleSet:
    """The sidecar's own rule pack (``builtin.toml`` in this package)."""
    global _builtin_cache
    if _builtin_cache is None:
        text = resources.files(__package__).joinpath(BUILTIN_RESOURCE).read_text("utf-8")
        _builtin_cache = _validate(_load(text, BUILTIN_SOURCE, None, 0))
    return _builtin_cache


def combine(rulesets: Sequence[RuleSet]) -> RuleSet:
    """Later rule sets extend earlier ones (same merge as ``[extend]``)."""
    if not rulesets:
        raise SecretsConfigError("no secrets rule set given")
    result = rulesets[0]
    for extra in rulesets[1:]:
        result = merge_rulesets(result, extra)
    return _validate(result)
