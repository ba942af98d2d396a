"""The parity harness: one graph's outputs against the PyTorch model's, on the probes, judged by
the graph's own gate. Export's int8 recipe search and `verify` both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from ..errors import ProviderError
from ..manifest import GraphEntry, Manifest, Tolerance
from ..progress import stage
from ..variants import judged_on
from ..runtime.graph import CONTROL_INPUTS, control_feeds
from ..runtime.openvino import cpu_has_bf16
from ..runtime.backends import create_session
from .probes import ProbeBatch, build_probes, calibration_rows

Reference = tuple[tuple[np.ndarray, ...], np.ndarray]  # mask coordinates, PyTorch logits there


def unmasked_probe_positions(batch: ProbeBatch, mask_id: int, special_ids: np.ndarray, per_row: int = 2) -> np.ndarray:
    """Where the `score_positions` check asks a graph for its head at unmasked tokens: `per_row` of each
    row's ordinary tokens, spread by a fixed rule (bool, the batch's shape). Few, since the head at a
    position costs a vocabulary-wide matrix row (250,000 columns for XLM-R)."""
    ids = batch.input_ids
    ordinary = (batch.attention_mask == 1) & (ids != mask_id) & ~np.isin(ids, special_ids)
    chosen = np.zeros_like(ordinary)
    for row, columns in enumerate(ordinary):
        found = np.flatnonzero(columns)
        if len(found):
            picks = {(row * 7 + k * len(found) // per_row) % len(found) for k in range(per_row)}
            chosen[row, found[sorted(picks)]] = True
    return chosen


@dataclass
class Agreement:
    """Differences between a graph and PyTorch, accumulated over one set of probes."""

    tie_eps: float
    positions: int = 0
    max_abs_logit: float = 0.0
    max_abs_reference: float = 0.0  # the largest |logit| PyTorch gave: the scale of the rounding
    sum_abs_logit: float = 0.0
    count_logit: int = 0
    max_abs_prob: float = 0.0
    max_abs_log_prob: float | None = None  # scoring output (target_log_probs) against PyTorch; None: no scoring
    top1: int = 0
    top1_tie_aware: int = 0
    overlap: float = 0.0
    overlap_tie_aware: float = 0.0
    set_equal: int = 0

    def add(self, ref: np.ndarray, top_ids: np.ndarray, diffs: np.ndarray, prob_diffs: np.ndarray,
            log_prob_diffs: np.ndarray | None = None) -> None:
        """ref: [N, V] torch logits; top_ids: [N, k] graph's ids; diffs: |Δlogit| samples;
        log_prob_diffs: |Δ log-probability| of the scoring output, at ordinary tokens."""
        k = top_ids.shape[1]
        if log_prob_diffs is not None:
            found = float(log_prob_diffs.max()) if log_prob_diffs.size else 0.0
            self.max_abs_log_prob = max(self.max_abs_log_prob or 0.0, found)
        eps = self.tie_eps
        self.positions += len(ref)
        if diffs.size:
            self.max_abs_logit = max(self.max_abs_logit, float(diffs.max()))
        if ref.size:
            self.max_abs_reference = max(self.max_abs_reference, float(np.abs(ref).max()))
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
            "max_abs_reference_logit": self.max_abs_reference,
            "mean_abs_logit": self.sum_abs_logit / self.count_logit if self.count_logit else 0.0,
            "max_abs_prob": self.max_abs_prob,
            "max_abs_log_prob": self.max_abs_log_prob,
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
    # the head's rows at unmasked positions (`score_positions`, wild-type marginals), per probe set: held
    # to the same gate apart from the masked rows, which they would otherwise dilute with easy predictions
    unmasked_sets: dict[str, Agreement] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, probe_set: str, *args: Any, unmasked: bool = False) -> None:
        eps = self.tolerance.max_abs_logit or 0.0
        sets = self.unmasked_sets if unmasked else self.sets
        for name in ("all", probe_set):
            sets.setdefault(name, Agreement(eps)).add(*args)

    @property
    def gated_on(self) -> str:
        return gated_set(self.sets, self.tolerance.scope)

    @property
    def gated(self) -> Agreement:
        return self.sets.get(self.gated_on) or Agreement(0.0)

    @property
    def unmasked(self) -> Agreement | None:
        """The unmasked rows' agreement on the gated set; None for a graph without `score_positions`."""
        return self.unmasked_sets.get(self.gated_on) if self.unmasked_sets else None

    @property
    def failures(self) -> list[str]:
        out = list(self.errors)
        if self.gated.positions == 0:
            out.append("no masked positions were compared")
        out += self._judged(self.gated, "")
        if self.unmasked_sets:
            unmasked = self.unmasked or Agreement(0.0)
            if unmasked.positions == 0:
                out.append("no unmasked positions (score_positions) were compared")
            out += self._judged(unmasked, "at unmasked positions: ", topk=False)
        return out

    def _judged(self, g: Agreement, where: str, topk: bool = True) -> list[str]:
        """The gate on one kind of row. Unmasked rows (`topk=False`) are held to every bound but the top-k
        overlap: under a visible token the rest of the distribution is a near-tied tail whose order is
        rounding (rxnfp int8: 98.9% top-5 overlap there, 99.2% at the masks), and wild-type marginals read
        log-probabilities, which the logit, log-probability and probability bounds hold."""
        tol, out = self.tolerance, []
        allowed = self.allowed_for(g)
        if allowed is not None and g.max_abs_logit > allowed:
            out.append(f"{where}max |Δlogit| {g.max_abs_logit:.3g} > {allowed:.3g}")
        # a log-softmax moves by at most twice the largest logit error: held where logits are gated
        if allowed is not None and g.max_abs_log_prob is not None and g.max_abs_log_prob > 2 * allowed:
            out.append(f"{where}max |Δ log-probability| of the scoring output {g.max_abs_log_prob:.3g} > "
                       f"{2 * allowed:.3g}")
        if tol.max_abs_prob is not None and g.max_abs_prob > tol.max_abs_prob:
            out.append(f"{where}max |Δ probability| {g.max_abs_prob:.3g} > {tol.max_abs_prob:.3g}")
        if g.rate(g.top1_tie_aware) < tol.min_top1_agreement:
            out.append(f"{where}top-1 agreement {g.rate(g.top1_tie_aware):.4%} < {tol.min_top1_agreement:.2%}")
        if topk and g.rate(g.overlap_tie_aware) < tol.min_topk_overlap:
            out.append(f"{where}top-{tol.top_k} overlap {g.rate(g.overlap_tie_aware):.4%} < "
                       f"{tol.min_topk_overlap:.2%}")
        return out

    @property
    def allowed_abs_logit(self) -> float | None:
        return self.allowed_for(self.gated)

    def allowed_for(self, g: Agreement) -> float | None:
        """The |Δlogit| bound for rows of `g`, scaled by their own largest logit (unmasked rows are surer
        and larger: they must not loosen the masked rows' bound)."""
        tol = self.tolerance
        if tol.max_abs_logit is None:
            return None
        return max(tol.max_abs_logit, (tol.max_rel_logit or 0.0) * g.max_abs_reference)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary_lines(self) -> list[str]:
        d = self.to_dict()
        return [f"{'PASS' if self.passed else 'FAIL'} {self.graph:<11} {self.file:<20} on {self.gated_on}: "
                f"positions={d['masked_positions']} max|Δlogit|={d['max_abs_logit']:.2e} "
                f"top1={d['top1_agreement']:.2%} top{self.tolerance.top_k}-overlap={d['topk_overlap']:.2%} "
                f"set-equal={d['topk_set_equal']:.2%} [{self.provider}]"] + (
                [f"     unmasked: positions={u['positions']} max|Δlogit|={u['max_abs_logit']:.2e} "
                 f"top1={u['top1_agreement']:.2%}"] if (u := d.get("unmasked")) else []) + \
            [f"     {f}" for f in self.failures]

    def to_dict(self) -> dict:
        unmasked: dict[str, Any] = {}
        if self.unmasked:  # the same figures, counted over unmasked positions
            figures = self.unmasked.to_dict()
            unmasked = {"unmasked": {"positions": figures.pop("masked_positions"), **figures}}
        return {"graph": self.graph, "file": self.file, "form": self.form, "provider": self.provider,
                **self.gated.to_dict(), "gated_on": self.gated_on,
                "probe_sets": {name: a.to_dict() for name, a in self.sets.items()}, **unmasked,
                "tolerance": self.tolerance.to_dict(), "passed": self.passed,
                "failures": self.failures}


