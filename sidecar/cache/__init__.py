"""Dual-layer cache: exact hash first, then embedding similarity within a scope."""
