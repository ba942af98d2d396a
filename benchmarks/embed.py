"""Embeddings side by side: mlm-export's Embedder against AntiBERTy's own runner (`AntiBERTyRunner.embed`)
and sentence-transformers' mean pooling, on the same antibody chains, each in its own process.

    python -m benchmarks.embed [--artifact models/antiberty-embed] [--chains 64] [--rounds 5] [--threads 2]

Exports AntiBERTy with `--task embed --int8` into `--artifact` unless it already holds an embed graph.
Accuracy: per chain, the cosine of our mean embedding (CLS and SEP left out) with the runner's per-token
embeddings averaged over the residues (`embed(...)[i][1:-1].mean(0)`, the runner's own output), for our
fp32 and default variants. Speed: the median of `--rounds` calls on all chains after a warm-up.
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
from typing import Any

import numpy as np

SYSTEMS = ("ours", "ours-fp32", "runner", "st")


def chains(count: int) -> list[str]:
    """Antibody chains from the packaged probe set, cycled to `count`."""
    from mlm_export.verify import packaged_texts

    texts = [t.replace(" ", "") for t in packaged_texts("antibody")]
    return [texts[i % len(texts)] for i in range(count)]


def worker(system: str, artifact: Path, count: int, rounds: int, threads: int, save: Path) -> dict[str, Any]:
    sequences = chains(count)
    if system.startswith("ours"):
        from mlm_export import Embedder

        embedder = Embedder.from_pretrained(artifact, variant="fp32" if system == "ours-fp32" else None,
                                            providers="cpu", threads=threads)
        spaced = [" ".join(s) for s in sequences]  # AntiBERTy's tokenizer reads residues separated by spaces

        def fn() -> np.ndarray:
            return np.asarray(embedder.encode(spaced))
        extra = {"variant": embedder.variant, "provider": embedder.provider}
    elif system == "runner":
        import torch
        from antiberty import AntiBERTyRunner

        torch.set_num_threads(threads)
        runner = AntiBERTyRunner()

        def fn() -> np.ndarray:
            out = []
            for start in range(0, len(sequences), 32):
                out += [e[1:-1].mean(0).numpy() for e in runner.embed(sequences[start:start + 32])]
            return np.stack(out)
        extra = {}
    elif system == "st":
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import Pooling, Transformer

        from mlm_export.exporter.source import resolve

        torch.set_num_threads(threads)
        # the checkpoint folder has a bare vocab.txt that AutoTokenizer cannot place: the artifact's tokenizer
        transformer = Transformer(str(resolve("antiberty").model_dir), tokenizer_name_or_path=str(artifact))
        model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")],
                                    device="cpu")
        spaced = [" ".join(s) for s in sequences]

        def fn() -> np.ndarray:  # mean over every attended token, CLS and SEP included: its own definition
            return np.asarray(model.encode(spaced, batch_size=32, show_progress_bar=False))
        extra = {"note": "mean includes CLS and SEP"}
    else:
        raise SystemExit(f"unknown system {system!r}")
    out = fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    np.save(save, out)
    return {"system": system, "chains": count, "median_s": statistics.median(times)} | extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=Path("models/antiberty-embed"))
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--worker")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.artifact, args.chains, args.rounds, args.threads, args.save)))
        return
    if not (args.artifact / "embed.fp32.onnx").is_file():
        from mlm_export import ExportConfig, export_model

        export_model(ExportConfig("antiberty", out=args.artifact, int8=True, tasks=("embed",)))
    from benchmarks.harness import cpu_name

    cpu = cpu_name()
    print(f"CPU: {cpu}; {os.cpu_count()} cores; threads {args.threads}; {args.chains} chains")
    results, outputs = [], {}
    with tempfile.TemporaryDirectory() as work:
        for system in args.systems.split(","):
            save = Path(work) / f"{system}.npy"
            cmd = [sys.executable, "-m", "benchmarks.embed", "--worker", system, "--artifact", str(args.artifact),
                   "--chains", str(args.chains), "--rounds", str(args.rounds), "--threads", str(args.threads),
                   "--save", str(save)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{system} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            outputs[system] = np.load(save)
    from mlm_export.verify.tasks import cosine

    runner = next((r for r in results if r["system"] == "runner"), None)
    for result in results:
        if "runner" in outputs:
            result["min_cosine_vs_runner"] = float(cosine(outputs["runner"], outputs[result["system"]]).min())
        if runner:
            result["speed_vs_runner"] = round(runner["median_s"] / result["median_s"], 2)
        print(f"{result['system']:<10} {result.get('variant', ''):<11} median {result['median_s']:.3f} s  "
              f"x{result.get('speed_vs_runner', float('nan')):.2f} vs runner  "
              f"min cosine vs runner {result.get('min_cosine_vs_runner', float('nan')):.6f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