class _Judged(Protocol):
    """A graph's parity: `GraphParity` (logits, fill-mask) or `verify.tasks.TaskParity` (sparse, embed)."""

    graph: str

    @property
    def passed(self) -> bool: ...

    def to_dict(self) -> dict: ...

    def summary_lines(self) -> list[str]: ...


@dataclass(frozen=True)
class VerifyReport:
    artifact: str
    graphs: list[_Judged]
    absent: tuple[str, ...] = ()  # graphs a slim copy left out: listed in its manifest, not checked

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.graphs)

    def to_dict(self) -> dict:
        slim = {"slim": {"absent": list(self.absent)}} if self.absent else {}
        return {"artifact": self.artifact, "passed": self.passed,
                "graphs": {g.graph: g.to_dict() for g in self.graphs}} | slim

    def summary(self) -> str:
        lines = [line for g in self.graphs for line in g.summary_lines()]
        if self.absent:
            lines.append(f"slim artifact: {', '.join(self.absent)} {'is' if len(self.absent) == 1 else 'are'} not in "
                         "it (slim.json) and could not be checked; the graphs above and every file it holds "
                         "were checked")
        return "\n".join(lines)


def gated_set(sets: Iterable[str], scope: str) -> str:
    """The probe set a gate of `scope` is judged on, among the sets a graph was compared on: the synthetic
    "shapes", the first realistic set (when the scope is "realistic" and there is one), else "all"."""
    realistic = [n for n in sets if n not in ("all", "shapes")]
    if scope == "shapes":
        return "shapes"
    if scope == "realistic" and realistic:
        return realistic[0]
    return "all"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def runtime_of(entry: GraphEntry, providers: str | Sequence[str] = "cpu") -> str | Sequence[str]:
    """Where a variant is judged (`variants.judged_on`): int8 on ONNX Runtime's CPU provider, bf16 on
    OpenVINO, the others on `providers`."""
    return judged_on(entry.precision, providers)


