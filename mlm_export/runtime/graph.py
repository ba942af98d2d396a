"""`LoadedGraph`: one hash-checked graph of an artifact opened on a backend, with its declared IO and the
one feed builder. The filler, the scorer and every later task run their graph through it.

The graph is fed exactly the inputs its manifest entry declares and read by output name, so nothing
here knows a model family: an artifact exported before scoring existed (no `target_ids`) keeps
working for fill-mask.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.handle import Artifact
from ..errors import ArtifactError, InputError, IntegrityError, ProviderError
from ..manifest import FILL_MASK, TASK_FORMS, GraphEntry
from ..variants import CUDA, OPENVINO, check_pairing, preferred
from .backends import Session, choose_backend, create_session, providers_for, requested_providers
from .defaults import default_choice

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CONTROL_INPUTS = ("top_k", "target_ids", "exclude_special", "score_positions")
NO_TARGETS = np.zeros((1, 0), dtype=np.int64)  # one empty row, broadcast to every mask: no scoring work
NO_POSITIONS = np.zeros((1, 1), dtype=bool)  # broadcast to every position: the head runs at the masks alone


def control_feeds(names: Sequence[str], top_k: int, target_ids: np.ndarray | None = None,
                  exclude_special: bool = False, score_positions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The fill-mask graph's control feeds among `names`: `target_ids` is `[1, T]` (the same targets at
    every mask) or `[num_masks, T]` (a row per mask, in the graph's row-major mask order);
    `score_positions` (`[batch, sequence]` bool, format 6) adds head rows at unmasked positions."""
    values = {"top_k": np.array(top_k, dtype=np.int64),
              "target_ids": NO_TARGETS if target_ids is None else np.ascontiguousarray(target_ids, dtype=np.int64),
              "exclude_special": np.array(bool(exclude_special)),
              "score_positions": NO_POSITIONS if score_positions is None
              else np.ascontiguousarray(score_positions, dtype=bool)}
    return {name: values[name] for name in names if name in values}


