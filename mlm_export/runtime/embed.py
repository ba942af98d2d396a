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
from .tasks import TaskModel, pool_mean

POOLINGS = ("mean", "cls", "none")


class Embedder(TaskModel):
    """Embed texts with the artifact's encoder. Instances hold no per-call state: many threads may share one."""

    task = "embed"

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
        if pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if not isinstance(include_special, (bool, np.bool_)):
            raise InputError(f"include_special must be True or False, got {include_special!r}")
        if include_special and pooling != "none":
            raise InputError("include_special applies to pooling='none'; mean pooling always leaves the added "
                             "special tokens out, and cls is one")
        batch, single = self._texts(texts)
        rows = self._encode(batch, truncate)
        hidden_size = self.manifest.model.hidden_size
        pooled = np.zeros((len(batch), hidden_size), dtype=np.float32)
        tokens: list[np.ndarray] = [np.empty((0, hidden_size), dtype=np.float32)] * len(batch)
        for chunk, input_ids, attention_mask, hidden in self._batches(rows, batch_size):
            if pooling == "mean":
                pooled[chunk] = pool_mean(hidden, input_ids, attention_mask, self.added_ids)
            elif pooling == "cls":
                pooled[chunk] = hidden[:, 0]
            else:
                keep = attention_mask.astype(bool)
                if not include_special:
                    keep &= ~np.isin(input_ids, self.added_ids)
                for j, index in enumerate(chunk):
                    tokens[index] = np.ascontiguousarray(hidden[j][keep[j]], dtype=np.float32)
        if pooling == "none":
            return tokens[0] if single else tokens
        return pooled[0] if single else pooled
