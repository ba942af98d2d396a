"""`SparseEncoder`: learned sparse retrieval (SPLADE) on an artifact exported with `--task sparse`.

The graph gives each text's vocabulary-wide weights (`log1p(relu(logits))` pooled over its attended
tokens, passes/sparse.py); this keeps the non-zero terms, or the `top_k`, or those above `threshold`,
as fastembed's `SparseEmbedding` does: numpy `indices` and `values`, ready for Qdrant, Elasticsearch or
OpenSearch.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from ..errors import InputError
from .tasks import TaskModel, TaskRow


@dataclass(frozen=True)
class SparseEmbedding:
    """One text's terms: token ids in ascending order and their weights (all > the threshold asked for)."""

    indices: np.ndarray  # int64
    values: np.ndarray   # float32

    def as_dict(self) -> dict[int, float]:
        """{token id: weight}, the shape OpenSearch's and Elasticsearch's rank_features take (with tokens
        as keys: `SparseEncoder.decode`)."""
        return dict(zip(self.indices.tolist(), self.values.tolist()))

    def __len__(self) -> int:
        return len(self.indices)


class SparseEncoder(TaskModel):
    """Encode texts into SPLADE sparse vectors. Instances hold no per-call state: many threads may share one."""

    task = "sparse"

    @overload
    def encode(self, texts: str, top_k: int | None = None,  # type: ignore[overload-overlap]
               threshold: float = 0.0, batch_size: int | None = None, truncate: bool = False) -> SparseEmbedding: ...
    @overload
    def encode(self, texts: Sequence[str], top_k: int | None = None, threshold: float = 0.0,
               batch_size: int | None = None, truncate: bool = False) -> list[SparseEmbedding]: ...

    def encode(self, texts: str | Sequence[str], top_k: int | None = None, threshold: float = 0.0,
               batch_size: int | None = None, truncate: bool = False) -> SparseEmbedding | list[SparseEmbedding]:
        """One `SparseEmbedding` per text (one for a string): its terms weighing more than `threshold`,
        the `top_k` heaviest of them when given. `truncate` keeps a text's first tokens where it is longer
        than the model takes (otherwise such a text is an `InputError`)."""
        batch, single = self._texts(texts)
        done = self._values(self.encode_rows(batch, top_k, threshold, batch_size, truncate))
        return done[0] if single else done

    def encode_rows(self, texts: Sequence[object], top_k: int | None = None, threshold: float = 0.0,
                    batch_size: int | None = None, truncate: bool = False) -> list[TaskRow]:
        """As `encode`, but one `TaskRow` per text: a `SparseEmbedding` and the text's token count, or why the
        text cannot be encoded; a bad text does not stop the others (what `mlm-export encode` writes)."""
        if top_k is not None and (not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool) or top_k < 1):
            raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
        if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not np.isfinite(threshold) \
                or threshold < 0:
            raise InputError(f"threshold must be a finite number >= 0, got {threshold!r}")
        k = None if top_k is None else int(top_k)

        def convert(_ids: np.ndarray, _mask: np.ndarray, weights: np.ndarray) -> list[SparseEmbedding]:
            return [_terms(row, k, float(threshold)) for row in weights]

        return self._rows(texts, truncate, batch_size, convert)

    def decode(self, embedding: SparseEmbedding, top_k: int | None = 10) -> list[tuple[str, float]]:
        """The embedding's heaviest terms as (token, weight), heaviest first (all of them for None)."""
        if not isinstance(embedding, SparseEmbedding):
            raise InputError(f"decode takes a SparseEmbedding, got {type(embedding).__name__}")
        indices, values = embedding.indices, embedding.values
        if not (isinstance(indices, np.ndarray) and isinstance(values, np.ndarray) and indices.ndim == values.ndim == 1
                and len(indices) == len(values) and indices.dtype.kind in "iu"):
            raise InputError("a SparseEmbedding holds two 1-D numpy arrays of one length: integer indices and "
                             "their values")
        if top_k is not None and (not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool) or top_k < 1):
            raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
        vocab = self.manifest.model.vocab_size
        if len(embedding.indices) and (embedding.indices.min() < 0 or embedding.indices.max() >= vocab):
            raise InputError(f"the embedding has token ids outside this model's vocabulary of {vocab}")
        order = np.argsort(-embedding.values, kind="stable")[:top_k]
        return [(self.tokenizer.id_to_token(int(embedding.indices[i])), float(embedding.values[i])) for i in order]


def _terms(weights: np.ndarray, top_k: int | None, threshold: float) -> SparseEmbedding:
    kept = np.flatnonzero(weights > threshold)
    if top_k is not None and len(kept) > top_k:
        heaviest = np.argsort(-weights[kept], kind="stable")[:top_k]
        kept = np.sort(kept[heaviest])
    return SparseEmbedding(kept.astype(np.int64), weights[kept].astype(np.float32))
