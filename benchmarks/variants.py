"""Mutation effects side by side: mlm-export's masked marginals against PyTorch computing them the way esm's
`examples/variant-prediction/predict.py` does (every position masked in its own copy, full logits, a
log-softmax over the vocabulary), with the copies batched. Each system runs alone in a fresh process;
time is the median of the rounds after one warm-up call, with the same threads.

    python -m benchmarks.variants --artifact ART [--systems ours,ours-int8,ours-bf16,ours-fp32,torch]
                                  [--rounds 5] [--threads 2] [--torch-batch 32]

ART is an AntiBERTy export (`mlm-export antiberty --int8 --bf16`). Workloads, on a 120-residue heavy
chain: a saturation scan (every position by the 19 other amino acids: 2,280 single mutants), and the
masked marginals of 10 and of 1,500 random single, double and triple mutants (ours only: the cost
must not grow with the number of variants). Accuracy: each system's scores of 300 mutants (100
single, 100 double, 100 triple) and of the scan against torch fp32 (max |difference|, Spearman).
Needs the `export` and `bench` extras.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SYSTEMS = ("ours", "ours-int8", "ours-bf16", "ours-fp32", "torch")
OURS = {"ours": (None, "auto"), "ours-int8": ("int8", "cpu"), "ours-bf16": ("bf16", "openvino"),
        "ours-fp32": ("fp32", "cpu")}
# a humanised heavy chain (trastuzumab's VH), 120 residues
WILD_TYPE = ("EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYC"
             "SRWGGDGFYAMDYWGQGTLVTVSS")
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def random_mutants(count: int, seed: int) -> list[str]:
    """`count` mutants, a third each single, double and triple, at distinct positions."""
    rng = random.Random(seed)
    out = []
    for k in range(count):
        positions = sorted(rng.sample(range(len(WILD_TYPE)), k % 3 + 1))
        out.append(":".join(f"{WILD_TYPE[p]}{p + 1}{rng.choice([a for a in AMINO_ACIDS if a != WILD_TYPE[p]])}"
                            for p in positions))
    return out


def saturation() -> list[str]:
    return [f"{wt}{i + 1}{mt}" for i, wt in enumerate(WILD_TYPE) for mt in AMINO_ACIDS if mt != wt]


def torch_scorer(threads: int, batch: int) -> Callable[[list[str]], np.ndarray]:
    """predict.py's masked marginals: a forward per masked copy (here `batch` copies at a time), full logits."""
    import torch
    from transformers import BertForMaskedLM, BertTokenizerFast  # noqa: F401

    from mlm_export.exporter.source import resolve

    torch.set_num_threads(threads)
    source = resolve("antiberty").model_dir
    model = BertForMaskedLM.from_pretrained(source).eval()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(os.environ["VARIANTS_ARTIFACT"]) / "tokenizer.json"))
    ids = torch.tensor([tokenizer.encode(WILD_TYPE).ids])
    mask_id = tokenizer.token_to_id("[MASK]")
    vocab = {a: tokenizer.token_to_id(a) for a in AMINO_ACIDS}

    def score(mutants: list[str]) -> np.ndarray:
        rows = []
        with torch.no_grad():
            for start in range(1, ids.shape[1] - 1, batch):
                positions = list(range(start, min(start + batch, ids.shape[1] - 1)))
                copies = ids.repeat(len(positions), 1)
                copies[range(len(positions)), positions] = mask_id
                log_probs = torch.log_softmax(model(input_ids=copies).logits, dim=-1)
                rows.append(log_probs[range(len(positions)), positions])
        table = torch.cat(rows).numpy()
        out = np.empty(len(mutants))
        for k, mutant in enumerate(mutants):
            total = 0.0
            for part in mutant.split(":"):
                p = int(part[1:-1]) - 1
                total += table[p, vocab[part[-1]]] - table[p, vocab[part[0]]]
            out[k] = total
        return out

    return score


