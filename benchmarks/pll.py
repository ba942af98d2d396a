"""Pseudo-log-likelihood: mlm-export's fp32, int8 and bf16 against `AntiBERTyRunner.pseudo_log_likelihood`.

    python benchmarks/pll.py [ARTIFACT] [--threads 2] [--repeats 1] [--chains 4] [--out pll.json]

ARTIFACT is an AntiBERTy export with fp32 and int8, and bf16 where it has one (run on OpenVINO;
default: exported to a temporary folder with `mlm-export antiberty --int8`). The sequences are real
chains from the packaged antibody probes and 36 point mutants of one of them (6 positions x 6
residues), scored with AntiBERTy's convention (mean over residues, softmax without special tokens).
Reported:
- each variant's max |PLL - runner|;
- Spearman's rho of int8 (and bf16) against fp32 on the 36 mutants (the ranking a designer uses);
- throughput in sequences per second, each system timed over the same sequences after a one-sequence
  warm-up, interleaved (runner, fp32, int8, bf16, runner, ...), median of the repeats, ratios to the runner.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from harness import cpu_name, wait_idle  # benchmarks/harness.py, beside this script
from mlm_export import OnnxMaskFiller
from mlm_export.verify import antibody_sequences

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def spearman(a: list[float], b: list[float]) -> float:
    ranks = [np.argsort(np.argsort(np.asarray(v))) for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def mutants(parent: str, count: int = 36, seed: int = 0) -> list[str]:
    """`count` distinct point mutants: 6 positions spread along the chain, 6 substitutions each."""
    rng = np.random.default_rng(seed)
    positions = np.linspace(10, len(parent) - 10, count // 6).astype(int)
    out = []
    for i in positions:
        choices = [r for r in RESIDUES if r != parent[i]]
        for residue in rng.choice(choices, size=6, replace=False):
            out.append(parent[:i] + residue + parent[i + 1:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, nargs="?")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chains", type=int, default=4, help="real chains scored besides the 36 mutants")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from antiberty import AntiBERTyRunner

    torch.set_num_threads(args.threads)
    artifact = args.artifact
    if artifact is None:
        from mlm_export import ExportConfig, export_model

        artifact = export_model(ExportConfig("antiberty", out=Path(tempfile.mkdtemp()) / "antiberty", int8=True)).path
    chains = antibody_sequences()
    variants = mutants(chains[0])
    sequences = chains[: args.chains] + variants
    texts = [" ".join(s) for s in sequences]
    runner = AntiBERTyRunner()
    present = OnnxMaskFiller.from_pretrained(artifact, variant="fp32", providers="cpu").manifest.fill_mask_graphs
    ours = {v: OnnxMaskFiller.from_pretrained(artifact, variant=v, threads=args.threads,
                                              providers="openvino" if v == "bf16" else "cpu")
            for v in ("fp32", "int8", "bf16") if v in present}

    def run_runner() -> list[float]:
        return runner.pseudo_log_likelihood(sequences).tolist()

    def run_ours(variant: str) -> list[float]:
        return [s.pll for s in ours[variant].score(texts, reduction="mean", exclude_special=True)]

    systems = {"runner": run_runner} | {v: (lambda v=v: run_ours(v)) for v in ours}
    warm = {"runner": lambda: runner.pseudo_log_likelihood(sequences[:1])} | {
        v: (lambda v=v: ours[v].score(texts[:1])) for v in ours}
    for fn in warm.values():
        fn()
    scores: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(args.repeats):  # interleaved: runner, fp32, int8, bf16, runner, ...
        for name, fn in systems.items():
            wait_idle([os.getpid()])
            start = time.perf_counter()
            result = fn()
            seconds[name].append(time.perf_counter() - start)
            scores.setdefault(name, result)
    median = {name: statistics.median(v) for name, v in seconds.items()}
    reference = np.array(scores["runner"])
    mutant_slice = slice(len(sequences) - len(variants), None)
    report = {
        "cpu": cpu_name(), "cpus": os.cpu_count(), "threads": args.threads,
        "sequences": len(sequences), "mean_length": float(np.mean([len(s) for s in sequences])),
        "max_abs_diff_vs_runner": {v: float(np.abs(np.array(scores[v]) - reference).max()) for v in ours},
        **{f"spearman_{v}_vs_fp32_mutants": spearman(scores[v][mutant_slice], scores["fp32"][mutant_slice])
           for v in ours if v != "fp32"},
        "spearman_fp32_vs_runner_mutants": spearman(scores["fp32"][mutant_slice], scores["runner"][mutant_slice]),
        "median_seconds": median,
        "sequences_per_second": {n: len(sequences) / s for n, s in median.items()},
        "speedup_vs_runner": {n: median["runner"] / s for n, s in median.items()},
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
