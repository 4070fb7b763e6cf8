"""Thin adapters between a proxy's protocol and the pipeline."""
