"""Secret-scanning benchmark: Gitleaks compatibility, built-in pack accuracy, speed, worst case.

Run: ``python -m benchmarks.secrets_bench [--rounds N] [--quick]``. Reads Gitleaks' default
config and its extracted test cases from ``../shared/data/secrets`` (next to the repository),
writes ``benchmarks/results/secrets.json`` and prints a table.

1. Compatibility: with Gitleaks' own default config loaded, does the engine agree with the
   expected verdict of each default-rule case (``expected: true`` = that rule fires on the
   text)? Measured two ways: the full config scanning each text (the sidecar's situation, where
   generic findings yield to specific ones), and one detector per rule, which is how Gitleaks'
   generator validates its cases (``utils.Validate``).
2. Built-in pack: on the true cases of the rule families it covers, is the secret found (a
   built-in finding overlapping the secret Gitleaks' rule reports)? On those families' false
   cases, is anything flagged?
3. Speed: 1 KB prompts scanned with the full Gitleaks default config, CPU time on one pinned
   core, against Yelp detect-secrets 1.5.0 (its in-memory line-based plugin path) on the same
   texts, measured alternately in the same run.
4. Worst case: 1 MB adversarial prompts (keyword floods, unterminated values, giant tokens,
   nested encodings ...), each scanned once with the Gitleaks default and the built-in pack.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import SHARED_DATA, SummaryRow, machine, pin_one_core, write_result
from benchmarks.secrets_corpus import adversarial_inputs, one_kb_prompts
from guardrails.secrets import SecretScanner, builtin_ruleset, load_gitleaks_config
from guardrails.secrets.config import RuleSet

SECRETS_DATA = SHARED_DATA / "secrets"

# Gitleaks rule ids grouped into the families the built-in pack covers.
FAMILIES: dict[str, tuple[str, ...]] = {
    "aws": (
        "aws-access-token",
        "aws-amazon-bedrock-api-key-long-lived",
        "aws-amazon-bedrock-api-key-short-lived",
    ),
    "google": ("gcp-api-key",),
    "azure": ("azure-ad-client-secret",),
    "github": (
        "github-app-token",
        "github-fine-grained-pat",
        "github-oauth",
        "github-pat",
        "github-refresh-token",
    ),
    "gitlab": tuple(
        "gitlab-" + s
        for s in (
            "cicd-job-token deploy-token feature-flag-client-token feed-token "
            "incoming-mail-token kubernetes-agent-token oauth-app-secret pat pat-routable ptt "
            "rrt runner-authentication-token runner-authentication-token-routable scim-token "
            "session-cookie"
        ).split()
    ),
    "bitbucket/atlassian": (
        "bitbucket-client-id",
        "bitbucket-client-secret",
        "atlassian-api-token",
    ),
    "openai": ("openai-api-key",),
    "anthropic": ("anthropic-api-key", "anthropic-admin-api-key"),
    "huggingface": ("huggingface-access-token", "huggingface-organization-api-token"),
    "cohere": ("cohere-api-token",),
    "perplexity": ("perplexity-api-key",),
    "stripe": ("stripe-access-token",),
    "slack": tuple(
        "slack-" + s
        for s in (
            "app-token bot-token config-access-token config-refresh-token legacy-bot-token "
            "legacy-token legacy-workspace-token user-token webhook-url"
        ).split()
    ),
    "twilio": ("twilio-api-key",),
    "sendgrid": ("sendgrid-api-token",),
    "discord": ("discord-api-token", "discord-client-id", "discord-client-secret"),
    "telegram": ("telegram-bot-api-token",),
    "npm": ("npm-access-token",),
    "pypi": ("pypi-upload-token",),
    "private keys": ("private-key",),
    "jwt": ("jwt", "jwt-base64"),
    "generic": ("generic-api-key",),
}
FAMILY_OF = {rule: family for family, rules in FAMILIES.items() for rule in rules}


def load_cases() -> tuple[Path, list[dict[str, Any]]]:
    config = SECRETS_DATA / "gitleaks.toml"
    cases_file = SECRETS_DATA / "gitleaks_cases.json"
    if not config.is_file() or not cases_file.is_file():
        sys.exit(
            f"secrets_bench: Gitleaks data not found in {SECRETS_DATA}\n"
            "  expected gitleaks.toml and gitleaks_cases.json in ../shared/data/secrets "
            "next to the repository checkout"
        )
    cases = json.loads(cases_file.read_text(encoding="utf-8"))["cases"]
    return config, [c for c in cases if c["in_default_config"]]


def fires(scanner: SecretScanner, case: dict[str, Any]) -> bool:
    return any(
        f.rule_id == case["rule_id"] for f in scanner.scan(case["text"], path=case.get("path"))
    )


def single_rule_scanners(ruleset: RuleSet) -> dict[str, SecretScanner]:
    return {
        rule.id: SecretScanner(
            RuleSet(rules=(rule,), allowlists=ruleset.allowlists, source=ruleset.source)
        )
        for rule in ruleset.rules
    }


def compatibility(
    full: SecretScanner, single: dict[str, SecretScanner], cases: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"cases": len(cases)}
    for name, pick in (
        ("full_config", lambda _: full),
        ("per_rule", lambda c: single[c["rule_id"]]),
    ):
        wrong = [c for c in cases if fires(pick(c), c) != c["expected"]]
        out[name] = {
            "agree": len(cases) - len(wrong),
            "agreement": (len(cases) - len(wrong)) / len(cases),
            "disagreements_by_rule": dict(
                Counter(f"{c['rule_id']} (expected {c['expected']})" for c in wrong)
            ),
        }
    return out


def known_public_values(ruleset: RuleSet) -> dict[str, list[str]]:
    """Per Gitleaks rule, the literal values its allowlists name (published example keys)."""
    literal = set(string.ascii_letters + string.digits + "_-")
    values: dict[str, list[str]] = defaultdict(list)
    for rule in ruleset.rules:
        for allowlist in rule.allowlists:
            for item in (*allowlist.regexes, *allowlist.stopwords):
                if len(item) >= 20 and set(item) <= literal:
                    values[rule.id].append(item.lower())
    return values


def builtin_accuracy(
    builtin: SecretScanner,
    single: dict[str, SecretScanner],
    cases: Sequence[dict[str, Any]],
    public_values: dict[str, list[str]],
) -> dict[str, Any]:
    covered = [c for c in cases if c["rule_id"] in FAMILY_OF]
    true_texts = {c["text"] for c in cases if c["expected"]}
    per_family: dict[str, Counter[str]] = defaultdict(Counter)
    missed: list[dict[str, Any]] = []
    flagged: list[dict[str, Any]] = []
    for case in covered:
        family = FAMILY_OF[case["rule_id"]]
        found = builtin.scan(case["text"])
        if case["expected"]:
            wanted = [
                f
                for f in single[case["rule_id"]].scan(case["text"])
                if f.rule_id == case["rule_id"]
            ]
            hit = any(f.start < w.end and w.start < f.end for f in found for w in wanted)
            per_family[family]["true"] += 1
            per_family[family]["found"] += hit
            if not hit:
                missed.append({"rule": case["rule_id"], "text": case["text"][:120]})
        elif case["text"] not in true_texts:  # a false case that is another rule's true case
            per_family[family]["false"] += 1
            if found:
                per_family[family]["flagged"] += 1
                public = any(
                    v in case["text"].lower() for v in public_values.get(case["rule_id"], ())
                )
                flagged.append(
                    {
                        "rule": case["rule_id"],
                        "by": sorted({f.rule_id for f in found}),
                        "published_example_value": public,
                    }
                )
    trues = sum(c["true"] for c in per_family.values())
    founds = sum(c["found"] for c in per_family.values())
    falses = sum(c["false"] for c in per_family.values())
    public_count = sum(1 for f in flagged if f["published_example_value"])
    return {
        "families": len(FAMILIES),
        "true_cases": trues,
        "recall": founds / trues,
        "false_cases": falses,
        "flagged": len(flagged),
        "flag_rate": len(flagged) / falses,
        "flagged_published_example_values": public_count,
        "flag_rate_without_published_values": (len(flagged) - public_count)
        / (falses - public_count),
        "per_family": {k: dict(v) for k, v in sorted(per_family.items())},
        "missed": missed[:50],
        "flagged_cases": flagged,
    }


def detect_secrets_scanner() -> Callable[[str], object]:
    """detect-secrets 1.5.0 with its default plugins and filters, scanning text in memory.

    Its line-based path is the one ``scan_file`` uses, minus the file reading. The filter that
    drops files missing on disk is switched off (as ``scan_line`` does), since the text is not a
    file; everything else stays as shipped. A sanity check makes sure it really scans."""
    from detect_secrets.core.scan import _process_line_based_plugins
    from detect_secrets.settings import default_settings, get_filters, get_settings

    # The settings stay active for the process (plugins set up once); ``scan`` holds the
    # context manager, since collecting it would close it and drop every plugin.
    settings = default_settings()
    settings.__enter__()
    get_settings().disable_filters("detect_secrets.filters.common.is_invalid_file")
    get_filters.cache_clear()

    def scan(text: str, _settings: object = settings) -> list[Any]:
        lines = list(enumerate(text.splitlines(), start=1))
        return list(_process_line_based_plugins(lines, filename="prompt.txt"))

    probe = "gh" + "p_" + "".join(random.Random(5).choice(string.ascii_letters) for _ in range(36))
    if not scan(f"token = '{probe}'"):
        raise RuntimeError("detect-secrets found nothing in a probe text: set-up is broken")
    return scan


def measure(
    named: dict[str, Callable[[str], object]], prompts: Sequence[str], rounds: int
) -> dict[str, Any]:
    for fn in named.values():  # warm-up: lazy regex state, caches
        for prompt in prompts[:20]:
            fn(prompt)
    cpu: dict[str, list[float]] = {name: [] for name in named}
    wall: dict[str, list[float]] = {name: [] for name in named}
    for _ in range(rounds):
        for prompt in prompts:
            for name, fn in named.items():  # alternate, so machine noise hits both
                w0, c0 = time.perf_counter(), time.thread_time()
                fn(prompt)
                cpu[name].append((time.thread_time() - c0) * 1000)
                wall[name].append((time.perf_counter() - w0) * 1000)
    out: dict[str, Any] = {}
    for name in named:
        c, w = sorted(cpu[name]), sorted(wall[name])
        out[name] = {
            "cpu_p50_ms": round(statistics.median(c), 4),
            "cpu_p95_ms": round(c[int(len(c) * 0.95) - 1], 4),
            "wall_p50_ms": round(statistics.median(w), 4),
            "wall_p95_ms": round(w[int(len(w) * 0.95) - 1], 4),
            "n": len(c),
        }
    return out


def worst_case(scanners: dict[str, SecretScanner], size: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, text in adversarial_inputs(size).items():
        for label, scanner in scanners.items():
            w0, c0 = time.perf_counter(), time.thread_time()
            report = scanner.scan_report(text)
            rows[f"{name} / {label}"] = {
                "chars": len(text),
                "cpu_s": round(time.thread_time() - c0, 3),
                "wall_s": round(time.perf_counter() - w0, 3),
                "findings": len(report.findings),
                "truncated": report.truncated,
            }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over the 1 KB prompts")
    parser.add_argument("--prompts", type=int, default=200, help="number of 1 KB prompts")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 256 KB worst case")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    size = (256 if args.quick else 1024) * 1024

    config_path, cases = load_cases()
    core = pin_one_core()
    gitleaks = load_gitleaks_config(config_path)
    t0 = time.perf_counter()
    full = SecretScanner(gitleaks)
    load_s = time.perf_counter() - t0
    single = single_rule_scanners(gitleaks)
    builtin = SecretScanner(builtin_ruleset())

    compat = compatibility(full, single, cases)
    accuracy = builtin_accuracy(builtin, single, cases, known_public_values(gitleaks))

    prompts = one_kb_prompts(args.prompts, seed=1)
    ds = detect_secrets_scanner()
    speed = measure(
        {
            "sidecar (gitleaks default)": full.scan,
            "sidecar (built-in)": builtin.scan,
            "detect-secrets 1.5.0": ds,
        },
        prompts,
        rounds,
    )
    ours = speed["sidecar (gitleaks default)"]["cpu_p50_ms"]
    theirs = speed["detect-secrets 1.5.0"]["cpu_p50_ms"]
    worst = worst_case({"gitleaks default": full, "built-in": builtin}, size)
    worst_cpu = max(r["cpu_s"] for r in worst.values())
    worst_wall = max(r["wall_s"] for r in worst.values())

    full_agree = compat["full_config"]["agreement"]
    rule_agree = compat["per_rule"]["agreement"]
    summary = [
        SummaryRow(
            "secrets",
            "Gitleaks default config agreement (full config)",
            full_agree * 100,
            "%",
            target=">= 99.5%",
            met=full_agree >= 0.995,
            note=f"{compat['full_config']['agree']}/{compat['cases']} cases",
        ),
        SummaryRow(
            "secrets",
            "Gitleaks default config agreement (per rule, Gitleaks' method)",
            rule_agree * 100,
            "%",
            target=">= 99.5%",
            met=rule_agree >= 0.995,
            note=f"{compat['per_rule']['agree']}/{compat['cases']} cases",
        ),
        SummaryRow(
            "secrets",
            "built-in pack recall on covered families",
            accuracy["recall"] * 100,
            "%",
            target=">= 95%",
            met=accuracy["recall"] >= 0.95,
            note=f"{accuracy['true_cases']} true cases, {accuracy['families']} families",
        ),
        SummaryRow(
            "secrets",
            "built-in pack false cases flagged",
            accuracy["flag_rate"] * 100,
            "%",
            target="<= 2%",
            met=accuracy["flag_rate"] <= 0.02,
            note=(
                f"{accuracy['flagged']}/{accuracy['false_cases']}; "
                f"{accuracy['flag_rate_without_published_values'] * 100:.1f}% without the "
                f"{accuracy['flagged_published_example_values']} published example keys "
                "Gitleaks allowlists by value"
            ),
        ),
        SummaryRow(
            "secrets",
            "1 KB prompt, Gitleaks default config, CPU p50",
            ours,
            "ms",
            baseline=theirs,
            baseline_label="detect-secrets 1.5.0",
            target="<= 0.5 ms and >= 10x faster",
            met=ours <= 0.5 and theirs / ours >= 10,
            note=f"{theirs / ours:.0f}x faster",
        ),
        SummaryRow(
            "secrets",
            "1 MB adversarial prompt, worst CPU time",
            worst_cpu,
            "s",
            target="< 1 s",
            met=worst_cpu < 1.0,
            note=f"{len(worst)} scans, worst wall {worst_wall:.2f} s",
        ),
    ]
    payload = {
        "benchmark": "secrets",
        "machine": machine(),
        "pinned_core": core,
        "gitleaks_config": {"rules": len(gitleaks.rules), "compile_s": round(load_s, 3)},
        "compatibility": compat,
        "builtin_pack": accuracy,
        "speed_1kb": {
            "prompts": len(prompts),
            "rounds": rounds,
            "results": speed,
            "speedup_vs_detect_secrets": round(theirs / ours, 1),
        },
        "worst_case": {"size_bytes": size, "results": worst},
        "summary": [row.to_json() for row in summary],
    }
    path = write_result("secrets", payload)

    print(f"\nsecret scanning benchmark ({len(cases)} Gitleaks default-rule cases)\n")
    print(f"{'metric':<66} {'value':>10}  {'target':<28} met")
    for row in summary:
        value = f"{row.value:.3f} {row.unit}" if row.unit != "%" else f"{row.value:.2f} %"
        print(f"{row.metric:<66} {value:>10}  {row.target:<28} {row.met}")
        if row.note:
            print(f"{'':<4}{row.note}")
    print("\n1 KB prompts (CPU ms, one core):")
    for name, stats in speed.items():
        print(
            f"    {name:<28} p50 {stats['cpu_p50_ms']:.4f}  p95 {stats['cpu_p95_ms']:.4f}"
            f"  (wall p50 {stats['wall_p50_ms']:.4f})"
        )
    print(f"\nadversarial inputs ({size // 1024} KB):")
    for name, row in worst.items():
        flag = "  (truncated)" if row["truncated"] else ""
        print(
            f"    {name:<44} cpu {row['cpu_s']:.3f} s  wall {row['wall_s']:.3f} s"
            f"  findings {row['findings']}{flag}"
        )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