def worker(system: str, artifact: Path, rounds: int, threads: int, torch_batch: int, save: Path) -> dict[str, Any]:
    os.environ["VARIANTS_ARTIFACT"] = str(artifact)
    extra: dict[str, Any] = {}
    if system == "torch":
        fn = torch_scorer(threads, torch_batch)
        extra["variant"] = "fp32 (PyTorch eager)"
    else:
        from mlm_export import OnnxMaskFiller

        variant, providers = OURS[system]
        filler = OnnxMaskFiller.from_pretrained(artifact, variant=variant, providers=providers, threads=threads)
        extra["variant"] = f"{filler.variant} on {filler.provider}"

        def fn(mutants: list[str]) -> np.ndarray:
            return np.asarray(filler.score_variants(WILD_TYPE, mutants))

    workloads = {"saturation": saturation(), "accuracy": random_mutants(300, 1)}
    if system != "torch":
        workloads |= {"10 variants": random_mutants(10, 2), "1500 variants": random_mutants(1500, 3)}
    fn(["E1A"])  # warm-up
    times: dict[str, float] = {}
    for name, mutants in workloads.items():
        taken = []
        for _ in range(rounds if name != "accuracy" else 1):
            started = time.perf_counter()
            scores = fn(mutants)
            taken.append(time.perf_counter() - started)
        times[name] = statistics.median(taken)
        np.save(save.with_name(f"{save.stem}-{name.replace(' ', '_')}.npy"), scores)
    return {"system": system, "threads": threads, "median_s": {k: round(v, 4) for k, v in times.items()}} | extra


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(v)) for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torch-batch", type=int, default=32, help="masked copies per PyTorch forward")
    parser.add_argument("--worker")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.artifact, args.rounds, args.threads, args.torch_batch, args.save)))
        return
    from benchmarks.harness import cpu_name

    cpu = cpu_name()
    print(f"CPU: {cpu}; {os.cpu_count()} cores; Python {platform.python_version()}; threads {args.threads}; "
          f"wild type {len(WILD_TYPE)} residues")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as work:
        for system in args.systems.split(","):
            save = Path(work) / f"{system}.npy"
            cmd = [sys.executable, "-m", "benchmarks.variants", "--worker", system, "--artifact", str(args.artifact),
                   "--rounds", str(args.rounds), "--threads", str(args.threads), "--torch-batch",
                   str(args.torch_batch), "--save", str(save)]
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
            if done.returncode:
                print(f"{system} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            results[system] = json.loads(done.stdout.strip().splitlines()[-1])
            results[system]["scores"] = {name: np.load(save.with_name(f"{system}-{name}.npy"))
                                         for name in ("saturation", "accuracy")}
    base = results.get("torch")
    for system, result in results.items():
        times = result["median_s"]
        line = f"{system:<10} {result['variant']:<36} saturation {times['saturation']:.3f} s"
        if base:
            result["saturation_speedup"] = round(base["median_s"]["saturation"] / times["saturation"], 2)
            line += f" (x{result['saturation_speedup']:.2f} torch)"
            for name in ("accuracy", "saturation"):
                ours, ref = result["scores"][name], base["scores"][name]
                result[f"{name}_max_abs"] = float(np.abs(ours - ref).max())
                result[f"{name}_spearman"] = round(spearman(ours, ref), 5)
            line += (f"  vs torch: max|d| {result['accuracy_max_abs']:.2e} (300 mutants), "
                     f"{result['saturation_max_abs']:.2e} (scan); spearman {result['accuracy_spearman']:.5f}, "
                     f"{result['saturation_spearman']:.5f}")
        if "10 variants" in times:
            result["ratio_1500_to_10"] = round(times["1500 variants"] / times["10 variants"], 3)
            line += (f"  10: {times['10 variants']:.3f} s, 1500: {times['1500 variants']:.3f} s "
                     f"(x{result['ratio_1500_to_10']:.2f})")
        print(line, flush=True)
    print(json.dumps([{k: v for k, v in r.items() if k != "scores"} for r in results.values()]))


if __name__ == "__main__":
    main()
