"""Verify stage: every graph in an artifact against the PyTorch model, freshly loaded in eval mode.

The reference is reloaded rather than reused because the legacy exporter has been seen leaving a
model in training mode, where dropout would poison the comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from collections.abc import Iterable

import numpy as np

from ..artifact import check_all_files
from ..manifest import path_inside, read_manifest
from ..config import Tolerance
from ..errors import ArtifactError, ConfigError, SourceError
from ..build.load import (
    ResolvedSource,
    SourceSpec,
    load_model,
    model_facts,
    require_export_extra,
    resolve,
    resolve_spec,
)
from ..runtime.providers import create_session

log = logging.getLogger("mlm_export")

_SEED = 20261126


@dataclass(frozen=True)
class ProbeBatch:
    """One right-padded batch; masks are already placed in input_ids."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    label: str
    probe_set: str  # "shapes" for synthetic probes; otherwise the realistic text set's name

    def feeds(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "token_type_ids": self.token_type_ids}


@dataclass(frozen=True)
class ProbeSpec:
    """Facts about the model that probes are built from (read from the manifest)."""

    vocab_size: int
    max_length: int
    type_vocab_size: int
    mask_id: int
    pad_id: int
    cls_id: int
    sep_id: int
    unk_id: int
    special_ids: tuple[int, ...]


def _batch(rows: list[list[int]], types: list[list[int]], pad_id: int, label: str,
           probe_set: str) -> ProbeBatch:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    tt = np.zeros_like(ids)
    for i, (row, typ) in enumerate(zip(rows, types)):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        tt[i, : len(row)] = typ
    return ProbeBatch(ids, mask, tt, label, probe_set)


