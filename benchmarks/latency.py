"""Latency of each fill-mask variant of an artifact, side by side in one run.

    python benchmarks/latency.py models/antiberty [--batch 1 --batch 32] [--length 128] [--repeats 30]
    python benchmarks/latency.py models/antiberty --providers cuda   # fp32 vs fp16, IO binding
    python benchmarks/latency.py models/antiberty --int8-recipes     # + every int8 recipe, bare sessions

Each variant is its graph file in a bare session (ONNX Runtime, or OpenVINO for bf16) with the
predictor's session options, fed pre-built token rows: the graph's time, without tokenizing or decoding.
Variants are timed interleaved (fp32, fp16, int8, fp32, ...) so machine noise hits all alike;
before each timed call the process waits until the previous variant's ONNX Runtime threads stop
spinning (otherwise they steal a core from the next one). Medians and ratios to fp32 are printed,
and written as JSON with --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlm_export.manifest import GraphEntry, Manifest, read_manifest
from harness import graph_feeds, wait_idle  # benchmarks/harness.py, beside this script


def feeds(manifest: Manifest, batch: int, length: int, masks_every: int, seed: int = 0) -> dict:
    tok, vocab = manifest.tokenizer, manifest.model.vocab_size
    rng = np.random.default_rng(seed)
    normal = np.setdiff1d(np.arange(vocab), tok.all_special_ids)
    ids = rng.choice(normal, size=(batch, length)).astype(np.int64)
    ids[:, 0], ids[:, -1] = tok.special_ids["cls"], tok.special_ids["sep"]
    ids[:, 1:-1:masks_every] = tok.mask_token_id  # no padding: the attention mask is all ones
    return graph_feeds(list(manifest.graphs["fp32"].input_names), ids, tok.pad_token_id)


def open_session(path: Path, providers: str, threads: int | None, graph: GraphEntry | None = None) -> Any:
    """A bare session on one graph file, with the predictor's options: an `onnxruntime.InferenceSession`
    (`threads` intra-op, one inter-op), or for the bf16 variant OpenVINO with its float32 head."""
    if providers == "openvino":
        from mlm_export.runtime.openvino import OpenVINOSession

        return OpenVINOSession(str(path), graph.head_input if graph else None, threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    names = ["CUDAExecutionProvider", "CPUExecutionProvider"] if providers == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), sess_options=options, providers=names)
    if session.get_providers()[0] != names[0]:
        raise SystemExit(f"{path}: ONNX Runtime fell back to {session.get_providers()[0]} from {names[0]}")
    return session


def runner(session: Any, outputs: list[str], io_binding: bool) -> Callable[[dict], list]:
    """The graph's run; on CUDA with IO binding, as the predictor runs it (inputs handed over once, the
    small outputs copied back)."""
    if not io_binding:
        return functools.partial(session.run, outputs)

    def run(feeds: dict) -> list:
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--masks-every", type=int, default=16, help="one [MASK] per N tokens")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--providers", default="cpu", help="cpu or cuda (int8 is skipped on cuda)")
    parser.add_argument("--int8-recipes", action="store_true",
                        help="also quantize the fp32 graph with every int8 recipe and time each (export extra)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    manifest = read_manifest(args.artifact)
    variants = [n for n, g in manifest.graphs.items() if g.form == "fill-mask"
                and not (args.providers == "cuda" and n == "int8")]
    backends = {v: "openvino" if v == "bf16" else args.providers for v in variants}
    sessions = {v: open_session(args.artifact / manifest.graphs[v].file, backends[v], args.threads,
                                manifest.graphs[v]) for v in variants}
    # each variant as the predictor runs its graph (IO binding on CUDA); the recipes' graphs on the CPU
    runners = {v: runner(s, ["scores", "token_ids"], backends[v] == "cuda") for v, s in sessions.items()}
    providers = {v: s.get_providers()[0] for v, s in sessions.items()}
    sizes = {v: manifest.files[manifest.graphs[v].file].size for v in variants}
    if args.int8_recipes:
        from tokenizers import Tokenizer

        from mlm_export.passes.int8 import INT8_RECIPES, to_int8
        from mlm_export.verify.probes import build_probes, calibration_rows

        # what export measures activations on: rows of the artifact's realistic probes
        tokenizer = Tokenizer.from_file(str(args.artifact / manifest.tokenizer.file))
        rows = calibration_rows(build_probes(manifest, tokenizer, directory=args.artifact))
        with tempfile.TemporaryDirectory() as tmp:
            for recipe in INT8_RECIPES:
                path = Path(tmp) / f"{recipe.name}.onnx"
                to_int8(args.artifact / manifest.graphs["fp32"].file, path, recipe, rows)
                session = open_session(path, "cpu", args.threads)
                runners[recipe.name] = functools.partial(session.run, None)
                sizes[recipe.name] = path.stat().st_size
                variants.append(recipe.name)
    results = []
    for batch in args.batch or [1, 32]:
        repeats = max(5, args.repeats // max(1, batch // 4))
        data = feeds(manifest, batch, args.length, args.masks_every)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(2):  # warm-up
            for run in runners.values():
                run(data)
        for _ in range(repeats):
            for v, run in runners.items():
                wait_idle([os.getpid()])
                start = time.perf_counter()
                run(data)
                times[v].append(time.perf_counter() - start)
        base = statistics.median(times["fp32"])
        for v in variants:
            median = statistics.median(times[v])
            size = sizes[v]
            parity = manifest.graphs[v].parity if v in manifest.graphs and manifest.graphs[v].parity else {}
            row = {"variant": v, "provider": providers.get(v, "CPUExecutionProvider"),
                   "batch": batch,
                   "length": args.length, "repeats": repeats,
                   "median_ms": 1e3 * median, "ratio_to_fp32": median / base, "size_mb": size / 1e6,
                   "top1": parity.get("top1_agreement"), "top5_overlap": parity.get("topk_overlap"),
                   "top5_set_equal": parity.get("topk_set_equal"),
                   "max_abs_logit": parity.get("max_abs_logit")}
            results.append(row)
            print(f"batch {batch:>3} x {args.length}  {v:<22} {row['median_ms']:9.2f} ms  "
                  f"x{row['ratio_to_fp32']:.3f} of fp32  {row['size_mb']:7.1f} MB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
