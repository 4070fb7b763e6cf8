"""Token prices, for what a cache hit saved.

The bundled table (``sidecar/data/model_prices.json``) is a snapshot of the public price map
LiteLLM ships in its PyPI package, cut down to OpenAI and Anthropic models and to the two
prices the sidecar uses; its ``source`` and ``snapshot_date`` say where and when it came from.
``pricing.file`` replaces it with a table of the same shape.

A model is priced only when its name (as the provider reported it, or without a
``provider/`` prefix) is in the table: there is no fuzzy matching, because a wrong price is
worse than none. An unknown model's tokens are still counted; its cost is marked unknown.

To refresh the snapshot: ``python -m sidecar.pricing <model_prices_and_context_window.json>
<litellm version>`` (the JSON inside an installed ``litellm`` package).
"""

from __future__ import annotations

import datetime
import math
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

_PROVIDERS = ("openai", "text-completion-openai", "anthropic")


@dataclass(frozen=True, slots=True)
class Price:
    input_per_token: float
    output_per_token: float


class PricingError(ValueError):
    """A price table that cannot be used; the message names the file and the problem."""


class PriceTable:
    def __init__(self, prices: dict[str, Price], source: str) -> None:
        self.prices = prices
        self.source = source

    def price(self, model: str) -> Price | None:
        found = self.prices.get(model)
        if found is None and "/" in model:
            found = self.prices.get(model.split("/", 1)[1])
        return found

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for these tokens, or None when the model has no price (never a guess)."""
        price = self.price(model)
        if price is None:
            return None
        return prompt_tokens * price.input_per_token + completion_tokens * price.output_per_token

    @classmethod
    def from_json(cls, data: Any, where: str) -> PriceTable:
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise PricingError(f"{where}: expected an object with a 'models' object")
        prices: dict[str, Price] = {}
        for name, row in data["models"].items():
            if not isinstance(row, dict):
                raise PricingError(f"{where}: models.{name} is not an object")
            values = []
            for key in ("input_cost_per_token", "output_cost_per_token"):
                value = row.get(key)
                if (
                    not isinstance(value, int | float)
                    or isinstance(value, bool)
                    or not math.isfinite(value)
                    or value < 0
                ):
                    raise PricingError(
                        f"{where}: models.{name}.{key} must be a non-negative number"
                    )
                values.append(float(value))
            prices[name] = Price(values[0], values[1])
        source = data.get("source")
        return cls(prices, source if isinstance(source, str) else where)


def load_prices(path: str = "") -> PriceTable:
    """The table at ``path`` (``pricing.file``), or the bundled snapshot. Raises PricingError."""
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise PricingError(f"pricing.file {path}: cannot read: {exc.strerror or exc}") from exc
        where = f"pricing.file {path}"
    else:
        raw = resources.files("sidecar").joinpath("data/model_prices.json").read_bytes()
        where = "bundled price table"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PricingError(f"{where}: not valid JSON: {exc}") from None
    return PriceTable.from_json(data, where)


def build_snapshot(litellm_map: dict[str, Any], version: str) -> dict[str, Any]:
    """The bundled table's content from LiteLLM's price map (OpenAI and Anthropic models)."""
    models: dict[str, dict[str, float]] = {}
    for name, row in sorted(litellm_map.items()):
        if not isinstance(row, dict) or row.get("litellm_provider") not in _PROVIDERS:
            continue
        inp, out = row.get("input_cost_per_token"), row.get("output_cost_per_token")
        if isinstance(inp, int | float) and isinstance(out, int | float):
            models[name] = {"input_cost_per_token": inp, "output_cost_per_token": out}
    return {
        "source": (
            f"litellm {version} (PyPI), litellm/model_prices_and_context_window_backup.json; "
            f"providers {', '.join(_PROVIDERS)}"
        ),
        "snapshot_date": datetime.date.today().isoformat(),
        "models": models,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m sidecar.pricing <litellm price map json> <litellm version>")
        return 2
    snapshot = build_snapshot(orjson.loads(Path(argv[0]).read_bytes()), argv[1])
    out = Path(__file__).parent / "data" / "model_prices.json"
    out.write_bytes(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"{len(snapshot['models'])} models written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
