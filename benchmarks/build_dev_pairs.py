"""Build the frozen development set ``benchmarks/data/dev_pairs.jsonl`` from its sources.

The pairs are hand-written, one per line, in ``benchmarks/data/dev_set/same.txt`` (same
answer) and ``traps.txt`` (different answer): ``question a || question b``, grouped under
``# category: <name>`` headers. Nothing here is generated from templates, and nothing here
shares code or word lists with the synthetic training data (``benchmarks/pair_training_data.py``):
the dev set must stay an independent check.

FROZEN: the set was committed before any tuning of the rules or the pair model. Do not edit
it to make a figure better; add a new set instead.

    python -m benchmarks.build_dev_pairs    # rewrites dev_pairs.jsonl (byte-identical)
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent / "data"
SOURCES = (("same.txt", True), ("traps.txt", False))


def read_source(path: Path, same: bool) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    category = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("# category:"):
            category = line.removeprefix("# category:").split("(")[0].strip()
            continue
        if line.startswith("#"):
            continue
        a, sep, b = line.partition(" || ")
        if not sep or not a.strip() or not b.strip() or not category:
            raise ValueError(f"{path}:{number}: expected 'a || b' under a category header")
        rows.append({"a": a.strip(), "b": b.strip(), "same": same, "category": category})
    return rows


def main() -> int:
    rows: list[dict[str, object]] = []
    for name, same in SOURCES:
        rows.extend(read_source(HERE / "dev_set" / name, same))
    out = HERE / "dev_pairs.jsonl"
    out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    traps = sum(not r["same"] for r in rows)
    print(f"{out}: {len(rows)} pairs, {traps} traps", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
