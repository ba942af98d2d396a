"""What the sparse and embed tasks share: opening their graph, tokenizing texts, running them in batches
of similar length, and mean pooling. Torch-free, like the filler.

Pooling leaves out the special tokens the tokenizer adds around a text (CLS, SEP, their ESM and RoBERTa
counterparts) and padding, as esm's `extract.py` and AntiBERTy's `embed` do; a mask or unknown token
written in the text is part of the text and stays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.handle import Artifact
from ..errors import ArtifactError, InputError
from ..manifest import Manifest, TokenizerInfo
from .graph import LoadedGraph, artifact_from, check_batch_size, right_padded
from .texts import as_text_list, check_texts
from .threads import check_threads

ADDED_ROLES = ("cls", "sep", "pad")  # what a tokenizer puts around a text (and pads it with)


def added_special_ids(tokenizer: TokenizerInfo) -> tuple[int, ...]:
    """Ids of the tokens a tokenizer adds around a text, left out of pooled embeddings."""
    return tuple(sorted({tokenizer.special_ids[role] for role in ADDED_ROLES if role in tokenizer.special_ids}))


def pool_mean(hidden: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
              excluded: np.ndarray | Sequence[int]) -> np.ndarray:
    """[B, S, H] hidden states to [B, H]: the mean over each row's attended tokens that are not in
    `excluded`; a row with none such (only special tokens) gives zeros."""
    keep = attention_mask.astype(bool) & ~np.isin(input_ids, np.asarray(excluded, dtype=np.int64))
    counts = keep.sum(axis=1, keepdims=True)
    sums = np.einsum("bs,bsh->bh", keep.astype(np.float64), hidden.astype(np.float64))
    pooled: np.ndarray = (sums / np.maximum(counts, 1)).astype(np.float32)
    return pooled


class TaskModel:
    """One task graph and the artifact's tokenizer; holds no per-call state, so many threads may share it."""

    task = ""

    def __init__(self, graph: LoadedGraph, tokenizer: Any, batch_size: int = 32) -> None:
        if graph.entry.form != self.task:
            raise ArtifactError(f"the {graph.name} graph of {graph.artifact.path} is a {graph.entry.form} graph, "
                                f"not a {self.task} one")
        self.graph = graph
        self.artifact: Artifact = graph.artifact
        self.directory: Path = graph.artifact.path
        self.manifest: Manifest = graph.artifact.present
        self.variant: str = graph.name
        self.provider: str = graph.provider
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length: int = self.manifest.model.max_length
        self.pad_token_id: int = self.manifest.tokenizer.pad_token_id
        self.added_ids = np.array(added_special_ids(self.manifest.tokenizer), dtype=np.int64)

    @classmethod
    def from_pretrained(cls, directory: str | Path | Artifact, variant: str | None = None,
                        providers: str | Sequence[str] = "auto", threads: int | None = None,
                        batch_size: int = 32, public_key: Any = None) -> Any:
        """Open the artifact's graph of this task, checked against its sha256 first: `variant` ("int8" or
        "sparse.int8"; None: the one the policy table prefers where `providers` lands), `public_key` as
        for `OnnxMaskFiller.from_pretrained`."""
        artifact = artifact_from(directory, public_key)
        check_threads(threads)
        batch_size = check_batch_size(batch_size)
        graph = LoadedGraph.open_task(artifact, cls.task, variant, providers, threads)
        return cls(graph, artifact.tokenizer(), batch_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r}, variant={self.variant!r}, provider={self.provider!r})"

    def _texts(self, inputs: object) -> tuple[list[str], bool]:
        single = isinstance(inputs, str)
        texts = [inputs] if single else as_text_list(inputs)
        if not texts:
            raise InputError("no input texts were given")
        check_texts(texts)
        return texts, single  # type: ignore[return-value]  # check_texts: all strings

    def _encode(self, texts: list[str], truncate: bool) -> list[list[int]]:
        if not isinstance(truncate, (bool, np.bool_)):
            raise InputError(f"truncate must be True or False, got {truncate!r}")
        rows = [e.ids for e in self.tokenizer.encode_batch(texts)]
        for i, row in enumerate(rows):
            if len(row) <= self.max_length:
                continue
            if not truncate:
                raise InputError(f"input {i} is {len(row)} tokens long (with special tokens); this model takes "
                                 f"at most {self.max_length}. Shorten it, or pass truncate=True to keep its "
                                 f"first {self.max_length} tokens")
            rows[i] = self._truncated(texts[i])
        return rows

    def _truncated(self, text: str) -> list[int]:
        """The text's first tokens, then the special tokens the tokenizer adds: as transformers truncates."""
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(False)
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        encoding.truncate(room)
        ids: list[int] = self.tokenizer.post_process(encoding).ids
        return ids

    def _batches(self, rows: list[list[int]], batch_size: int | None
                 ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]]:
        """(indices, input_ids, attention_mask, the graph's output) per run, texts of similar length together."""
        size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        output = self.graph.output_names[0]
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            input_ids, attention_mask = right_padded([rows[i] for i in chunk], self.pad_token_id)
            result = self.graph.run([output], self.graph.feeds(input_ids, attention_mask))[0]
            if not np.isfinite(result).all():
                raise ArtifactError(f"the {self.variant} graph of {self.directory} produced non-finite values (NaN "
                                    "or inf): it is broken or was altered. Run `mlm-export verify` on it")
            yield chunk, input_ids, attention_mask, result
