"""``python -m benchmarks``: the same as ``sidecar bench`` (see ``benchmarks.cli``)."""

from __future__ import annotations

from benchmarks.cli import main

raise SystemExit(main())
