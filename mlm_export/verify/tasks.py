"""Parity of the sparse and embed graphs: their vectors per text against PyTorch's, on the same probes
as the fill-mask gate, judged by each graph's `VectorTolerance`.

PyTorch's side is computed here from the MaskedLM's own outputs (`logits`, `hidden_states`), never from
our graphs' code: SPLADE is `log1p(relu(logits))` over attended positions, pooled by max or sum;
embeddings are the hidden states of the graph's layer, compared per attended token and mean-pooled over
the text's own tokens (`runtime.tasks.pool_mean`: the special tokens the tokenizer adds are left out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ProviderError
from ..manifest import GraphEntry, Manifest, VectorTolerance
from ..progress import stage
from ..runtime.backends import create_session
from ..runtime.openvino import cpu_has_bf16
from ..runtime.tasks import added_special_ids, pool_mean
from .parity import gated_set
from .probes import ProbeBatch


@dataclass
class VectorAgreement:
    """Differences between a task graph's vectors and PyTorch's, over one set of probes."""

    texts: int = 0
    max_abs: float = 0.0
    min_cosine: float = 1.0
    sum_cosine: float = 0.0
    min_token_cosine: float | None = None
    overlap: float = 0.0
    min_overlap: float | None = None

    def add(self, ref: np.ndarray, got: np.ndarray, token_cosines: np.ndarray | None = None,
            overlaps: np.ndarray | None = None) -> None:
        """ref, got: [N, D] vectors per text; token_cosines: per attended token (embed); overlaps: the top-k
        overlap per text (sparse)."""
        self.texts += len(ref)
        if ref.size:
            self.max_abs = max(self.max_abs, float(np.abs(got.astype(np.float64) - ref).max()))
        cosines = cosine(ref, got)
        if cosines.size:
            self.min_cosine = min(self.min_cosine, float(cosines.min()))
            self.sum_cosine += float(cosines.sum())
        if token_cosines is not None and token_cosines.size:
            low = float(token_cosines.min())
            self.min_token_cosine = low if self.min_token_cosine is None else min(self.min_token_cosine, low)
        if overlaps is not None and overlaps.size:
            self.overlap += float(overlaps.sum())
            low = float(overlaps.min())
            self.min_overlap = low if self.min_overlap is None else min(self.min_overlap, low)

    def to_dict(self, sparse: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"texts": self.texts, "max_abs": self.max_abs, "min_cosine": self.min_cosine,
                                "mean_cosine": self.sum_cosine / self.texts if self.texts else None}
        if sparse:
            data |= {"topk_overlap": self.overlap / self.texts if self.texts else None,
                     "min_topk_overlap": self.min_overlap}
        else:
            data["min_token_cosine"] = self.min_token_cosine
        return data


@dataclass
class TaskParity:
    """One sparse or embed graph's agreement per probe set, and its gate."""

    graph: str
    file: str
    form: str
    tolerance: VectorTolerance
    provider: str = ""
    sets: dict[str, VectorAgreement] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, probe_set: str, *args: Any, **kwargs: Any) -> None:
        for name in ("all", probe_set):
            self.sets.setdefault(name, VectorAgreement()).add(*args, **kwargs)

    @property
    def gated_on(self) -> str:
        return gated_set(self.sets, self.tolerance.scope)

    @property
    def gated(self) -> VectorAgreement:
        return self.sets.get(self.gated_on) or VectorAgreement()

    @property
    def failures(self) -> list[str]:
        tol, g = self.tolerance, self.gated
        out = list(self.errors)
        if g.texts == 0:
            out.append("no texts were compared")
        if tol.max_abs is not None and g.max_abs > tol.max_abs:
            out.append(f"max |Δ| {g.max_abs:.3g} > {tol.max_abs:g}")
        if tol.min_cosine is not None and g.min_cosine < tol.min_cosine:
            out.append(f"min cosine {g.min_cosine:.6f} < {tol.min_cosine:g}")
        if tol.min_token_cosine is not None and (g.min_token_cosine or 0.0) < tol.min_token_cosine:
            out.append(f"min token cosine {g.min_token_cosine or 0.0:.6f} < {tol.min_token_cosine:g}")
        overlap = g.overlap / g.texts if g.texts else 0.0
        if tol.min_topk_overlap is not None and overlap < tol.min_topk_overlap:
            out.append(f"top-{tol.top_k} overlap {overlap:.4%} < {tol.min_topk_overlap:.2%}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        sparse = self.form == "sparse"
        return {"graph": self.graph, "file": self.file, "form": self.form, "provider": self.provider,
                **self.gated.to_dict(sparse), "gated_on": self.gated_on,
                "probe_sets": {name: a.to_dict(sparse) for name, a in self.sets.items()},
                "tolerance": self.tolerance.to_dict(), "passed": self.passed, "failures": self.failures}

    def summary_lines(self) -> list[str]:
        g = self.gated
        extra = (f" top{self.tolerance.top_k}-overlap={g.overlap / g.texts if g.texts else 0.0:.2%}"
                 if self.form == "sparse" else f" min-token-cos={g.min_token_cosine or 0.0:.6f}")
        return [f"{'PASS' if self.passed else 'FAIL'} {self.graph:<11} {self.file:<20} on {self.gated_on}: "
                f"texts={g.texts} max|Δ|={g.max_abs:.2e} min-cos={g.min_cosine:.6f}{extra} [{self.provider}]"
                ] + [f"     {failure}" for failure in self.failures]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; two zero rows are identical (1.0), one zero row shares nothing (0.0)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    dots = (a * b).sum(axis=-1)
    both_zero = (np.linalg.norm(a, axis=-1) == 0) & (np.linalg.norm(b, axis=-1) == 0)
    return np.where(both_zero, 1.0, dots / np.where(norms == 0, 1.0, norms))


def topk_overlap(ref: np.ndarray, got: np.ndarray, k: int, tie: float) -> np.ndarray:
    """Per row, the share of the graph's top-k terms among PyTorch's, a term counting as shared when
    PyTorch weighs it within `tie` of its k-th term (a swap between near-equal weights is no change)."""
    k = min(k, ref.shape[1])
    out = np.empty(len(ref))
    for i, (r, g) in enumerate(zip(ref, got)):
        ref_top = np.argpartition(-r, k - 1)[:k]
        kth = r[ref_top].min()
        got_top = np.argpartition(-g, k - 1)[:k]
        shared = np.isin(got_top, ref_top) | (r[got_top] >= kth - tie)
        out[i] = shared.mean()
    return out


class TaskHarness:
    """PyTorch's sparse vectors and hidden states on the probes, computed once for the tasks of `entries`;
    then any number of their graphs judged."""

    def __init__(self, manifest: Manifest, batches: list[ProbeBatch], model: Any, poolings: Sequence[str] = (),
                 layers: Sequence[int] = ()) -> None:
        import torch

        self.batches = batches
        self.excluded = np.array(added_special_ids(manifest.tokenizer))
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if manifest.model.type_vocab_size else [])
        self.sparse: dict[str, list[np.ndarray]] = {p: [] for p in poolings}
        self.hidden: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
        model.eval()
        with stage(f"PyTorch reference vectors on {len(batches)} probe batches", len(batches), "batch") as advance:
            for batch in batches:
                with torch.no_grad():
                    feeds = {k: torch.from_numpy(v) for k, v in batch.feeds(names).items()}
                    out = model(**feeds, output_hidden_states=bool(layers))
                    if poolings:  # an embed-only artifact needs no vocabulary-wide weights
                        attended = feeds["attention_mask"].unsqueeze(-1).to(out.logits.dtype)
                        weights = torch.log1p(torch.relu(out.logits)) * attended
                    for pooling in poolings:
                        pooled = weights.amax(dim=1) if pooling == "max" else weights.sum(dim=1)
                        self.sparse[pooling].append(pooled.numpy())
                    for layer in layers:
                        self.hidden[layer].append(out.hidden_states[layer].numpy())
                advance(1)

    @classmethod
    def for_entries(cls, manifest: Manifest, batches: list[ProbeBatch], model: Any,
                    entries: Sequence[GraphEntry]) -> TaskHarness:
        """The references the graphs `entries` are judged on."""
        poolings = sorted({e.task.pooling for e in entries if e.form == "sparse" and e.task and e.task.pooling})
        layers = sorted({e.task.layer for e in entries if e.form == "embed" and e.task and e.task.layer is not None})
        return cls(manifest, batches, model, poolings, layers)

    def check(self, path: Path | str, name: str, entry: GraphEntry,
              providers: str | Sequence[str] = "cpu") -> TaskParity:
        """One sparse or embed graph against the references, judged by its entry's tolerance."""
        if entry.precision == "bf16" and not cpu_has_bf16():
            raise ProviderError(f"{name} is judged in bf16, and this CPU computes in neither AVX-512 BF16 nor AMX")
        if not isinstance(entry.tolerance, VectorTolerance) or entry.task is None:
            raise TypeError(f"{name} is a {entry.form} graph, not a sparse or embed one")
        tol = entry.tolerance
        session = create_session(str(path), providers, head_input=entry.head_input)
        provider = getattr(session, "description", None) or session.get_providers()[0]
        parity = TaskParity(name, entry.file, entry.form, tol, provider=provider)
        judged = [(i, b) for i, b in enumerate(self.batches) if tol.scope != "shapes" or b.probe_set == "shapes"]
        output = entry.output_names[0]
        with stage(f"comparing {entry.file} on {len(judged)} probe batches", len(judged), "batch") as advance:
            for i, batch in judged:
                got = session.run([output], batch.feeds(entry.input_names))[0]
                if entry.form == "sparse":
                    ref = self.sparse[entry.task.pooling or "max"][i]
                    parity.add(batch.probe_set, ref, got, overlaps=topk_overlap(ref, got, tol.top_k, tol.tie))
                else:
                    self._embed(parity, batch, self.hidden[entry.task.layer or 0][i], got)
                advance(1)
        return parity

    def _embed(self, parity: TaskParity, batch: ProbeBatch, ref: np.ndarray, got: np.ndarray) -> None:
        if got.shape != ref.shape:
            parity.errors.append(f"{batch.label}: hidden states of shape {got.shape}, expected {ref.shape}")
            return
        attended = batch.attention_mask.astype(bool)
        token_cosines = cosine(ref[attended], got[attended])
        pooled_ref = pool_mean(ref, batch.input_ids, batch.attention_mask, self.excluded)
        pooled_got = pool_mean(got, batch.input_ids, batch.attention_mask, self.excluded)
        parity.sets.setdefault("all", VectorAgreement())
        parity.add(batch.probe_set, pooled_ref, pooled_got, token_cosines=token_cosines)
        # max |Δ| over every attended token, not just the pooled vectors
        diff = float(np.abs(got[attended].astype(np.float64) - ref[attended]).max()) if attended.any() else 0.0
        for key in ("all", batch.probe_set):
            parity.sets[key].max_abs = max(parity.sets[key].max_abs, diff)
