"""Saved HNSW graphs of the embedded vector index, so a restart loads them instead of
rebuilding.

SQLite stays the source of truth: a snapshot is only a hint about which vectors are already in a
graph. On load every saved entry is checked against the entries the exact store read from SQLite
(same id, same scope, same ``expires_at``, which a re-stored entry renews); a saved entry that
SQLite no longer has, or has in another version, is removed from the graph, and every SQLite
entry the snapshot lacks is added (the vectors stored after the save are replayed). A snapshot
of another model or dimension, of an unknown format, with a file of the wrong size or checksum,
or that usearch cannot read, is discarded, logged and rebuilt from SQLite.

Layout, in ``<data_dir>/vector-index/``: ``manifest.json`` (format, namespace, generation and
per graph the file name, byte size, XXH3-64 checksum and the id, label and ``expires_at`` of
each vector) and one usearch file per graph, named by generation. The manifest is written last
and atomically (write, fsync, rename), so a save interrupted by a crash leaves the previous
snapshot intact. Small scopes (brute force) are not saved: rebuilding them is a matrix copy.

Written here rather than taken from a library: no maintained library persists a usearch graph
together with the id mapping and a consistency check against another store.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import xxhash

log = logging.getLogger("sidecar.cache.embedded")

FORMAT = 2  # 2: XXH3-64 checksums (1: CRC-32; such a snapshot is discarded and rebuilt)
MANIFEST = "manifest.json"
_CHUNK = 16 << 20


class SnapshotInvalid(Exception):
    """A saved index that must not be used. The message says why."""


@dataclass(slots=True)
class SavedGraph:
    """One scope's graph as saved: usearch file and the vectors it holds."""

    scope: str
    path: Path
    ids: list[str]
    labels: list[int]
    stamps: list[float]  # expires_at of each entry, to tell a re-stored entry from the saved one
    next_label: int
    dtype: str  # the graph's scalar type (GRAPH_DTYPES); manifests written before had f32


def checksum_of(path: Path) -> int:
    """XXH3-64 of the file: damage detection, not security (the data directory is trusted);
    at 1M entries it is checked at every start, where zlib's CRC-32 took seconds."""
    digest = xxhash.xxh3_64()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return int(digest.intdigest())


