"""`Embedder`: hidden-state embeddings on an artifact exported with `--task embed` (the layer is chosen
at export, `--layer`, the last by default).

Pooling, per call: `mean` over the text's own tokens (the special tokens the tokenizer adds and the
padding left out, as esm's `extract.py --include mean` and AntiBERTy's `embed` do), `cls` (the first
token's state), or `none` (one `[L, H]` array per text, of its own tokens, or of every token with
`include_special=True`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .tasks import TaskModel, TaskRow, pool_mean

POOLINGS = ("mean", "cls", "none")


class Embedder(TaskModel):
    """Embed texts with the artifact's encoder. Instances hold no per-call state: many threads may share one."""

    task = "embed"
    needs_content = True  # special tokens alone would pool to nothing

    @property
    def layer(self) -> int:
        """The layer whose hidden states the graph gives (0: the embeddings)."""
        return int(self.graph.entry.task.layer) if self.graph.entry.task and self.graph.entry.task.layer is not None \
            else self.manifest.model.num_layers

    def encode(self, texts: str | Sequence[str], pooling: str = "mean", batch_size: int | None = None,
               truncate: bool = False, include_special: bool = False) -> np.ndarray | list[np.ndarray]:
        """`mean` and `cls`: a float32 `[N, H]` array (`[H]` for one string). `none`: a list of `[L, H]`
        arrays, one per text (one array for a string), without the added special tokens unless
        `include_special`. `truncate` keeps a text's first tokens where it is longer than the model takes."""
        batch, single = self._texts(texts)
        values = self._values(self.encode_rows(batch, pooling, batch_size, truncate, include_special))
        if pooling == "none":
            return values[0] if single else values
        pooled = np.stack(values).astype(np.float32, copy=False)
        return pooled[0] if single else pooled

    def encode_rows(self, texts: Sequence[object], pooling: str = "mean", batch_size: int | None = None,
                    truncate: bool = False, include_special: bool = False) -> list[TaskRow]:
        """As `encode`, but one `TaskRow` per text: its embedding (`[H]`, or `[L, H]` for `none`) and token
        count, or why the text cannot be encoded; a bad text does not stop the others."""
        if pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if not isinstance(include_special, (bool, np.bool_)):
            raise InputError(f"include_special must be True or False, got {include_special!r}")
        if include_special and pooling != "none":
            raise InputError("include_special applies to pooling='none'; mean pooling always leaves the added "
                             "special tokens out, and cls is one")

        def convert(input_ids: np.ndarray, attention_mask: np.ndarray, hidden: np.ndarray) -> list[np.ndarray]:
            if pooling == "mean":
                return list(pool_mean(hidden, input_ids, attention_mask, self.added_ids))
            if pooling == "cls":
                return list(hidden[:, 0].astype(np.float32))
            keep = attention_mask.astype(bool)
            if not include_special:
                keep &= ~np.isin(input_ids, self.added_ids)
            return [np.ascontiguousarray(hidden[j][keep[j]], dtype=np.float32) for j in range(len(hidden))]

        return self._rows(texts, truncate, batch_size, convert)
