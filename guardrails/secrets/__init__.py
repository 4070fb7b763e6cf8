"""Secret scanning: a Gitleaks-compatible detector and the ``secrets`` guardrail check."""

from guardrails.secrets.config import (
    RuleSet,
    SecretsConfigError,
    builtin_ruleset,
    load_gitleaks_config,
    parse_gitleaks_toml,
)
from guardrails.secrets.detect import ScanReport, SecretFinding, SecretScanner, shannon_entropy

__all__ = [
    "RuleSet",
    "ScanReport",
    "SecretFinding",
    "SecretScanner",
    "SecretsConfigError",
    "builtin_ruleset",
    "load_gitleaks_config",
    "parse_gitleaks_toml",
    "shannon_entropy",
]