class ParityHarness:
    """Probes and PyTorch's logits at their masks, computed once; then any number of graphs judged.

    `model` is a PyTorch MaskedLM in eval mode: the one just loaded by export, or a fresh one in
    verify (whose reload guards against an exporter that leaves the model in training mode).
    """

    def __init__(self, manifest: Manifest, tokenizer: Any, model: Any, probe_texts: list[str] | None = None,
                 directory: Path | None = None, texts_name: str = "user texts") -> None:
        import torch

        self.batches = build_probes(manifest, tokenizer, probe_texts, directory, texts_name)
        mask_id = manifest.tokenizer.mask_token_id
        # the model takes what the graphs take, less the fill-mask form's own controls
        names = tuple(n for n in next(iter(manifest.graphs.values())).input_names if n not in CONTROL_INPUTS)
        self.special_ids = np.array(manifest.tokenizer.every_special_id)
        model.eval()
        self.mask_id = mask_id
        self.references: list[Reference] = []
        self.unmasked: list[tuple[np.ndarray, np.ndarray]] = []  # score_positions asked, PyTorch's logits there
        with stage(f"PyTorch reference logits on {len(self.batches)} probe batches", len(self.batches),
                   "batch") as advance:
            for batch in self.batches:
                with torch.no_grad():
                    feeds = {k: torch.from_numpy(v) for k, v in batch.feeds(names).items()}
                    logits = model(**feeds).logits.numpy()
                where = np.nonzero(batch.input_ids == mask_id)
                self.references.append((where, logits[where]))
                positions = unmasked_probe_positions(batch, mask_id, self.special_ids)
                self.unmasked.append((positions, logits[positions]))
                advance(1)

    def calibration_rows(self) -> list[ProbeBatch]:
        return calibration_rows(self.batches)

    def check(self, path: Path | str, name: str, entry: GraphEntry,
              providers: str | Sequence[str] = "cpu") -> GraphParity:
        """One graph's parity with the references, judged against the tolerance in its entry."""
        if entry.precision == "bf16" and not cpu_has_bf16():
            raise ProviderError(f"{name} is judged in bf16, and this CPU computes in neither AVX-512 BF16 nor AMX: "
                                "OpenVINO would run it in float32 and pass a gate it never ran. Verify it on "
                                "such a CPU, or verify a copy without it (mlm-export slim --keep ...)")
        session = create_session(str(path), providers, head_input=entry.head_input)
        provider = getattr(session, "description", None) or session.get_providers()[0]  # OpenVINO's precisions
        parity = GraphParity(name, entry.file, entry.form, entry.mask_tolerance, provider=provider)
        judged = [(batch, reference, unmasked) for batch, reference, unmasked
                  in zip(self.batches, self.references, self.unmasked)
                  if entry.tolerance.scope != "shapes" or batch.probe_set == "shapes"]
        with stage(f"comparing {entry.file} on {len(judged)} probe batches", len(judged), "batch") as advance:
            for batch, (where, ref), unmasked in judged:
                feeds = batch.feeds(n for n in entry.input_names if n not in CONTROL_INPUTS)
                if entry.form == "logits":
                    self._logits_form(parity, session, batch, feeds, where, ref)
                else:
                    self._fill_mask(parity, session, batch, entry, feeds, where, ref,
                                    unmasked if "score_positions" in entry.input_names else None)
                advance(1)
        return parity

    @staticmethod
    def _logits_form(parity: GraphParity, session: Any, batch: ProbeBatch, feeds: dict, where: tuple,
                     ref: np.ndarray) -> None:
        logits = session.run(["logits"], feeds)[0][where]
        top = np.argsort(-logits, axis=-1, kind="stable")[:, : parity.tolerance.top_k]
        prob_diff = np.abs(_softmax(logits) - _softmax(ref))
        parity.add(batch.probe_set, ref, top, np.abs(logits - ref), prob_diff)

    def _fill_mask(self, parity: GraphParity, session: Any, batch: ProbeBatch, entry: GraphEntry, feeds: dict,
                   where: tuple, ref: np.ndarray, unmasked: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """The graph's rows at the masks, and with `unmasked` (a graph with `score_positions`) at the unmasked
        positions it names as well, against PyTorch's logits there; each kind of row is gated on its own."""
        k = parity.tolerance.top_k
        scoring = "target_ids" in entry.input_names
        outputs = ["mask_batch_index", "mask_position", "scores", "token_ids", "logits"]
        is_mask = np.ones(len(ref), dtype=bool)
        positions = None
        if unmasked is not None:  # the head's rows come in row-major order over masks and asked positions alike
            positions, unmasked_ref = unmasked
            masks = batch.input_ids == self.mask_id
            where = np.nonzero(masks | positions)
            is_mask = masks[where]
            merged = np.empty((len(is_mask), ref.shape[1]), dtype=ref.dtype)
            merged[is_mask], merged[~is_mask] = ref, unmasked_ref
            ref = merged
        ref_top = np.argsort(-ref, axis=1, kind="stable")[:, :k]
        if scoring:  # the graph scores PyTorch's top-k ids, without the special tokens: checked below
            outputs.append("target_log_probs")
        feeds = feeds | control_feeds(entry.input_names, k, target_ids=ref_top, exclude_special=True,
                                      score_positions=positions)
        try:
            b, p, scores, ids, top_logits, *scored = session.run(outputs, feeds)
        except Exception as exc:  # the backend's own error types: a graph that cannot run these probes fails
            parity.errors.append(f"{batch.label}: the graph failed to run: {str(exc)[:300]}")
            return
        if not (np.array_equal(b, where[0]) and np.array_equal(p, where[1])):
            parity.errors.append(f"{batch.label}: graph ran its head at {list(zip(b, p))[:5]}..., "
                                 f"expected {list(zip(*where))[:5]}...")
            return
        if ids.shape != (len(ref), min(k, ref.shape[1])):
            parity.errors.append(f"{batch.label}: token_ids shape {ids.shape}, expected {(len(ref), k)}")
            return
        ref_at = np.take_along_axis(ref, ids, axis=1)
        prob_diffs = np.abs(scores - np.take_along_axis(_softmax(ref), ids, axis=1))
        logit_diffs = np.abs(top_logits - ref_at)
        log_prob_diffs = None
        if scoring:
            kept = ref.astype(np.float64)
            kept[:, self.special_ids] = -np.inf
            ref_log_probs = np.take_along_axis(_log_softmax(kept), ref_top, axis=1)
            ordinary = ~np.isin(ref_top, self.special_ids)
            log_prob_diffs = np.abs(np.where(ordinary, scored[0], 0.0) - np.where(ordinary, ref_log_probs, 0.0))
        for rows, is_unmasked in ((is_mask, False), (~is_mask, True)):
            if rows.any() or not is_unmasked:
                parity.add(batch.probe_set, ref[rows], ids[rows], logit_diffs[rows], prob_diffs[rows],
                           None if log_prob_diffs is None else log_prob_diffs[rows], unmasked=is_unmasked)
