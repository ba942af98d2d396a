"""Masked-LM scoring: pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model Scoring").

Each scored token is masked in its own copy of the sequence and the fill-mask graph returns the
log-probability of the original token there (`target_log_probs`): the head runs only at that one
masked position. The copies of one sequence all have its length, so they run together without
padding, and never with another sequence's copies. A sequence's score therefore does not depend on
what else is scored with it, or on which engine (local, Ray) scores it: even int8's dynamic
activation scales see the same batch. (They do see the chunking of a sequence longer than
`copies_per_run`: int8 scores of such sequences move in the fifth decimal with the batch size.)

Conventions:
- every token is scored but the special ones (CLS, SEP, PAD, MASK), also where a text spells one
  out ("[SEP]"); an unknown-character token (UNK) is scored like a word, since it stands for part
  of the text;
- `reduction="sum"` is Salazar et al.'s PLL, `"mean"` divides by the number of scored tokens;
- a sequence with more than `max_unknown` (10%) of its scored tokens UNK gets a `warning` (a
  lower-case protein chain is all UNK to an upper-case vocabulary: its score means nothing);
- `exclude_special=True` takes the softmax over the vocabulary without its special tokens
  (AntiBERTy's `pseudo_log_likelihood` convention); a text with a token the vocabulary lacks (UNK)
  is then refused, since that token has no probability at all.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError
from ..variants import CPU
from .graph import LoadedGraph, require_scoring

REDUCTIONS = ("sum", "mean")
DEFAULT_COPIES_PER_RUN = 128  # masked copies per graph run; a longer sequence runs in several
# ONNX Runtime's CPU provider ran the masked copies of a 120-residue chain fastest ~1,000 tokens at a time
# (int8 on Zen 4, 2 threads: 8 copies 1.49 s, 32 1.59 s, 128 1.80 s a saturation scan); OpenVINO (bf16)
# preferred the largest runs (8: 2.30 s, 128: 2.16 s). What mutation scoring runs by default.
CPU_TOKENS_PER_RUN = 1024
MAX_CHARACTERS = 100_000  # longer texts are refused untokenized (or 100 characters per token the model takes)
DEFAULT_MAX_UNKNOWN = 0.1  # of a sequence's scored tokens; English BERT text has almost none


@dataclass(frozen=True)
class PLLScore:
    """One sequence's pseudo-log-likelihood: `pll` reduced over its `n_tokens` scored tokens."""

    text: str
    pll: float
    n_tokens: int
    token_log_probs: tuple[float, ...] | None = None  # per scored token, in order, when asked for
    unknown_tokens: int = 0  # scored tokens that are the vocabulary's UNK: characters it lacks
    warning: str | None = None  # set when more than `ScoreOptions.max_unknown` of the tokens are UNK

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"text": self.text, "pll": self.pll, "n_tokens": self.n_tokens,
                               "unknown_tokens": self.unknown_tokens}
        if self.token_log_probs is not None:
            row["token_log_probs"] = list(self.token_log_probs)
        if self.warning is not None:
            row["warning"] = self.warning
        return row