def token_feeds(names: Sequence[str], input_ids: np.ndarray, attention_mask: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
    """The token feeds among `names`: all positions attended unless a mask is given, token type 0
    everywhere (tokenizers without token types, optimum#2062)."""
    input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
    values = {"input_ids": input_ids,
              "attention_mask": np.ones_like(input_ids) if attention_mask is None
              else np.ascontiguousarray(attention_mask, dtype=np.int64),
              "token_type_ids": np.zeros_like(input_ids)}
    return {name: values[name] for name in names if name in values}


def right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """`input_ids` and `attention_mask` for rows of token ids, right-padded to the longest (the padding
    the fused attention assumes)."""
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


@dataclass(frozen=True)
class LoadedGraph:
    """One graph of `artifact`, hash-checked and opened on a backend. Holds no per-call state: safe to
    run from many threads at once."""

    artifact: Artifact
    name: str
    entry: GraphEntry
    session: Session
    provider: str
    io_binding: bool = False
    why: str = ""  # why this graph was opened: asked for, tuned on this machine, or the policy table (open_task)

    @classmethod
    def open(cls, artifact: Artifact, name: str, providers: str | Sequence[str] = "cpu",
             threads: int | None = None, io_binding: bool | None = None) -> LoadedGraph:
        """Open graph `name` on the backend `providers` asks for. The session loads the very bytes that
        were hashed: a file swapped on disk between the check and the load cannot slip in. A graph with
        external data is loaded by its path, after both files matched and refused if either changed.
        A fill-mask variant asked to run where it does not (int8 on CUDA, bf16 off OpenVINO) is refused
        first (`variants.check_pairing`)."""
        if not isinstance(artifact, Artifact):
            raise InputError(f"LoadedGraph.open takes an Artifact (Artifact.open(path)), got {type(artifact).__name__}")
        if io_binding is not None and not isinstance(io_binding, (bool, np.bool_)):
            raise InputError(f"io_binding must be True, False or None, got {io_binding!r}")
        entry = artifact.graph(name)
        if entry.form == FILL_MASK or entry.form in TASK_FORMS:
            check_pairing(name, entry.precision, requested_providers(providers)[0], artifact.path,
                          artifact.graphs_of(entry.form))
        if entry.data_file is None:
            with artifact.verified_path(entry.file) as path:
                session = create_session(path, providers, threads, entry.head_input)
        else:
            paths = [artifact.checked_path(entry.data_file), artifact.checked_path(entry.file)]
            before = [_stamp(p) for p in paths]
            session = create_session(str(paths[1]), providers, threads, entry.head_input)
            if [_stamp(p) for p in paths] != before:
                raise IntegrityError(f"{artifact.path / entry.file} or its data changed while it was being loaded; "
                                     "load it again")
        actual = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if actual != (list(entry.input_names), list(entry.output_names)):
            raise ArtifactError(f"{artifact.path / entry.file} takes {actual[0]} and gives {actual[1]}, but the "
                                f"manifest declares {list(entry.input_names)} and {list(entry.output_names)}: "
                                "re-export the artifact")
        provider = session.get_providers()[0]
        # IO binding hands inputs to the device once and lets ONNX Runtime allocate the outputs; on the
        # CPU it gains nothing, so by default it is used on CUDA only.
        binding = provider == CUDA if io_binding is None else bool(io_binding)
        if binding and provider == OPENVINO:
            raise InputError("io_binding is ONNX Runtime's; OpenVINO (the bf16 variant) has none: leave it unset")
        return cls(artifact, name, entry, session, provider, binding)

    @classmethod
    def open_task(cls, artifact: Artifact, task: str, variant: str | None = None,
                  providers: str | Sequence[str] = "auto", threads: int | None = None,
                  io_binding: bool | None = None) -> LoadedGraph:
        """The graph of `task` ("fill-mask", "sparse", "embed") to serve: `variant` (a graph name; for the
        sparse and embed tasks its precision alone also does, "int8" for "sparse.int8"), or the one the
        policy table prefers on the backend `providers` resolves to."""
        if variant is not None and not isinstance(variant, str):
            raise InputError(f"variant must be a name such as 'fp32' or None, got {variant!r}")
        if variant is not None and task != FILL_MASK and "." not in variant:
            variant = f"{task}.{variant}"
        variants = artifact.graphs_of(task)
        artifact.refuse_left_out(variant)
        if not variants:
            gone = sorted(n for n in artifact.left_out if artifact.manifest.graphs[n].form == task)
            if gone:
                raise ArtifactError(f"{artifact.path} is a slim copy that left out its {task} graphs "
                                    f"({', '.join(gone)}; slim.json); load the full artifact for {task}")
            hint = "" if task == FILL_MASK else f": export it with --task {task}"
            raise ArtifactError(f"{artifact.path} has no {task} graph{hint}")
        if variant is not None:
            artifact.graph(variant, form=task)  # unknown: an error that lists the variants
            backend = choose_backend(variants, providers, variant, task=task)
            first, why, tuned = variant, "asked for", False
        else:  # this machine's tuning record, else the policy table's row for its CPU class
            choice = default_choice(artifact.manifest_bytes, variants, task, providers)
            backend, first, why, tuned = choice.backend, choice.variant, choice.reason, choice.tuned
        providers = providers_for(backend, providers)
        check_pairing(first, variants[first].precision, backend, artifact.path, variants)  # auto's choice too
        graph = cls.open(artifact, first, providers, threads, io_binding)
        if variant is None and not tuned and preferred(variants, graph.provider, task) != first:  # landed elsewhere
            graph = cls.open(artifact, preferred(variants, graph.provider, task), providers, threads, io_binding)
            why = f"{graph.provider} took the session: {graph.name} is the variant for it"
        return replace(graph, why=why)

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.entry.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.entry.output_names

    @property
    def description(self) -> str:
        """Where the graph runs, for reports (OpenVINO adds the precision each part computes in)."""
        return str(getattr(self.session, "description", None) or self.provider)

    def feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, *, top_k: int = 1,
              target_ids: np.ndarray | None = None, exclude_special: bool = False,
              score_positions: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every input the graph declares: tokens, and for a fill-mask graph its controls."""
        names = self.input_names
        unknown = [n for n in names if n not in TOKEN_INPUTS and n not in CONTROL_INPUTS]
        if unknown:
            raise ArtifactError(f"the {self.name} graph of {self.artifact.path} takes inputs {unknown} that this "
                                "mlm-export cannot feed; upgrade mlm-export or re-export the artifact")
        if score_positions is not None and "score_positions" not in names:
            raise ArtifactError(f"the {self.name} graph of {self.artifact.path} cannot run its head at unmasked "
                                "positions (it has no score_positions input: artifacts before manifest format 6 "
                                "lack it), which wild-type marginals need; re-export the artifact")
        return token_feeds(names, input_ids, attention_mask) | control_feeds(names, top_k, target_ids,
                                                                             exclude_special, score_positions)

    def run(self, outputs: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph, turning the backend's own errors (out of memory, a device fault) into `ProviderError`."""
        unknown = [name for name in outputs if name not in self.output_names]
        if unknown:
            raise InputError(f"the {self.name} graph has no output {unknown}; it gives {list(self.output_names)}")
        try:
            return self._run(list(outputs), feeds)
        except Exception as exc:  # onnxruntime's and openvino's own error types
            shape = feeds["input_ids"].shape
            backend = "OpenVINO" if self.provider == OPENVINO else "ONNX Runtime"
            raise ProviderError(f"{backend} failed running the {self.name} graph on {self.description} "
                                f"for a batch of {shape[0]} x {shape[1]} tokens: {exc}") from exc

    def _run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.io_binding:
            return list(self.session.run(outputs, feeds))
        session = self.session
        binding = session.io_binding()  # type: ignore[attr-defined]  # ONNX Runtime's; one per call (threads)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")  # small outputs: one copy back, sized by the graph
        session.run_with_iobinding(binding)  # type: ignore[attr-defined]
        return list(binding.copy_outputs_to_cpu())


def artifact_from(directory: object, public_key: Any = None) -> Artifact:
    """The artifact a `from_pretrained` names: a path, or an opened `Artifact` (reopened when a key must
    check its signature)."""
    if not isinstance(directory, (str, os.PathLike, Artifact)):
        raise InputError(f"directory must be a path to an artifact, got {type(directory).__name__}")
    if isinstance(directory, Artifact) and public_key is None:
        return directory
    return Artifact.open(directory.path if isinstance(directory, Artifact) else directory, public_key)


def check_batch_size(batch_size: object, what: str = "batch_size") -> int:
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"{what} must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def require_scoring(graph: LoadedGraph, what: str) -> None:
    """Scoring needs the graph's `target_ids` input, which artifacts before mlm-export 0.4 lack."""
    if "target_ids" not in graph.input_names:
        raise ArtifactError(f"the {graph.name} graph of {graph.artifact.path} has no scoring inputs, which "
                            f"{what} needs; re-export the artifact with this version of mlm-export")


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns
