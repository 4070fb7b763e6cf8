"""An OpenAI-compatible ``/v1/embeddings`` client, for teams that embed with a provider."""

from __future__ import annotations

import os
from collections.abc import Sequence

import httpx
import numpy as np

from embedders.base import EmbedderError, unit_rows


class OpenAIEmbedder:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        dimension: int = 0,
        timeout: float = 10.0,
    ) -> None:
        if not base_url:
            raise EmbedderError("embedder.base_url is required for the openai backend")
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._api_key_env = api_key_env
        self._expected = dimension
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self.model_id = f"openai:{model}"
        self.dimension = dimension

    async def start(self) -> None:
        key = os.environ.get(self._api_key_env, "")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(timeout=self._timeout, headers=headers)
        vector = await self.embed(["warm up"])
        got = int(vector.shape[1])
        if self._expected and got != self._expected:
            raise EmbedderError(
                f"embedder.dimension is {self._expected} but {self._model} returned {got}"
            )
        self.dimension = got

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._client is None:
            raise EmbedderError("embedder used before start()")
        try:
            response = await self._client.post(
                self._url, json={"model": self._model, "input": list(texts)}
            )
        except httpx.HTTPError as exc:
            raise EmbedderError(f"embedding request to {self._url} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise EmbedderError(
                f"embedding request to {self._url} returned HTTP {response.status_code}"
            )
        try:
            rows = sorted(response.json()["data"], key=lambda d: d["index"])
            matrix = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderError(f"unexpected embeddings response from {self._url}") from exc
        if matrix.shape[0] != len(texts):
            raise EmbedderError("embeddings response has the wrong number of vectors")
        return unit_rows(matrix)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