@dataclass(frozen=True)
class ScoreOptions:
    """How sequences are scored; one value object shared by the local and Ray engines."""

    reduction: str = "sum"
    exclude_special: bool = False
    per_token: bool = False
    copies_per_run: int | None = None  # None: the backend's best for each sequence's length (Scorer.copies_per_run)
    max_unknown: float = DEFAULT_MAX_UNKNOWN  # a larger share of UNK tokens gets a warning (the score is noise)

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise InputError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")
        for name in ("exclude_special", "per_token"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        size = self.copies_per_run
        if size is not None and (not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1):
            raise InputError(f"batch_size must be a positive integer, got {size!r}")
        share = self.max_unknown
        if not isinstance(share, numbers.Real) or isinstance(share, bool) or not 0 <= share <= 1:
            raise InputError(f"max_unknown must be a fraction from 0 to 1, got {share!r}")


@dataclass(frozen=True)
class RowError:
    """A sequence that could not be scored, and why; batch scoring reports it and goes on."""

    index: int
    text: str
    message: str


class Scorer:
    """PLL scoring on one loaded fill-mask graph; holds no per-call state (thread-safe like the filler)."""

    def __init__(self, graph: LoadedGraph, tokenizer: Any) -> None:
        require_scoring(graph, "pseudo-log-likelihood scoring")
        self.graph = graph
        self.tokenizer = tokenizer
        manifest = graph.artifact.manifest
        tok = manifest.tokenizer
        self.max_length: int = manifest.model.max_length
        self.mask_token: str = tok.mask_token
        self.mask_token_id: int = tok.mask_token_id
        self.unk_id: int = tok.special_ids["unk"]
        self.unscored = frozenset(tok.every_special_id) - {self.unk_id}

    def score(self, texts: str | Sequence[str], options: ScoreOptions) -> PLLScore | list[PLLScore]:
        """Score every text or raise `InputError` for the first that cannot be scored."""
        single = isinstance(texts, str)
        rows = list(self.score_rows([texts] if single else list(texts), options))
        for row in rows:
            if isinstance(row, RowError):
                raise InputError(f"input {row.index}: {row.message}")
        return rows[0] if single else rows  # type: ignore[return-value]

    def score_rows(self, texts: Sequence[Any], options: ScoreOptions) -> Iterator[PLLScore | RowError]:
        """Per text, in order: its score, or a `RowError` (batch scoring goes on past bad rows)."""
        for index, text in enumerate(texts):
            try:
                ids = self.encode(text)
            except InputError as exc:
                yield RowError(index, text if isinstance(text, str) else repr(text), str(exc))
                continue
            if options.exclude_special and self.unk_id in ids:
                yield RowError(index, text, f"{self._unknown(text)}; with exclude_special its probability "
                               "is 0 (score without --exclude-special, or remove the character)")
                continue
            yield self._score_one(text, ids, options)

    def encode(self, text: Any) -> list[int]:
        """`text`'s token ids, or `InputError` for a text PLL cannot score (empty, too long, holding the mask
        token, only special tokens)."""
        if not isinstance(text, str):
            raise InputError(f"a sequence must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError("the sequence is empty")
        limit = max(MAX_CHARACTERS, 100 * self.max_length)
        if len(text) > limit:  # tokenizing 100 MB took minutes and 15 GB only to find it too long
            raise InputError(f"the sequence is {len(text)} characters long; this model takes at most "
                             f"{self.max_length} tokens, and mlm-export does not tokenize more than {limit} "
                             "characters to find that out")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"the sequence is not valid Unicode ({exc.reason} at character {exc.start})") from exc
        ids: list[int] = self.tokenizer.encode(text).ids
        if len(ids) > self.max_length:
            raise InputError(f"the sequence is {len(ids)} tokens long (with special tokens); this model takes "
                             f"at most {self.max_length}")
        if self.mask_token_id in ids:
            raise InputError(f"the sequence holds the mask token {self.mask_token}; PLL masks each token itself")
        if not any(t not in self.unscored for t in ids):
            raise InputError("the sequence has no token to score (only special tokens)")
        return ids

    def _unknown(self, text: str) -> str:
        encoding = self.tokenizer.encode(text)
        spans = dict.fromkeys(text[a:b] for t, (a, b) in zip(encoding.ids, encoding.offsets) if t == self.unk_id)
        shown = ", ".join(repr(s[:20]) + ("..." if len(s) > 20 else "") for s in list(spans)[:5]) \
            + (", ..." if len(spans) > 5 else "")
        return f"the sequence has characters the vocabulary lacks ({shown})"

    def copies_per_run(self, length: int) -> int:
        """Masked copies of a `length`-token sequence per graph run, by default: ~1,000 tokens on ONNX
        Runtime's CPU provider, `DEFAULT_COPIES_PER_RUN` copies on the other backends. PLL of six AntiBERTy
        chains, int8 on Zen 4 with the head-rows graph, 2 threads: 8 copies per run 7.3 s, 16 7.5 s, 128 8.2 s."""
        if self.graph.provider == CPU:
            return max(1, min(DEFAULT_COPIES_PER_RUN, CPU_TOKENS_PER_RUN // max(1, length)))
        return DEFAULT_COPIES_PER_RUN

    def scored_positions(self, ids: Sequence[int]) -> list[int]:
        """The indices of `ids` that PLL scores: every token but the special ones (UNK is scored)."""
        return [i for i, t in enumerate(ids) if t not in self.unscored]

    def masked_log_probs(self, ids: Sequence[int], positions: Sequence[int], target_ids: np.ndarray | None = None,
                         exclude_special: bool = False, copies_per_run: int = DEFAULT_COPIES_PER_RUN,
                         advance: Callable[[int], None] | None = None) -> np.ndarray:
        """Each position of `positions` masked in its own copy of `ids`: the log-probabilities there of
        `target_ids` (`[1, T]`, the same for every copy; None: the token each copy hid), `[P, T]` (`[P, 1]`).
        Copies run `copies_per_run` at a time, each sequence alone (see the module's note on batching)."""
        row = np.asarray(ids, dtype=np.int64)
        width = 1 if target_ids is None else target_ids.shape[1]
        copies_per_run = max(1, int(copies_per_run))
        log_probs = np.empty((len(positions), width), dtype=np.float64)
        for start in range(0, len(positions), copies_per_run):
            chunk = list(positions[start : start + copies_per_run])
            copies = np.repeat(row[None, :], len(chunk), axis=0)
            copies[np.arange(len(chunk)), chunk] = self.mask_token_id
            targets = row[chunk][:, None] if target_ids is None else target_ids
            batch_index, values = self._run(copies, targets, exclude_special)
            if not np.array_equal(batch_index, np.arange(len(copies))):
                raise InputError("the graph found a different number of masks than were placed; the "
                                 "tokenizer and graph disagree on the mask token")
            log_probs[start : start + len(chunk)] = values
            if advance is not None:
                advance(len(chunk))
        return log_probs

    def unmasked_log_probs(self, ids: Sequence[int], positions: Sequence[int], target_ids: np.ndarray,
                           exclude_special: bool = False) -> np.ndarray:
        """One pass over `ids` as they are (`encode`d: no mask token): the log-probabilities of `target_ids`
        (`[1, T]`) at each of `positions` (distinct), `[P, T]` in their order; the head runs there through
        the graph's `score_positions`."""
        row = np.asarray(ids, dtype=np.int64)[None, :]
        asked = np.zeros(row.shape, dtype=bool)
        asked[0, list(positions)] = True
        batch_index, values = self._run(row, target_ids, exclude_special, asked)
        if len(batch_index) != len(positions):
            raise ArtifactError(f"the {self.graph.name} graph ran its head at {len(batch_index)} positions where "
                                f"{len(positions)} were asked for; run `mlm-export verify` on it")
        order = np.argsort(np.argsort(np.asarray(positions)))  # the graph's rows come in position order
        return values[order]

    def _score_one(self, text: str, ids: list[int], options: ScoreOptions) -> PLLScore:
        positions = self.scored_positions(ids)
        copies = options.copies_per_run or self.copies_per_run(len(ids))
        log_probs = self.masked_log_probs(ids, positions, None, options.exclude_special, copies)[:, 0]
        total = float(log_probs.sum())
        pll = total if options.reduction == "sum" else total / len(positions)
        per_token = tuple(float(v) for v in log_probs) if options.per_token else None
        unknown = sum(1 for p in positions if ids[p] == self.unk_id)
        warning = self.unknown_warning(text, unknown, len(positions)) \
            if unknown > options.max_unknown * len(positions) else None
        return PLLScore(text, pll, len(positions), per_token, unknown, warning)

    def unknown_warning(self, text: str, unknown: int, scored: int) -> str:
        """Counts, the characters, and the fix when upper-casing would help (protein models read upper case)."""
        message = f"{unknown} of {scored} scored tokens are unknown to the model: {self._unknown(text)}"
        if text != text.upper() and self.tokenizer.encode(text.upper()).ids.count(self.unk_id) < unknown:
            message += "; the model's vocabulary is upper case: upper-case the sequences"
        return message

    def _run(self, copies: np.ndarray, targets: np.ndarray, exclude_special: bool,
             score_positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The head's rows (`mask_batch_index`) and the targets' log-probabilities there, as float64."""
        feeds = self.graph.feeds(copies, top_k=1, target_ids=targets, exclude_special=exclude_special,
                                 score_positions=score_positions)
        batch_index, scored = self.graph.run(["mask_batch_index", "target_log_probs"], feeds)
        values = scored.astype(np.float64)
        if not np.isfinite(values).all():  # targets are ordinary tokens (UNK is refused with exclude_special)
            raise ArtifactError(f"the {self.graph.name} graph of {self.graph.artifact.path} produced non-finite "
                                "log-probabilities; run `mlm-export verify` on it")
        return batch_index, values
