"""OpenVINO bf16 for the encoder and float32 for the MLM head: the int8 gate and the speed, against int8.

    python benchmarks/openvino_split.py models/antiberty [--threads 2] [--repeats 9]

OpenVINO's bf16 hint on the whole fill-mask graph fails the gate on both benchmark models, and the
head is why: bf16 logits (8 bits of mantissa) reorder near-tied tokens of a wide vocabulary. This
traces the artifact's source model into the unfused fill-mask graph again, cuts it where the head
begins (the input of its first Gemm), compiles the encoder with the bf16 hint and the head with f32,
judges the pair with the artifact's int8 gate on its realistic probes (and the whole graph in bf16,
for contrast), then times the pair against the artifact's int8 graph on ONNX Runtime, interleaved:
1x128, 32x128 and 120x128 (the PLL shape), two masks per row. Needs the export and bench extras.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness import OUTPUTS, SplitSession, split_graph, wait_idle  # benchmarks/harness.py, beside this script
from latency import feeds  # benchmarks/latency.py, beside this script
from mlm_export.manifest import read_manifest
from mlm_export.runtime.providers import create_session


def gate(artifact: Path, sessions: dict[str, Any]) -> dict[str, dict]:
    """Each session judged like the int8 graph: same probes, same fresh PyTorch reference, same tolerance."""
    from tokenizers import Tokenizer

    import mlm_export.verify.parity as parity
    from mlm_export.build.model import load_model
    from mlm_export.build.source import SourceSpec, resolve_spec

    manifest = read_manifest(artifact)
    source = resolve_spec(SourceSpec(manifest.source.kind, manifest.source.location, manifest.source.revision))
    harness = parity.ParityHarness(manifest, Tokenizer.from_file(str(artifact / manifest.tokenizer.file)),
                                   load_model(source), None, artifact)
    results = {}
    original = parity.create_session
    try:
        for name, session in sessions.items():
            parity.create_session = lambda *_args, _s=session, **_kw: _s  # the harness opens what we built
            judged = harness.check(name, "int8", manifest.graphs["int8"], "cpu")
            results[name] = judged.gated.to_dict() | {"passed": judged.passed}
    finally:
        parity.create_session = original
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="an artifact exported with --int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    import openvino as ov

    manifest = read_manifest(args.artifact)
    with tempfile.TemporaryDirectory() as work:
        whole, encoder, head, cut = split_graph(args.artifact, Path(work))
        core = ov.Core()
        bf16 = core.compile_model(core.read_model(str(whole)), "CPU", {"INFERENCE_PRECISION_HINT": "bf16",
                                                                        "INFERENCE_NUM_THREADS": args.threads})
        request = bf16.create_infer_request()

        class WholeBf16:  # the whole graph under the bf16 hint, for contrast
            def get_providers(self) -> list[str]:
                return ["OpenVINO (bf16)"]

            def run(self, names: list[str] | None, feed: dict) -> list[np.ndarray]:
                out = {p.get_any_name(): np.array(v) for p, v in request.infer(feed).items()}
                return [out[n] for n in (names or OUTPUTS)]

        split = SplitSession(encoder, head, cut, args.threads)
        top_k = manifest.graphs["int8"].tolerance.top_k
        for name, figures in gate(args.artifact, {"whole graph bf16": WholeBf16(),
                                                  "bf16 encoder, f32 head": split}).items():
            print(f"gate  {name:24s} top-1 {figures['top1_agreement']:.2%}  top-{top_k} overlap "
                  f"{figures['topk_overlap']:.2%}  -> {'pass' if figures['passed'] else 'FAIL'}")
        int8 = create_session(str(args.artifact / manifest.graphs["int8"].file), "cpu", args.threads)
        wanted = list(OUTPUTS[:4])
        for batch, repeats in ((1, args.repeats * 4), (32, args.repeats), (120, max(3, args.repeats // 3))):
            feed = feeds(manifest, batch, 128, 64)
            runs = {"int8 (ONNX Runtime)": lambda f=feed: int8.run(wanted, f),
                    "bf16 encoder, f32 head": lambda f=feed: split.run(wanted, f)}
            for run in runs.values():
                run()
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(repeats):
                for name, run in runs.items():
                    wait_idle([os.getpid()])  # the previous call's spinning threads would steal a core
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
            base = statistics.median(times["int8 (ONNX Runtime)"])
            for name, values in times.items():
                median = statistics.median(values)
                print(f"time  {batch:3d}x128  {name:24s} {1000 * median:8.1f} ms  {base / median:.2f}x int8")


if __name__ == "__main__":
    main()
