"""`Service`: an artifact's tasks loaded once for serving, checked as `verify --integrity` checks them, and
how one run of queued requests executes on them. Torch-free; the HTTP side is `app.py`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..artifact.handle import Artifact
from ..errors import ConfigError, InputError, MlmExportError
from ..manifest import FILL_MASK
from ..runtime.embed import Embedder
from ..runtime.graph import LoadedGraph
from ..runtime.mutations import Mutant, MutationScorer, WildType
from ..runtime.predictor import OnnxMaskFiller
from ..runtime.scoring import PLLScore, ScoreOptions, Scorer
from ..runtime.sparse import SparseEncoder
from ..runtime.tasks import TaskModel
from ..verify.integrity import GraphCheck, require_passed, smoke_graph, IntegrityReport
from .options import ServeOptions
from .requests import EmbedRequest, FillMaskRequest, ScoreRequest, SparseRequest, TooManyInputs, VariantsRequest

MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a fill-mask answer's JSON, estimated before the request runs
ENDPOINT_TASKS = {"/fill-mask": FILL_MASK, "/score": FILL_MASK, "/variants": FILL_MASK,
                  "/embed": "embed", "/embed_sparse": "sparse"}


@dataclass(frozen=True)
class ScorePart:
    """One text of a `/score` request: PLL runs each text alone, so a long request is split into these."""

    request: ScoreRequest
    index: int


@dataclass(frozen=True)
class VariantsPart:
    """A `/variants` request, parsed: all of it for the marginals (one PLL's cost, however many mutations), or
    for PLL delta one sequence's PLL (`mutant` None: the wild type's), so a long list runs one PLL per turn."""

    request: VariantsRequest
    scorer: MutationScorer
    wild_type: WildType
    mutants: tuple[Mutant, ...]
    mutant: Mutant | None = None


@dataclass(frozen=True)
class Work:
    """What the batcher needs to queue a request: its key, its parts and their size, and the answer's assembly."""

    key: Hashable
    parts: Sequence[Any]
    size: int
    limit: int
    single: bool  # one part whose result is the answer (else a list, or one row for a string `/score`)


