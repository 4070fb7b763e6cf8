"""Embedding backends behind one interface (``embedders.base.Embedder``)."""

from __future__ import annotations

from embedders.base import Embedder, EmbedderError


def build_embedder(
    backend: str,
    *,
    model: str,
    model_path: str = "",
    base_url: str = "",
    api_key_env: str = "OPENAI_API_KEY",
    dimension: int = 0,
    timeout: float = 10.0,
) -> Embedder:
    if backend == "sentence-transformers":
        from embedders.sentence_tf import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(model=model, model_path=model_path)
    if backend == "openai":
        from embedders.openai_compat import OpenAIEmbedder

        return OpenAIEmbedder(
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            dimension=dimension,
            timeout=timeout,
        )
    raise EmbedderError(f"unknown embedder backend {backend!r}")


__all__ = ["Embedder", "EmbedderError", "build_embedder"]
