"""Mutation effects: zero-shot scores of sequence variants (mutants) from the fill-mask graph.

The three scores of Meier et al. 2021 (ESM-1v), with `lp` the log-softmax over the whole vocabulary,
as esm's `examples/variant-prediction/predict.py` computes it:

- **masked marginal**: the sum over mutated positions i of `lp(mt_i | wt, i masked) - lp(wt_i | same)`;
- **wild-type marginal**: the same differences, read from one unmasked pass over the wild type;
- **PLL delta**: `PLL(mutant) - PLL(wild type)` (sum over every scored token), one PLL per mutant.

A wild type's masked-marginal table costs one PLL: every position masked in its own copy, the graph
returning the log-probabilities of the whole alphabet there. Every mutant of that wild type, single or
multiple, is then a lookup. The table always covers every position, whatever the mutants: the cost is
known in advance, and a mutant's score does not depend on which other mutants share the call (int8's
activation scales would otherwise see a different batch).

A mutation is written `WT POSITION MT` (`A23G`; several joined by `:`, `A23G:K45R`), ProteinGym's and
esm's format. POSITION counts the sequence's own tokens from `offset` (1: the first residue is 1). On a
protein vocabulary (one token per residue) that is the residue; on a word or SMILES vocabulary it is the
token, and WT and MT are whole tokens of the vocabulary (`cat3dog`).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .scoring import DEFAULT_MAX_UNKNOWN, Scorer

METHODS = ("masked-marginal", "wt-marginal", "pll-delta")
COLUMNS = {"masked-marginal": "masked_marginal", "wt-marginal": "wt_marginal", "pll-delta": "pll_delta"}
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard amino acids: the default alphabet on a protein vocabulary
_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: a full-width or Arabic-Indic digit is not a position
MAX_SHOWN = 5  # invalid mutations named in one error
MAX_OFFSET = 10**9


@dataclass(frozen=True)
class Substitution:
    """One token replaced: `index` counts the sequence's own tokens from 0; `position` is as written."""

    index: int
    position: int
    wt: str
    mt: str


@dataclass(frozen=True)
class Mutant:
    """One variant of a wild type: its substitutions, at distinct positions, in the order written."""

    name: str
    substitutions: tuple[Substitution, ...]


class WildType:
    """A wild-type sequence as the model reads it: its token ids, and which of them are its own tokens
    (the positions a mutation counts), each with the text it stands for."""

    def __init__(self, scorer: Scorer, sequence: str) -> None:
        self.sequence = sequence
        self.ids: list[int] = scorer.encode(sequence)
        self.indices = scorer.scored_positions(self.ids)  # into ids: the sequence's own tokens
        tokenizer = scorer.tokenizer
        offsets = tokenizer.encode(sequence).offsets
        self.tokens = [tokenizer.id_to_token(self.ids[i]) for i in self.indices]
        self.texts = [sequence[slice(*offsets[i])] for i in self.indices]
        self.unknown = sum(1 for i in self.indices if self.ids[i] == scorer.unk_id)
        self.warning = scorer.unknown_warning(sequence, self.unknown, len(self.indices)) \
            if self.unknown > DEFAULT_MAX_UNKNOWN * len(self.indices) else None

    def __len__(self) -> int:
        return len(self.indices)

    def names(self, index: int) -> tuple[str, ...]:
        """How a mutation may name the wild-type token at `index`: as the vocabulary spells it, or as the
        text spells it (a character the vocabulary lacks)."""
        return (self.tokens[index], self.texts[index])


