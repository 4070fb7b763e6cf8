"""Embedding backends behind one interface (``embedders.base.Embedder``)."""

from __future__ import annotations

import os

# Set before torch loads its OpenMP runtime: idle OpenMP threads then sleep instead of
# spinning. The sidecar shares its cores with the proxy; with spinning threads one embedding
# took 5x longer on a busy 2-core machine (benchmarks/embedding_bench.py, docs/benchmarks.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from embedders.base import Embedder, EmbedderError  # noqa: E402


def build_embedder(
    backend: str,
    *,
    model: str,
    model_path: str = "",
    base_url: str = "",
    api_key_env: str = "OPENAI_API_KEY",
    dimension: int = 0,
    timeout: float = 10.0,
    onnx_quantize: bool = False,
    onnx_cache_dir: str = "",
    batch_window_ms: float = 0.0,
    max_batch: int = 1,
    background_priority: str = "normal",
    background_threads: int = 0,
) -> Embedder:
    """The configured backend; behind a micro-batcher when ``max_batch`` is above 1."""
    inner: Embedder
    if backend == "sentence-transformers":
        from embedders.sentence_tf import SentenceTransformerEmbedder

        inner = SentenceTransformerEmbedder(
            model=model,
            model_path=model_path,
            background_priority=background_priority,
            background_threads=background_threads,
        )
    elif backend == "onnx":
        from embedders.onnx_embedder import OnnxEmbedder

        inner = OnnxEmbedder(
            model=model, model_path=model_path, cache_dir=onnx_cache_dir, quantize=onnx_quantize
        )
    elif backend == "openai":
        from embedders.openai_compat import OpenAIEmbedder

        inner = OpenAIEmbedder(
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            dimension=dimension,
            timeout=timeout,
        )
    else:
        raise EmbedderError(
            f"unknown embedder backend {backend!r} (use sentence-transformers, onnx or openai)"
        )
    from embedders.batching import with_batching

    # Splitting a batch by length saves padding work on a local model; a remote API would only
    # see more requests.
    return with_batching(inner, batch_window_ms, max_batch, split_by_length=backend != "openai")


__all__ = ["Embedder", "EmbedderError", "build_embedder"]