def synthetic_probes(spec: ProbeSpec) -> list[ProbeBatch]:
    """Shapes that break exporters: 1 token of text to the maximum length, padding, 0..n masks."""
    rng = np.random.default_rng(_SEED)
    normal = np.setdiff1d(np.arange(spec.vocab_size), np.array(spec.special_ids))
    longest = spec.max_length
    cases = [
        ("one token", [3], [1]),
        ("short", [16], [2]),
        ("padded batch", [5, 12, 33, min(64, longest)], [1, 2, 5, 10]),
        ("max length", [longest, max(3, longest // 2)], [max(8, longest // 40), 4]),
        ("zero-mask row", [20, 9, min(40, longest)], [3, 0, 4]),
        ("many masks", [min(32, longest)] * 4, [6] * 4),
    ]
    batches = []
    for label, lengths, mask_counts in cases:
        rows, types = [], []
        for i, (length, n_masks) in enumerate(zip(lengths, mask_counts)):
            body = rng.choice(normal, size=length - 2).tolist()
            places = rng.choice(length - 2, size=min(n_masks, length - 2), replace=False)
            for p in places:
                body[p] = spec.mask_id
            rows.append([spec.cls_id, *body, spec.sep_id])
            second = spec.type_vocab_size > 1 and i % 2 == 1
            half = length // 2
            types.append([0] * half + [1 if second else 0] * (length - half))
        batches.append(_batch(rows, types, spec.pad_id, label, "shapes"))
    return batches


PACKAGED_SETS = ("antibody", "english")


def packaged_texts(name: str) -> list[str]:
    """Realistic probe texts shipped in mlm_export/probes/ (antibody: the sequence column)."""
    if name not in PACKAGED_SETS:
        raise ArtifactError(f"no packaged probe set is called {name!r}; mlm-export has {', '.join(PACKAGED_SETS)}")
    text = resources.files("mlm_export.probes").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [line.split("\t")[-1] for line in lines]


def read_probe_file(path: Path | str) -> list[str]:
    """A user's realistic probe texts: one per non-blank line of a UTF-8 file."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the probe file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the probe file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"the probe file {path} has no texts (one per line)")
    return texts


def antibody_sequences() -> list[str]:
    return packaged_texts("antibody")


REALISTIC_POSITIONS = 360  # enough masked positions for a 99% gate to mean something


def text_probes(spec: ProbeSpec, tokenizer: Any, texts: Iterable[str], probe_set: str,
                batch_size: int = 32) -> list[ProbeBatch]:
    """One [MASK] per row, the way fill-mask and pseudo-log-likelihood scoring use a model.

    Every `stride`-th token of each text is masked in its own row, the stride chosen to give
    about REALISTIC_POSITIONS masked positions in all.
    """
    encoded = [tokenizer.encode(text).ids[: spec.max_length] for text in texts]
    maskable = sum(1 for ids in encoded for t in ids if t not in spec.special_ids)
    stride = max(1, maskable // REALISTIC_POSITIONS)
    rows = []
    for j, ids in enumerate(encoded):
        for i, token in enumerate(ids):
            if token not in spec.special_ids and (i + j) % stride == 0:
                rows.append(ids[:i] + [spec.mask_id] + ids[i + 1 :])
    return [_batch(rows[i : i + batch_size], [[0] * len(r) for r in rows[i : i + batch_size]],
                   spec.pad_id, f"{probe_set} {i // batch_size}", probe_set)
            for i in range(0, len(rows), batch_size)]


def choose_probe_set(spec: ProbeSpec, tokenizer: Any) -> str | None:
    """The packaged text set this tokenizer reads with the fewest [UNK]s (under 2%), if any."""
    best, best_rate = None, 0.02
    for name in PACKAGED_SETS:
        ids = [t for text in packaged_texts(name) for t in tokenizer.encode(text).ids]
        rate = sum(t == spec.unk_id for t in ids) / max(1, len(ids))
        if rate < best_rate:
            best, best_rate = name, rate
    return best


@dataclass
class Agreement:
    """Differences between a graph and PyTorch, accumulated over one set of probes."""

    tie_eps: float
    positions: int = 0
    max_abs_logit: float = 0.0
    sum_abs_logit: float = 0.0
    count_logit: int = 0
    max_abs_prob: float = 0.0
    top1: int = 0
    top1_tie_aware: int = 0
    overlap: float = 0.0
    overlap_tie_aware: float = 0.0
    set_equal: int = 0

    def add(self, ref: np.ndarray, top_ids: np.ndarray, diffs: np.ndarray, prob_diffs: np.ndarray) -> None:
        """ref: [N, V] torch logits; top_ids: [N, k] graph's ids; diffs: |Δlogit| samples."""
        k = top_ids.shape[1]
        eps = self.tie_eps
        self.positions += len(ref)
        if diffs.size:
            self.max_abs_logit = max(self.max_abs_logit, float(diffs.max()))
            self.sum_abs_logit += float(diffs.sum())
            self.count_logit += diffs.size
        if prob_diffs.size:
            self.max_abs_prob = max(self.max_abs_prob, float(prob_diffs.max()))
        for row, ids in zip(ref, top_ids):
            order = np.argsort(-row, kind="stable")
            ref_top = set(order[:k].tolist())
            kth = row[order[k - 1]]
            got = ids.tolist()
            common = len(ref_top & set(got))
            tied = sum(1 for t in got if t not in ref_top and row[t] >= kth - eps)
            self.top1 += int(got[0] == order[0])
            self.top1_tie_aware += int(row[got[0]] >= row[order[0]] - eps)
            self.overlap += common / k
            self.overlap_tie_aware += (common + tied) / k
            self.set_equal += int(common == k)

    def rate(self, value: float) -> float:
        return value / self.positions if self.positions else 0.0

    def to_dict(self) -> dict:
        return {
            "masked_positions": self.positions,
            "max_abs_logit": self.max_abs_logit,
            "mean_abs_logit": self.sum_abs_logit / self.count_logit if self.count_logit else 0.0,
            "max_abs_prob": self.max_abs_prob,
            "top1_agreement": self.rate(self.top1),
            "topk_overlap": self.rate(self.overlap),
            "topk_set_equal": self.rate(self.set_equal),
            "top1_agreement_tie_aware": self.rate(self.top1_tie_aware),
            "topk_overlap_tie_aware": self.rate(self.overlap_tie_aware),
        }


@dataclass
class GraphParity:
    """One graph's agreement per probe set, and its gate.

    Logit-level gates (fp32) hold on every probe; accuracy gates (fp16, int8) are judged on the
    realistic texts when there are some, since random-token probes of a trained model give flat
    distributions whose top-5 order is noise.
    """

    graph: str
    file: str
    form: str
    tolerance: Tolerance
    provider: str = ""
    sets: dict[str, Agreement] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, probe_set: str, *args: np.ndarray) -> None:
        eps = self.tolerance.max_abs_logit or 0.0
        for name in ("all", probe_set):
            self.sets.setdefault(name, Agreement(eps)).add(*args)

    @property
    def gated_on(self) -> str:
        realistic = [n for n in self.sets if n not in ("all", "shapes")]
        if self.tolerance.scope == "realistic" and realistic:
            return realistic[0]
        return "all"

    @property
    def gated(self) -> Agreement:
        return self.sets.get(self.gated_on) or Agreement(0.0)

    @property
    def failures(self) -> list[str]:
        tol, g = self.tolerance, self.gated
        out = list(self.errors)
        if g.positions == 0:
            out.append("no masked positions were compared")
        if tol.max_abs_logit is not None and g.max_abs_logit > tol.max_abs_logit:
            out.append(f"max |Δlogit| {g.max_abs_logit:.3g} > {tol.max_abs_logit:g}")
        if g.rate(g.top1_tie_aware) < tol.min_top1_agreement:
            out.append(f"top-1 agreement {g.rate(g.top1_tie_aware):.4%} < {tol.min_top1_agreement:.2%}")
        if g.rate(g.overlap_tie_aware) < tol.min_topk_overlap:
            out.append(f"top-{tol.top_k} overlap {g.rate(g.overlap_tie_aware):.4%} < "
                       f"{tol.min_topk_overlap:.2%}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"graph": self.graph, "file": self.file, "form": self.form, "provider": self.provider,
                **self.gated.to_dict(), "gated_on": self.gated_on,
                "probe_sets": {name: a.to_dict() for name, a in self.sets.items()},
                "tolerance": self.tolerance.to_dict(), "passed": self.passed,
                "failures": self.failures}


@dataclass(frozen=True)
class VerifyReport:
    artifact: str
    graphs: list[GraphParity]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.graphs)

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "passed": self.passed,
                "graphs": {g.graph: g.to_dict() for g in self.graphs}}

    def summary(self) -> str:
        lines = []
        for g in self.graphs:
            d = g.to_dict()
            lines.append(
                f"{'PASS' if g.passed else 'FAIL'} {g.graph:<7} {g.file:<20} on {g.gated_on}: "
                f"positions={d['masked_positions']} max|Δlogit|={d['max_abs_logit']:.2e} "
                f"top1={d['top1_agreement']:.2%} top{g.tolerance.top_k}-overlap={d['topk_overlap']:.2%} "
                f"set-equal={d['topk_set_equal']:.2%} [{g.provider}]")
            lines += [f"     {failure}" for failure in g.failures]
        return "\n".join(lines)


