"""The rule file the access-log and Prometheus tests run: one input rule that blocks an
injection, one that only detects (so both "blocked" and "detected" outcomes are seen)."""

RULES = r"""
profiles:
  injection:
    provider: regex
    config:
      patterns: [{name: ignore-previous, pattern: '(?i)ignore (all )?previous instructions'}]
  watch:
    provider: regex
    config: {patterns: [{name: refund, pattern: '(?i)refund'}]}
rules:
  - id: block-injection
    when: 'true'
    apply_to: input
    profiles: [injection]
    action: block
  - id: watch-refunds
    when: 'true'
    apply_to: input
    profiles: [watch]
    action: detect_only
"""
