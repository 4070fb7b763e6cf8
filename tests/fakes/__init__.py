"""Local servers that speak the wire protocols of cloud guardrail services, for tests."""
