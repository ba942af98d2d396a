"""Pseudo-log-likelihood: mlm-export's default variant, fp32, int8 and bf16 against
`AntiBERTyRunner.pseudo_log_likelihood`, each system in its own process.

    python benchmarks/pll.py [ARTIFACT] [--threads 2] [--rounds 3] [--chains 4] [--out pll.json]

ARTIFACT is an AntiBERTy export with fp32 and int8, and bf16 where it has one (run on OpenVINO;
default: exported to a temporary folder with `mlm-export antiberty --int8`). The sequences are real
chains from the packaged antibody probes and 36 point mutants of one of them (6 positions x 6
residues), scored with AntiBERTy's convention (mean over residues, softmax without special tokens).
`default` is what `mlm-export score` and `OnnxMaskFiller.from_pretrained(ARTIFACT)` run here
(providers="auto": this machine's `mlm-export tune` record, else the policy table's CPU-class row).

Each system runs in a process of its own (`--system NAME` is that worker: it loads the system, scores one
sequence to warm up, then times every sequence once per round); the rounds alternate the order of the
systems. Reported, with the CPU's model, class and flags:
- each system's max |PLL - runner|;
- Spearman's rho against fp32 on the 36 mutants (the ranking a designer uses);
- median seconds over the rounds, sequences per second, and the ratio to the runner.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
OURS = ("default", "fp32", "int8", "bf16")


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


def sequences(chains: int) -> tuple[list[str], int]:
    """The scored sequences (real chains, then the mutants of the first) and the number of mutants."""
    from mlm_export.verify import antibody_sequences

    real = antibody_sequences()
    variants = mutants(real[0])
    return real[:chains] + variants, len(variants)


def cpu_facts() -> dict:
    """The CPU's model, class (the policy table's key) and the flags that decide it."""
    from harness import cpu_class, cpu_flags, cpu_name  # benchmarks/harness.py, beside this script

    return {"model": cpu_name(), "class": cpu_class(), "flags": cpu_flags(), "cpus": os.cpu_count()}


def worker(system: str, artifact: Path, threads: int, rounds: int, chains: int) -> dict:
    """Load one system, warm it up, time every sequence once per round."""
    seqs, _ = sequences(chains)
    texts = [" ".join(s) for s in seqs]
    variant = None
    if system == "runner":
        import torch
        from antiberty import AntiBERTyRunner

        torch.set_num_threads(threads)
        runner = AntiBERTyRunner()

        def run(batch: list[str]) -> list[float]:
            return runner.pseudo_log_likelihood(batch).tolist()
        inputs: list[str] = seqs
    else:
        from mlm_export import OnnxMaskFiller

        if system == "default":
            filler = OnnxMaskFiller.from_pretrained(artifact, threads=threads)
        else:
            filler = OnnxMaskFiller.from_pretrained(artifact, variant=system, threads=threads,
                                                    providers="openvino" if system == "bf16" else "cpu")
        variant = {"variant": filler.variant, "provider": filler.provider, "why": filler.graph.why}

        def run(batch: list[str]) -> list[float]:
            return [s.pll for s in filler.score(batch, reduction="mean", exclude_special=True)]
        inputs = texts
    run(inputs[:1])
    seconds, scores = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        scores = run(inputs)
        seconds.append(time.perf_counter() - start)
    return {"system": system, "seconds": seconds, "scores": scores, "opened": variant}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, nargs="?")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the sequences per system")
    parser.add_argument("--chains", type=int, default=4, help="real chains scored besides the 36 mutants")
    parser.add_argument("--systems", default="runner," + ",".join(OURS))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--system", help=argparse.SUPPRESS)  # the worker: one system in this process
    args = parser.parse_args()
    artifact = args.artifact
    if args.system:
        print(json.dumps(worker(args.system, artifact, args.threads, 1, args.chains)))
        return
    if artifact is None:
        from mlm_export import ExportConfig, export_model

        artifact = export_model(ExportConfig("antiberty", out=Path(tempfile.mkdtemp()) / "antiberty", int8=True)).path
    from mlm_export.manifest import read_manifest

    present = read_manifest(artifact).graphs
    systems = [s for s in args.systems.split(",") if s in ("runner", "default") or s in present]
    results: dict[str, dict] = {}
    for index in range(args.rounds):  # one process per system and round, in alternating order
        for system in systems if index % 2 == 0 else systems[::-1]:
            command = [sys.executable, __file__, str(artifact), "--system", system, "--threads", str(args.threads),
                       "--chains", str(args.chains)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{system} failed:\n{done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            entry = results.setdefault(system, {"seconds": [], "scores": row["scores"], "opened": row["opened"]})
            entry["seconds"] += row["seconds"]
    seqs, n_mutants = sequences(args.chains)
    reference = np.array(results["runner"]["scores"])
    mutant_slice = slice(len(seqs) - n_mutants, None)
    median = {name: statistics.median(r["seconds"]) for name, r in results.items()}
    fp32 = results.get("fp32", results["runner"])["scores"]
    report = {
        "cpu": cpu_facts(), "threads": args.threads, "rounds": args.rounds,
        "sequences": len(seqs), "mean_length": float(np.mean([len(s) for s in seqs])),
        "opened": {n: r["opened"] for n, r in results.items() if r["opened"]},
        "max_abs_diff_vs_runner": {n: float(np.abs(np.array(r["scores"]) - reference).max())
                                   for n, r in results.items() if n != "runner"},
        "spearman_vs_fp32_mutants": {n: spearman(r["scores"][mutant_slice], fp32[mutant_slice])
                                     for n, r in results.items() if n != "fp32"},
        "median_seconds": median,
        "sequences_per_second": {n: len(seqs) / s for n, s in median.items()},
        "speedup_vs_runner": {n: median["runner"] / s for n, s in median.items()},
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