class Service:
    """The tasks an artifact holds, one graph each, with the variant and provider that serve it."""

    def __init__(self, artifact: Artifact, models: dict[str, OnnxMaskFiller | TaskModel], checks: list[GraphCheck],
                 options: ServeOptions) -> None:
        self.artifact = artifact
        self.models = models
        self.checks = checks
        self.options = options
        self._variants_ids = itertools.count()
        filler = models.get(FILL_MASK)
        self.filler = filler if isinstance(filler, OnnxMaskFiller) else None
        self.scorer: Scorer | None = None
        if self.filler is not None and "target_ids" in self.filler.graph.input_names:
            self.scorer = self.filler.scorer()

    @classmethod
    def load(cls, directory: str | Path, options: ServeOptions, public_key: Any = None) -> Service:
        """Open every task's graph (hash-checked; the signature too with `public_key`) on the backend the
        policy table picks, then run each one smoke call; a failure raises before anything is served."""
        artifact = Artifact.open(directory, public_key)
        artifact.check_files()
        tokenizer = artifact.tokenizer()
        tasks = artifact.present.tasks
        models: dict[str, OnnxMaskFiller | TaskModel] = {}
        checks = []
        for task in tasks:
            start = time.perf_counter()
            graph = LoadedGraph.open_task(artifact, task, _variant_for(artifact, task, options.variant, tasks),
                                          options.providers, options.threads)
            models[task] = _model(task, graph, tokenizer, options.max_batch_size)
            try:
                smoke, error = smoke_graph(graph, tokenizer), None
            except MlmExportError as exc:
                smoke, error = None, f"{type(exc).__name__}: {exc}"
            checks.append(GraphCheck(graph.name, task, graph.provider, smoke, error,
                                     seconds=time.perf_counter() - start))
        require_passed(IntegrityReport(str(artifact.path), len(artifact.present.files), None, tuple(checks)))
        return cls(artifact, models, checks, options)

    # --- what the HTTP side asks ---

    def serves(self, endpoint: str) -> str | None:
        """None where the artifact serves the endpoint, else why not (answered 404)."""
        task = ENDPOINT_TASKS[endpoint]
        if task not in self.models:
            has = ", ".join(f"/{t}" if t != "sparse" else "/embed_sparse" for t in self.models)
            return (f"this artifact has no {task} graph, so it does not serve {endpoint}; it serves {has} "
                    f"(export with --task {task} for it)")
        if endpoint in ("/score", "/variants") and self.scorer is None:
            return f"the {self.models[task].variant} graph has no scoring inputs, which {endpoint} needs: re-export"
        return None

    def served_by(self, endpoint: str) -> tuple[str, str]:
        """The variant and provider that answer `endpoint`."""
        model = self.models[ENDPOINT_TASKS[endpoint]]
        return model.variant, model.provider

    def work(self, request: Any) -> Work:
        """How a parsed request is queued."""
        batch = self.options.max_batch_size
        if isinstance(request, FillMaskRequest):
            self._check_answer_size(request)
            return Work(("fill-mask", request.top_k, request.targets), [request], len(request.texts), batch, True)
        if isinstance(request, ScoreRequest):
            assert self.scorer is not None
            for i, text in enumerate(request.texts):  # the cheap checks now, not at each text's turn
                try:
                    self.scorer.encode(text)
                except InputError as exc:
                    raise InputError(f"input {i}: {exc}") from None
            parts = [ScorePart(request, i) for i in range(len(request.texts))]
            return Work(("score", request.reduction, request.exclude_special, request.per_token), parts, 1, 1, False)
        if isinstance(request, EmbedRequest):
            return Work(("embed", request.truncate, request.pooling), [request], len(request.texts), batch, True)
        if isinstance(request, SparseRequest):
            return Work(("sparse", request.truncate, request.top_k, request.threshold), [request], len(request.texts),
                        batch, True)
        if isinstance(request, VariantsRequest):
            return self._variants_work(request)
        raise TypeError(f"no work for {type(request).__name__}")

    def _variants_work(self, request: VariantsRequest) -> Work:
        """The request parsed and checked here (a wrong wild-type letter is a 422 before anything runs)."""
        assert self.scorer is not None
        if request.method == "wt-marginal" and "score_positions" not in self.scorer.graph.input_names:
            raise InputError(f"wt-marginal needs the head at unmasked positions, which the {self.scorer.graph.name} "
                             "graph lacks (artifacts before format 6): use masked-marginal, or re-export")
        scorer = MutationScorer(self.scorer, request.alphabet)
        wild_type = scorer.wild_type(request.wild_type)
        mutants = tuple(scorer.parse(wild_type, request.mutations, request.offset))
        key = ("variants", next(self._variants_ids))
        whole = VariantsPart(request, scorer, wild_type, mutants)
        if request.method != "pll-delta":
            return Work(key, [whole], 1, 1, True)
        distinct = list({scorer.key(m): m for m in mutants}.values())
        parts = [whole] + [VariantsPart(request, scorer, wild_type, mutants, m) for m in distinct]
        return Work(key, parts, 1, 1, False)

    def _check_answer_size(self, request: FillMaskRequest) -> None:
        """Each candidate carries its filled-in sequence: 40 texts of 510 masks at top_k 25 would answer 1.6 GB. A
        request whose answer would pass MAX_ANSWER_BYTES is refused (413) before it runs."""
        assert self.filler is not None
        candidates = min(request.top_k, self.filler.vocab_size) if request.targets is None else len(request.targets)
        size = sum(text.count(self.filler.mask_token) * candidates * (len(text) + 80) for text in request.texts)
        if size > MAX_ANSWER_BYTES:
            raise TooManyInputs(f"the answer would be about {size / 1e6:.0f} MB ({candidates} candidates per mask, "
                                f"each with its filled-in text); this server answers at most "
                                f"{MAX_ANSWER_BYTES / 1e6:.0f} MB: ask for a smaller top_k, fewer masks or fewer texts")

    @staticmethod
    def assemble(work: Work, request: Any) -> Any:
        def answer(results: list[Any]) -> Any:
            if work.single:
                return results[0]
            if isinstance(request, VariantsRequest):  # PLL delta: the wild type's PLL, then each mutant's
                part: VariantsPart = work.parts[0]
                plls = {part.scorer.key(p.mutant): pll for p, pll in zip(work.parts[1:], results[1:])
                        if p.mutant is not None}
                return [{"mutant": name, "score": plls[part.scorer.key(m)] - results[0]}
                        for name, m in zip(request.mutations, part.mutants)]
            return results[0] if isinstance(request, ScoreRequest) and isinstance(request.inputs, str) else results
        return answer

    def execute(self, key: Hashable, parts: list[Any]) -> list[Any]:
        """One run of parts that share `key`; per part its result or the exception that is its answer."""
        kind = key[0] if isinstance(key, tuple) else key
        if kind == "fill-mask":
            return self._fill_mask(parts)
        if kind == "score":
            return [self._score(part) for part in parts]
        if kind in ("embed", "sparse"):
            return self._encode(kind, parts)
        return [self._variants(part) for part in parts]

    def info(self) -> dict[str, Any]:
        """`GET /info`: the model, its tasks, the variants present, and which variant and provider serve each task."""
        manifest = self.artifact.manifest
        return {
            "model_id": manifest.name, "family": manifest.family, "architecture": manifest.model.architecture,
            "max_input_length": manifest.model.max_length, "vocab_size": manifest.model.vocab_size,
            "mask_token": manifest.tokenizer.mask_token, "format_version": manifest.format_version,
            "version": __version__,
            "tasks": {task: {"variant": model.variant, "provider": model.provider}
                      for task, model in self.models.items()},
            "endpoints": [e for e in ENDPOINT_TASKS if self.serves(e) is None],
            "variants": sorted(self.artifact.graphs),
            "integrity": [check.to_dict() for check in self.checks],
            "max_batch_size": self.options.max_batch_size, "max_wait_ms": self.options.max_wait_ms,
            "max_queue": self.options.max_queue, "max_inputs": self.options.max_inputs,
            "max_body_bytes": self.options.max_body_bytes, "timeout": self.options.timeout,
        }

    # --- the runs ---

    def _fill_mask(self, requests: list[FillMaskRequest]) -> list[Any]:
        assert self.filler is not None
        texts = [text for request in requests for text in request.texts]
        first = requests[0]
        try:
            merged = self.filler(texts, top_k=first.top_k, targets=first.targets)
        except InputError as exc:
            if len(requests) == 1:
                return [exc]
            return [self._fill_mask([request])[0] for request in requests]  # whose text it was, in its own words
        per_text = [merged] if len(texts) == 1 else merged
        out, start = [], 0
        for request in requests:  # each as the filler answers it alone: one text's result, or a list
            count = len(request.texts)
            out.append(per_text[start] if count == 1 else per_text[start : start + count])
            start += count
        return out

    def _score(self, part: ScorePart) -> Any:
        assert self.scorer is not None
        request = part.request
        options = ScoreOptions(request.reduction, request.exclude_special, request.per_token)
        (row,) = self.scorer.score_rows([request.texts[part.index]], options)
        if not isinstance(row, PLLScore):
            return InputError(f"input {part.index}: {row.message}")
        return row.to_dict()

    def _encode(self, kind: str, requests: list[EmbedRequest | SparseRequest]) -> list[Any]:
        texts = [text for request in requests for text in request.texts]
        first = requests[0]
        if isinstance(first, EmbedRequest):
            embedder = self.models["embed"]
            assert isinstance(embedder, Embedder)
            rows = embedder.encode_rows(texts, first.pooling, truncate=first.truncate)
        else:
            encoder = self.models["sparse"]
            assert isinstance(encoder, SparseEncoder)
            rows = encoder.encode_rows(texts, first.top_k, first.threshold, truncate=first.truncate)
        out: list[Any] = []
        start = 0
        for request in requests:
            mine = rows[start : start + len(request.texts)]
            start += len(request.texts)
            bad = next((i for i, row in enumerate(mine) if row.error is not None), None)
            if bad is not None:
                out.append(InputError(f"input {bad} {mine[bad].error}"))
            elif isinstance(request, EmbedRequest):
                out.append([_vector(row.value, request.normalize) for row in mine])
            else:
                out.append([[{"index": int(i), "value": float(v)} for i, v in zip(row.value.indices, row.value.values)]
                            for row in mine])
        return out

    def _variants(self, part: VariantsPart) -> Any:
        if part.request.method == "pll-delta":
            return part.scorer.pll(part.wild_type, part.mutant)
        scores = part.scorer.score(part.wild_type, part.mutants, [part.request.method])[part.request.method]
        return [{"mutant": m, "score": s} for m, s in zip(part.request.mutations, scores)]


def _variant_for(artifact: Artifact, task: str, variant: str | None, tasks: Sequence[str]) -> str | None:
    """`--variant` for one task: a precision ("int8") names each task's graph of it; a graph name its own task's."""
    if variant is None:
        return None
    graphs = artifact.graphs_of(task)
    for name in (variant, variant if task == FILL_MASK else f"{task}.{variant}"):
        if name in graphs:
            return name
    if "." in variant and variant.split(".")[0] != task and len(tasks) > 1:
        return None  # a graph of another task: this one keeps its default
    raise ConfigError(f"--variant {variant}: {artifact.path} has no such {task} graph; it has "
                      f"{', '.join(sorted(graphs))}")


def _model(task: str, graph: LoadedGraph, tokenizer: Any, batch_size: int) -> OnnxMaskFiller | TaskModel:
    if task == FILL_MASK:
        return OnnxMaskFiller(graph, tokenizer, batch_size)
    return (SparseEncoder if task == "sparse" else Embedder)(graph, tokenizer, batch_size)


def _vector(value: np.ndarray, normalize: bool) -> list[float]:
    if normalize:
        norm = float(np.linalg.norm(value))
        value = value / norm if norm > 0 else value
    return [float(v) for v in value]