def _fsync_write(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_graphs(directory: Path, generation: int, graphs: list[tuple[Any, SavedGraph]]) -> None:
    """Write each usearch graph to its file (the caller holds the index's lock: no add may
    change a graph while it is written); sets each ``SavedGraph.path``."""
    directory.mkdir(parents=True, exist_ok=True)
    for n, (graph, saved) in enumerate(graphs):
        saved.path = directory / f"g{generation}-{n}.usearch"
        graph.save(str(saved.path))


def write_manifest(
    directory: Path, namespace: str, generation: int, graphs: list[SavedGraph]
) -> None:
    """Checksum the written graphs and publish them (no lock needed: the files are complete);
    remove the files of older generations once the new manifest is in place."""
    described = []
    for saved in graphs:
        with saved.path.open("rb+") as f:
            os.fsync(f.fileno())
        described.append(
            {
                "scope": saved.scope,
                "file": saved.path.name,
                "bytes": saved.path.stat().st_size,
                "xxh3_64": checksum_of(saved.path),
                "ids": saved.ids,
                "labels": saved.labels,
                "stamps": saved.stamps,
                "next_label": saved.next_label,
                "dtype": saved.dtype,
            }
        )
    manifest = {
        "format": FORMAT,
        "namespace": namespace,
        "generation": generation,
        "graphs": described,
    }
    tmp = directory / (MANIFEST + ".tmp")
    _fsync_write(tmp, orjson.dumps(manifest))
    os.replace(tmp, directory / MANIFEST)
    keep = {d["file"] for d in described} | {MANIFEST}
    for other in directory.iterdir():
        if other.name not in keep:
            other.unlink(missing_ok=True)


def read_manifest(directory: Path, namespace: str) -> tuple[int, list[SavedGraph]] | None:
    """The saved generation and graphs, None when there is no snapshot. Raises
    ``SnapshotInvalid`` for a snapshot that must be discarded."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SnapshotInvalid(f"manifest unreadable ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotInvalid("manifest of an unknown format")
    if data.get("namespace") != namespace:
        raise SnapshotInvalid(
            f"saved for embedder {data.get('namespace')!r}, the embedder is {namespace!r}"
        )
    graphs: list[SavedGraph] = []
    try:
        for d in data["graphs"]:
            file = directory / str(d["file"])
            if "/" in str(d["file"]) or not file.exists():
                raise SnapshotInvalid(f"graph file {d['file']!r} missing")
            if file.stat().st_size != d["bytes"]:
                raise SnapshotInvalid(f"graph file {file.name} has the wrong size")
            if checksum_of(file) != d["xxh3_64"]:
                raise SnapshotInvalid(f"graph file {file.name} fails its checksum")
            ids, labels, stamps = d["ids"], d["labels"], d["stamps"]
            if not (len(ids) == len(labels) == len(stamps)):
                raise SnapshotInvalid(f"graph file {file.name}: id lists differ in length")
            dtype = str(d.get("dtype", "f32"))  # saved before graphs had a choice: f32
            if dtype not in GRAPH_DTYPES:
                raise SnapshotInvalid(f"graph file {file.name}: unknown scalar type {dtype!r}")
            graphs.append(
                SavedGraph(str(d["scope"]), file, ids, labels, stamps, int(d["next_label"]), dtype)
            )
        generation = int(data["generation"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotInvalid(f"manifest malformed ({type(exc).__name__}: {exc})") from None
    return generation, graphs


# The HNSW settings of every graph of the embedded index, pinned rather than left to usearch's
# defaults (the values of usearch 2.x) so an upgrade cannot change them under a saved graph:
# connectivity is stored in the file; the expansions are not, so a loaded graph gets them here.
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 64
# The scalar type of the vectors a graph keeps for its own navigation. i8 (usearch's linear
# quantisation of unit vectors to -127..127) costs a quarter of f32's memory, builds ~3x and
# searches ~1.3x faster here (docs/benchmarks.md, "embedded scale"); its similarities are
# approximate (a few thousandths), so the cache re-scores every candidate it fetches with the
# float32 vector SQLite keeps (layer.py): decisions are made on exact similarities.
GRAPH_DTYPES = ("i8", "f16", "f32")
GRAPH_DTYPE = "i8"


def new_graph(dimension: int, expansion_add: int = EXPANSION_ADD, dtype: str = GRAPH_DTYPE) -> Any:
    """An empty usearch graph with the index's settings (``expansion_add`` lower only in the
    scale benchmark, to compare)."""
    from usearch.index import Index

    return Index(
        ndim=dimension,
        metric="cos",
        dtype=dtype,
        connectivity=CONNECTIVITY,
        expansion_add=expansion_add,
        expansion_search=EXPANSION_SEARCH,
    )


def dtype_of(graph: Any) -> str:
    """The scalar type a usearch graph keeps its vectors in, as GRAPH_DTYPES names it."""
    return str(graph.dtype.name).lower()


def load_graph(saved: SavedGraph, dimension: int) -> Any:
    """The usearch graph of ``saved``; raises ``SnapshotInvalid`` if usearch cannot read it or
    it does not hold exactly the saved vectors."""
    try:
        graph = new_graph(dimension, dtype=saved.dtype)
        graph.load(str(saved.path))
    except Exception as exc:  # usearch raises RuntimeError/ValueError for damaged files
        raise SnapshotInvalid(f"graph file {saved.path.name} unreadable: {exc}") from None
    if graph.ndim != dimension or len(graph) != len(saved.labels) or dtype_of(graph) != saved.dtype:
        raise SnapshotInvalid(f"graph file {saved.path.name} does not match its manifest")
    return graph


def discard(directory: Path, erase: bool = False) -> None:
    """Remove the snapshot; with ``erase``, overwrite each file with zeros first (a deleted
    entry's vector must not stay readable on disk)."""
    if not directory.exists():
        return
    for path in directory.iterdir():
        if erase:
            with path.open("r+b") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(0)
                for _ in range(0, size, _CHUNK):
                    f.write(bytes(min(_CHUNK, size - f.tell())))
                f.flush()
                os.fsync(f.fileno())
        path.unlink(missing_ok=True)