def probe_spec(manifest: dict) -> ProbeSpec:
    m, t = manifest["model"], manifest["tokenizer"]
    return ProbeSpec(m["vocab_size"], m["max_length"], m["type_vocab_size"], t["mask_token_id"],
                     t["pad_token_id"], t["cls_token_id"], t["sep_token_id"], t["unk_token_id"],
                     tuple(t["special_token_ids"]))


def build_probes(manifest: dict, tokenizer: Any, probe_texts: list[str] | None = None) -> list[ProbeBatch]:
    spec = probe_spec(manifest)
    batches = synthetic_probes(spec)
    if probe_texts:
        batches += text_probes(spec, tokenizer, probe_texts, "user texts")
    elif manifest.get("probe_set"):
        batches += text_probes(spec, tokenizer, packaged_texts(manifest["probe_set"]), manifest["probe_set"])
    return batches


def _compare_logits_form(parity: GraphParity, session: Any, batch: ProbeBatch, where: tuple,
                         ref: np.ndarray, k: int) -> None:
    logits = session.run(["logits"], batch.feeds())[0][where]
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    prob_diff = np.abs(_softmax(logits) - _softmax(ref))
    parity.add(batch.probe_set, ref, top, np.abs(logits - ref), prob_diff)


def _compare_fill_mask(parity: GraphParity, session: Any, batch: ProbeBatch, where: tuple,
                       ref: np.ndarray, k: int) -> None:
    feeds = batch.feeds() | {"top_k": np.array(k, dtype=np.int64)}
    b, p, scores, ids, top_logits = session.run(None, feeds)
    if not (np.array_equal(b, where[0]) and np.array_equal(p, where[1])):
        parity.errors.append(f"{batch.label}: graph found masks at {list(zip(b, p))[:5]}..., "
                             f"expected {list(zip(*where))[:5]}...")
        return
    if ids.shape != (len(ref), min(k, ref.shape[1])):
        parity.errors.append(f"{batch.label}: token_ids shape {ids.shape}, expected {(len(ref), k)}")
        return
    ref_at = np.take_along_axis(ref, ids, axis=1)
    prob_at = np.take_along_axis(_softmax(ref), ids, axis=1)
    parity.add(batch.probe_set, ref, ids, np.abs(top_logits - ref_at), np.abs(scores - prob_at))


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def verify_artifact(directory: Path | str, *, source: str | ResolvedSource | None = None,
                    providers: str = "cpu", probe_texts: list[str] | None = None,
                    public_key: Any = None) -> VerifyReport:
    """Compare every graph of the artifact with a freshly loaded PyTorch model.

    With `public_key`, the manifest's signature is checked first (`SignatureError` if it fails).
    """
    require_export_extra()
    from tokenizers import Tokenizer

    directory = Path(directory)
    manifest = read_manifest(directory, public_key=public_key)
    check_all_files(directory, manifest)
    root = directory.resolve()
    if source is None:
        resolved = resolve_spec(SourceSpec.from_dict(manifest["source"]))
    elif isinstance(source, str):
        resolved = resolve(source)
    else:
        resolved = source
    expected = manifest["source"]["weights_sha256"]
    if resolved.weights_sha256 != expected:
        raise SourceError(f"the weights at {resolved.model_dir} are not the ones this artifact was "
                          f"exported from (sha256 {expected[:12]}…); pass --source with the original")
    log.info("loading the PyTorch reference (eval mode)")
    model = load_model(resolved)
    for key, actual in model_facts(model.config).items():
        if manifest["model"][key] != actual:  # probes are built from these numbers: they must be true
            raise ArtifactError(f"{directory / 'manifest.json'} says model.{key} is {manifest['model'][key]}, "
                                f"but the source model has {actual}: the manifest was edited; re-export")
    tokenizer = Tokenizer.from_file(str(path_inside(root, manifest["tokenizer"]["file"], "tokenizer.file")))
    batches = build_probes(manifest, tokenizer, probe_texts)
    refs = reference_logits(model, batches, manifest["tokenizer"]["mask_token_id"])
    graphs = []
    for name, entry in manifest["graphs"].items():
        log.info("comparing %s on %d probe batches", entry["file"], len(batches))
        graphs.append(compare_graph(path_inside(root, entry["file"], f"graphs.{name}.file"), name, entry,
                                    batches, refs,
                                    # int8 is a CPU variant: on CUDA its int8 ops fall back to the CPU
                                    "cpu" if entry["precision"] == "int8" else providers))
    return VerifyReport(str(directory), graphs)