class MutationScorer:
    """Scores mutants of wild types on one fill-mask graph; holds no per-call state (thread-safe)."""

    def __init__(self, scorer: Scorer, alphabet: str | Sequence[str] | None = None) -> None:
        self.scorer = scorer
        self.tokenizer = scorer.tokenizer
        self.alphabet = self._alphabet(alphabet)
        self.alphabet_ids = {letter: self._token_id(letter) for letter in self.alphabet}

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None or token_id in self.scorer.unscored or token_id == self.scorer.unk_id:
            raise InputError(f"the alphabet's {token!r} is not an ordinary token of the model's vocabulary")
        return int(token_id)

    def _alphabet(self, alphabet: str | Sequence[str] | None) -> tuple[str, ...]:
        """The tokens a mutation may introduce: as given (a string is one letter per token), else on a
        character vocabulary (one token per residue) holding all 20 standard amino acids those, else every
        ordinary token (a cased English or byte-level vocabulary holds the 20 letters too: not a protein one)."""
        if alphabet is None:
            char_level = self.scorer.graph.artifact.manifest.tokenizer.char_level
            if char_level and all(self.tokenizer.token_to_id(a) is not None for a in AMINO_ACIDS):
                return tuple(AMINO_ACIDS)
            vocab = self.tokenizer.get_vocab()
            return tuple(sorted((t for t, i in vocab.items() if i not in self.scorer.unscored
                                 and i != self.scorer.unk_id), key=vocab.__getitem__))
        letters = list(alphabet) if isinstance(alphabet, str) else alphabet
        if not isinstance(letters, (list, tuple)) or not all(isinstance(a, str) and a for a in letters):
            raise InputError(f"alphabet must be a string of one-letter tokens or a list of tokens, got {alphabet!r}")
        if not letters:
            raise InputError("the alphabet is empty")
        return tuple(dict.fromkeys(letters))

    def wild_type(self, sequence: Any) -> WildType:
        """`sequence` read by the model; refused (`InputError`) as `score` refuses a sequence."""
        return WildType(self.scorer, sequence)

    # --- parsing: every mutation is checked before anything runs ---

    def parse(self, wild_type: WildType, mutants: Iterable[Any], offset: int = 1,
              labels: Sequence[str] | None = None) -> list[Mutant]:
        """Every mutant checked against `wild_type`; `InputError` names the first invalid ones (with
        `labels[i]`, e.g. "row 12", before each)."""
        check_offset(offset)
        parsed: list[Mutant] = []
        problems: list[str] = []
        for i, text in enumerate(mutants):
            try:
                parsed.append(self._mutant(wild_type, text, offset))
            except InputError as exc:
                where = f"{labels[i]}: " if labels is not None else ""
                problems.append(f"{where}{str(text)[:60]!r}: {exc}")
        if problems:
            shown = "; ".join(problems[:MAX_SHOWN]) + (f"; and {len(problems) - MAX_SHOWN} more"
                                                        if len(problems) > MAX_SHOWN else "")
            raise InputError(f"{len(problems)} invalid mutation{'s' if len(problems) > 1 else ''}: {shown}")
        return parsed

    def _mutant(self, wild_type: WildType, text: Any, offset: int) -> Mutant:
        if not isinstance(text, str):
            raise InputError(f"a mutation must be a string such as 'A23G', got {type(text).__name__}")
        name = text.strip()
        if not name:
            raise InputError("the mutation is empty")
        substitutions = tuple(self._substitution(wild_type, part.strip(), offset) for part in name.split(":"))
        seen: set[int] = set()
        for sub in substitutions:
            if sub.index in seen:
                raise InputError(f"position {sub.position} is mutated twice")
            seen.add(sub.index)
        return Mutant(name, substitutions)

    def _substitution(self, wild_type: WildType, part: str, offset: int) -> Substitution:
        """`WT POSITION MT`, where WT and MT may be tokens of several characters: each way of splitting the
        text around a number is tried, and exactly one must name an alphabet token after it."""
        if not part:
            raise InputError("a substitution is empty (two ':' in a row?)")
        splits = [(part[: m.start()], int(m.group()), part[m.end():]) for m in _NUMBER.finditer(part)
                  if m.start() > 0 and m.end() < len(part)]
        if not splits:
            raise InputError(f"{part!r} is not a substitution such as 'A23G' (wild type, position, mutant)")
        known = [s for s in splits if s[2] in self.alphabet_ids]
        if not known:
            mt = splits[-1][2]
            raise InputError(f"{mt!r} is not in the alphabet ({self._alphabet_text()})")
        if len(known) > 1:  # tokens with digits: the wild type at the position decides
            known = [s for s in known if 0 <= s[1] - offset < len(wild_type)
                     and s[0] in wild_type.names(s[1] - offset)] or known
        if len(known) > 1:
            raise InputError(f"{part!r} reads in several ways ({', '.join(f'{w}|{p}|{m}' for w, p, m in known)})")
        wt, position, mt = known[0]
        index = position - offset
        if not 0 <= index < len(wild_type):
            raise InputError(f"position {position} is outside the sequence (positions {offset} to "
                             f"{len(wild_type) - 1 + offset} with offset {offset})")
        if wt not in wild_type.names(index):
            raise InputError(f"the wild type has {wild_type.texts[index]!r} at position {position}, not {wt!r}")
        return Substitution(index, position, wt, mt)

    def _alphabet_text(self) -> str:
        if len(self.alphabet) <= 30:
            return "".join(self.alphabet) if all(len(a) == 1 for a in self.alphabet) else ", ".join(self.alphabet)
        return f"{len(self.alphabet)} tokens of the vocabulary"

    def saturation(self, wild_type: WildType, offset: int = 1) -> list[Mutant]:
        """Every single substitution of every position by every other alphabet token, position by position."""
        check_offset(offset)
        mutants = []
        for index in range(len(wild_type)):
            wt = wild_type.tokens[index]
            for mt in self.alphabet:
                if mt != wt:
                    position = index + offset
                    mutants.append(Mutant(f"{wild_type.texts[index]}{position}{mt}",
                                          (Substitution(index, position, wild_type.texts[index], mt),)))
        return mutants

    # --- scoring ---

    def score(self, wild_type: WildType, mutants: Sequence[Mutant], methods: Sequence[str],
              copies_per_run: int | None = None,
              advance: Callable[[int], None] | None = None) -> dict[str, list[float]]:
        """Per method, one score per mutant in order. `copies_per_run`: masked copies per graph run (None: the
        backend's best, `Scorer.copies_per_run`). `advance` counts masked copies as they run."""
        if copies_per_run is None:
            copies_per_run = self.scorer.copies_per_run(len(wild_type.ids))
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {unknown[0] if unknown else 'none'}")
        scores: dict[str, list[float]] = {}
        if {"masked-marginal", "wt-marginal"} & set(methods):
            targets, column = self._targets(wild_type, mutants)
            for method in ("masked-marginal", "wt-marginal"):
                if method not in methods:
                    continue
                if method == "masked-marginal":
                    table = self.scorer.masked_log_probs(wild_type.ids, wild_type.indices, targets, False,
                                                         copies_per_run, advance)
                else:
                    table = self.scorer.unmasked_log_probs(wild_type.ids, wild_type.indices, targets)
                scores[method] = [self._marginal(table, column, wild_type, m) for m in mutants]
        if "pll-delta" in methods:
            scores["pll-delta"] = self._pll_deltas(wild_type, mutants, copies_per_run, advance)
        return {m: scores[m] for m in methods}

    def _targets(self, wild_type: WildType, mutants: Sequence[Mutant]) -> tuple[np.ndarray, dict[int, int]]:
        """The ids the mutants introduce and every wild-type token's (a residue outside the alphabet, UNK),
        as one `[1, T]` row, and each id's column in it. The log-softmax is over the whole vocabulary
        whatever T is: on a word vocabulary the table stays [L, T], not [L, vocabulary]."""
        introduced = dict.fromkeys(self.alphabet_ids[s.mt] for m in mutants for s in m.substitutions)
        ids = list(dict.fromkeys(list(introduced) + [wild_type.ids[i] for i in wild_type.indices]))
        return np.array([ids], dtype=np.int64), {token: k for k, token in enumerate(ids)}

    def _marginal(self, table: np.ndarray, column: dict[int, int], wild_type: WildType, mutant: Mutant) -> float:
        total = 0.0
        for sub in mutant.substitutions:
            wt_id = wild_type.ids[wild_type.indices[sub.index]]
            total += table[sub.index, column[self.alphabet_ids[sub.mt]]] - table[sub.index, column[wt_id]]
        return float(total)

    def _pll_deltas(self, wild_type: WildType, mutants: Sequence[Mutant], copies_per_run: int,
                    advance: Callable[[int], None] | None) -> list[float]:
        """PLL(mutant) - PLL(wild type): a PLL per distinct mutant (L masked copies each), sums over every
        scored token with the softmax over the whole vocabulary."""
        base = self.pll(wild_type, None, copies_per_run, advance)
        done: dict[tuple[tuple[int, int], ...], float] = {}
        deltas = []
        for mutant in mutants:
            key = self.key(mutant)
            if key not in done:
                done[key] = self.pll(wild_type, mutant, copies_per_run, advance) - base
            deltas.append(done[key])
        return deltas

    def pll(self, wild_type: WildType, mutant: Mutant | None = None, copies_per_run: int | None = None,
            advance: Callable[[int], None] | None = None) -> float:
        """The PLL of the wild type, or of one mutant of it, over the wild type's own tokens (what PLL delta
        subtracts; the server runs them one at a time, so a long list cannot hold its worker for minutes)."""
        ids = list(wild_type.ids)
        for index, token in () if mutant is None else self.key(mutant):
            ids[wild_type.indices[index]] = token
        copies = self.scorer.copies_per_run(len(ids)) if copies_per_run is None else copies_per_run
        return float(self.scorer.masked_log_probs(ids, wild_type.indices, None, False, copies, advance).sum())

    def copies(self, wild_type: WildType, mutants: Sequence[Mutant], methods: Sequence[str]) -> int:
        """How many masked copies `score` runs: what a progress bar counts (wt-marginal's one pass is free)."""
        n = len(wild_type)
        total = n if "masked-marginal" in methods else 0
        if "pll-delta" in methods:
            total += n * (len({self.key(m) for m in mutants}) + 1)
        return total

    def key(self, mutant: Mutant) -> tuple[tuple[int, int], ...]:
        """What a mutant changes, whatever the order it was written in: its PLL is computed once."""
        return tuple(sorted((s.index, self.alphabet_ids[s.mt]) for s in mutant.substitutions))


def check_offset(offset: object) -> int:
    """The number of the first residue: 0 or more, since a position is written without a sign."""
    if not isinstance(offset, numbers.Integral) or isinstance(offset, bool):
        raise InputError(f"offset must be an integer, got {offset!r}")
    value = int(offset)
    if not 0 <= value <= MAX_OFFSET:
        raise InputError(f"offset must be from 0 to {MAX_OFFSET} (positions are written without a sign), "
                         f"got {value}")
    return value


def check_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    """`methods` as a tuple of known names, in order, without repeats."""
    names = [methods] if isinstance(methods, str) else list(methods) if isinstance(methods, (list, tuple)) else None
    if not names or not all(isinstance(m, str) for m in names):
        raise InputError(f"method must be one of {', '.join(METHODS)} (or a list of them), got {methods!r}")
    for name in names:
        if name not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return tuple(dict.fromkeys(names))
