"""What the sparse and embed tasks share: opening their graph, tokenizing texts, running them in batches
of similar length, and mean pooling. Torch-free, like the filler.

Pooling leaves out the tokens whose ids are those the tokenizer adds around a text (CLS, SEP, their ESM
and RoBERTa counterparts) and padding, as esm's `extract.py` and AntiBERTy's `embed` do, wherever they
are (a "[CLS]" written in the text too); a mask or unknown token written in the text stays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TaskRow:
    """One text's result in `encode_rows`: its value and token count, or why it has none (`error`, a
    predicate: "is empty", "is 600 tokens long ...")."""

    value: Any = None
    n_tokens: int | None = None  # the text's own tokens, without the CLS/SEP-like ones added around it
    error: str | None = None


class TaskModel:
    """One task graph and the artifact's tokenizer; holds no per-call state, so many threads may share it."""

    task = ""
    needs_content = False  # True where a text of special tokens alone has no value (an embedding)

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
        return texts, single  # type: ignore[return-value]  # strings or not, each is checked by _prepare

    @staticmethod
    def _values(rows: list[TaskRow]) -> list[Any]:
        """The rows' values; the first row that has none is an `InputError` naming its input."""
        for i, row in enumerate(rows):
            if row.error is not None:
                raise InputError(f"input {i} {row.error}")
        return [row.value for row in rows]

    def _prepare(self, texts: Sequence[object], truncate: bool) -> list[list[int] | str]:
        """Per text: its token ids, or why it cannot be encoded (said of "input i")."""
        if not isinstance(truncate, (bool, np.bool_)):
            raise InputError(f"truncate must be True or False, got {truncate!r}")
        rows: list[list[int] | str] = []
        for text in texts:
            try:
                check_texts([text])
            except InputError as exc:
                rows.append(str(exc).removeprefix("input 0 "))
                continue
            ids: list[int] = self.tokenizer.encode(text).ids
            if len(ids) > self.max_length:
                if not truncate:
                    rows.append(f"is {len(ids)} tokens long (with special tokens); this model takes at most "
                                f"{self.max_length}. Shorten it, or pass truncate=True (--truncate) to keep its "
                                f"first {self.max_length} tokens")
                    continue
                ids = self._truncated(str(text))
            if self.needs_content and not self._own_tokens(ids):
                rows.append("has no tokens besides the special ones the tokenizer adds, so it has no embedding")
                continue
            rows.append(ids)
        return rows

    def _own_tokens(self, ids: Sequence[int]) -> int:
        """The text's own tokens: those that are not the CLS, SEP or PAD the tokenizer adds (score's n_tokens)."""
        return int(np.count_nonzero(~np.isin(np.asarray(ids, dtype=np.int64), self.added_ids)))

    def _rows(self, texts: Sequence[object], truncate: bool, batch_size: int | None,
              convert: Any) -> list[TaskRow]:
        """`convert(input_ids, attention_mask, output)` -> one value per row of a run; a text that cannot be
        encoded gets its error instead."""
        prepared = self._prepare(texts, truncate)
        good = [i for i, row in enumerate(prepared) if not isinstance(row, str)]
        out = [TaskRow(error=row) if isinstance(row, str) else TaskRow() for row in prepared]
        rows: list[list[int]] = [prepared[i] for i in good]  # type: ignore[misc]  # the good ones
        for chunk, input_ids, attention_mask, result in self._batches(rows, batch_size):
            for j, value in zip(chunk, convert(input_ids, attention_mask, result)):
                out[good[j]] = TaskRow(value, self._own_tokens(rows[j]))
        return out

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
