"""SPLADE side by side: mlm-export's SparseEncoder against sentence-transformers' SparseEncoder and
optimum's ORTModelForMaskedLM (full logits, then numpy pooling: fastembed's method). Each system runs
alone in a fresh process; time is the median of the rounds after one warm-up call, memory is the peak
RSS of the calls (warm-up included) above the RSS once the model was loaded.

    python -m benchmarks.sparse --checkpoint CKPT --artifact ART [--shapes 1x64,32x256,128x512]
                                [--systems ours,ours-int8,ours-bf16,ours-fp32,st,optimum] [--rounds 5]
                                [--threads 2]

CKPT is the Hugging Face directory (sentence-transformers loads it offline); ART an mlm-export artifact
exported from it with `--task sparse` (`--int8`, `--bf16` for those variants; a system whose variant
the artifact lacks fails and is reported). Texts are English
docstrings of the standard library cut to exactly S tokens, so every row of a B x S call is S long.
Needs the `export` and `bench` extras (sentence-transformers, optimum-onnx).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

SYSTEMS = ("ours", "ours-int8", "ours-bf16", "ours-fp32", "st", "optimum")
# ours: the default variant where providers="auto" lands; the others name theirs
OURS = {"ours": (None, "auto"), "ours-int8": ("int8", "cpu"), "ours-bf16": ("bf16", "openvino"),
        "ours-fp32": ("fp32", "cpu")}


def corpus() -> str:
    """Plain English, the same on every machine with this Python: the standard library's docstrings."""
    import argparse as a
    import collections
    import email
    import http.client
    import inspect
    import json as j
    import logging
    import subprocess as sp
    import threading
    import unittest

    parts = []
    for module in (a, collections, email, http.client, j, logging, sp, threading, unittest):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
            if doc and len(doc) > 200:
                parts.append(" ".join(doc.split()))
    return " ".join(dict.fromkeys(parts))