Reference = tuple[tuple[np.ndarray, ...], np.ndarray]  # mask coordinates, PyTorch logits there


def reference_logits(model: Any, batches: list[ProbeBatch], mask_id: int) -> list[Reference]:
    """PyTorch's logits at every masked position of every probe batch."""
    import torch

    model.eval()
    refs = []
    for batch in batches:
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(batch.input_ids),
                           attention_mask=torch.from_numpy(batch.attention_mask),
                           token_type_ids=torch.from_numpy(batch.token_type_ids)).logits.numpy()
        where = np.nonzero(batch.input_ids == mask_id)
        refs.append((where, logits[where]))
    return refs


def compare_graph(path: Path, name: str, entry: dict, batches: list[ProbeBatch], refs: list[Reference],
                  providers: str = "cpu") -> GraphParity:
    """One graph's parity with the references, judged against the tolerance in its entry."""
    session = create_session(str(path), providers)
    parity = GraphParity(name, path.name, entry["form"], Tolerance.from_dict(entry["tolerance"]),
                         provider=session.get_providers()[0])
    compare = _compare_logits_form if parity.form == "logits" else _compare_fill_mask
    for batch, (where, ref) in zip(batches, refs):
        compare(parity, session, batch, where, ref, parity.tolerance.top_k)
    return parity
