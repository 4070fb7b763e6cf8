"""PII detection and redaction on Microsoft Presidio (provider ``presidio``).

Modules: ``config`` (profile config), ``engine`` (offline AnalyzerEngine), ``recognizers``
(fast/offline recognizers, custom YAML recognizers), ``context`` (context-word scoring),
``redaction`` (modes, placeholder vault, streaming restorer), ``check`` (the Check).
Importing this package does not import Presidio; ``guardrails.pii.check`` does.
"""

from guardrails.pii.redaction import (
    PLACEHOLDER,
    VAULT_KEY,
    PlaceholderVault,
    StreamingRestorer,
    restore_text,
)

__all__ = ["PLACEHOLDER", "VAULT_KEY", "PlaceholderVault", "StreamingRestorer", "restore_text"]