def texts_of(tokenizer_file: Path, batch: int, length: int) -> list[str]:
    """`batch` texts of exactly `length` tokens (special tokens included), from seeded offsets."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    text = corpus()
    encoding = tokenizer.encode(text, add_special_tokens=False)
    room = length - tokenizer.num_special_tokens_to_add(False)
    rng = np.random.default_rng(1000 * batch + length)
    out = []
    for start in rng.integers(0, len(encoding.ids) - room - 1, size=batch):
        begin = encoding.offsets[start][0]
        for cut in range(room, 0, -1):  # a cut inside a word may tokenize longer: shorten until it fits
            piece = text[begin:encoding.offsets[start + cut - 1][1]]
            if len(tokenizer.encode(piece).ids) <= length:
                break
        out.append(piece)
    return out


def _rss(field: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith(field + ":"))


def worker(system: str, checkpoint: Path, artifact: Path, batch: int, length: int, rounds: int, threads: int,
           save: Path) -> dict[str, Any]:
    texts = texts_of(artifact / "tokenizer.json", batch, length)
    fn: Callable[[], np.ndarray]
    if system.startswith("ours"):
        from mlm_export import SparseEncoder

        variant, providers = OURS[system]
        encoder = SparseEncoder.from_pretrained(artifact, variant=variant, providers=providers, threads=threads)
        vocab = encoder.manifest.model.vocab_size

        def fn() -> np.ndarray:
            dense = np.zeros((len(texts), vocab), dtype=np.float32)
            for row, embedding in zip(dense, encoder.encode(texts)):
                row[embedding.indices] = embedding.values
            return dense
        extra = {"variant": encoder.variant, "provider": encoder.provider, "batch_size": encoder.batch_size}
    elif system == "st":
        import torch
        from sentence_transformers import SparseEncoder as Peer
        from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

        torch.set_num_threads(threads)
        peer = Peer(modules=[MLMTransformer(str(checkpoint), max_seq_length=length), SpladePooling("max")],
                    device="cpu")

        def fn() -> np.ndarray:
            out = peer.encode(texts, batch_size=32, convert_to_tensor=True, show_progress_bar=False)
            return (out.to_dense() if out.is_sparse else out).numpy()
        extra = {"batch_size": 32, "torch": torch.__version__}
    elif system == "optimum":
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForMaskedLM
        from transformers import AutoTokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        model = ORTModelForMaskedLM.from_pretrained(artifact, file_name="model.onnx", session_options=options)
        tokenizer = AutoTokenizer.from_pretrained(artifact)

        def fn() -> np.ndarray:
            parts = []
            for start in range(0, len(texts), 32):
                feeds = tokenizer(texts[start:start + 32], padding=True, return_tensors="np")
                logits = model(**feeds).logits
                weights = np.log1p(np.maximum(np.asarray(logits), 0)) * feeds["attention_mask"][..., None]
                parts.append(weights.max(axis=1))
            return np.concatenate(parts)
        extra = {"batch_size": 32, "file": "model.onnx"}
    else:
        raise SystemExit(f"unknown system {system!r}; one of {', '.join(SYSTEMS)}")
    loaded = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak to now: growth counts the calls only
        fh.write("5")
    out = fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    peak = _rss("VmHWM")
    np.save(save, out)
    return {"system": system, "batch": batch, "length": length, "median_s": statistics.median(times),
            "times": [round(t, 4) for t in times], "loaded_rss_mb": round(loaded, 1),
            "growth_mb": round(peak - loaded, 1)} | extra


def agreement(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """min cosine, and mean top-20 overlap (ties within 1e-4 of the 20th term count as shared), per text."""
    from mlm_export.verify.tasks import cosine, topk_overlap

    return {"min_cosine": float(cosine(reference, got).min()), "max_abs": float(np.abs(reference - got).max()),
            "top20_overlap": float(topk_overlap(reference, got, 20, 1e-4).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--shapes", default="1x64,32x256,128x512")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    if args.worker:
        (batch, length), = shapes
        print(json.dumps(worker(args.worker, args.checkpoint, args.artifact, batch, length, args.rounds,
                                args.threads, args.save)))
        return
    from benchmarks.harness import cpu_name

    cpu = cpu_name()
    print(f"CPU: {cpu}; {os.cpu_count()} cores; Python {platform.python_version()}; threads {args.threads}")
    results = []
    with tempfile.TemporaryDirectory() as work:
        for batch, length in shapes:
            outputs: dict[str, np.ndarray] = {}
            for system in args.systems.split(","):
                save = Path(work) / f"{system}-{batch}x{length}.npy"
                cmd = [sys.executable, "-m", "benchmarks.sparse", "--worker", system, "--checkpoint",
                       str(args.checkpoint), "--artifact", str(args.artifact), "--shapes", f"{batch}x{length}",
                       "--rounds", str(args.rounds), "--threads", str(args.threads), "--save", str(save)]
                done = subprocess.run(cmd, capture_output=True, text=True,
                                      env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
                if done.returncode:
                    print(f"{system} {batch}x{length} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                outputs[system] = np.load(save)
                results.append(result)
            base = next((r for r in results if r["system"] == "st" and (r["batch"], r["length"]) == (batch, length)),
                        None)
            for result in results:
                if (result["batch"], result["length"]) != (batch, length):
                    continue
                if "st" in outputs:
                    result |= agreement(outputs["st"], outputs[result["system"]])
                if base:
                    result["speed_vs_st"] = round(base["median_s"] / result["median_s"], 2)
                    result["growth_vs_st"] = round(result["growth_mb"] / max(base["growth_mb"], 1e-9), 3)
                print(f"{batch:>4}x{length:<4} {result['system']:<10} {result.get('variant', ''):<12} "
                      f"median {result['median_s']:.3f} s  growth {result['growth_mb']:7.1f} MB  "
                      f"x{result.get('speed_vs_st', float('nan')):.2f} speed, "
                      f"{result.get('growth_vs_st', float('nan')):.3f} memory vs st  "
                      f"min cos {result.get('min_cosine', float('nan')):.5f}  "
                      f"top20 {result.get('top20_overlap', float('nan')):.3f}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
