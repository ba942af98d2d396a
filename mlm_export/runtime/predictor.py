"""Runtime: `OnnxMaskFiller`, a fill-mask predictor over an mlm-export artifact.

Only `tokenizers`, `numpy` and `onnxruntime` (or `openvino`, for the bf16 variant) are imported here,
never torch or transformers, so production apps install `mlm-export[cpu]`, `[gpu]` or `[openvino]`
and nothing heavier.
"""

from __future__ import annotations

import numbers
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, overload
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from ..artifact.handle import Artifact
from ..errors import ArtifactError, InputError
from ..manifest import Manifest
from ..variants import CPU, preferred
from .backends import Session
from .scoring import CPU_TOKENS_PER_RUN
from .graph import (
    CONTROL_INPUTS,
    TOKEN_INPUTS,
    LoadedGraph,
    artifact_from,
    check_batch_size,
    require_scoring,
    right_padded,
)
from .texts import as_text_list, check_texts
from .threads import check_threads

if TYPE_CHECKING:
    from .scoring import PLLScore, Scorer

_OUTPUTS = ["mask_batch_index", "mask_position", "scores", "token_ids"]
_FEEDS = {*TOKEN_INPUTS, *CONTROL_INPUTS}  # what LoadedGraph.feeds builds


class _Scored(TypedDict):
    score: float
    token: int
    token_str: str


class Candidate(_Scored, total=False):
    """One candidate for one mask, as transformers' fill-mask pipeline gives it."""

    sequence: str  # the text with this mask filled; left out with return_sequence=False


# per text: the candidates for its one mask, or a list of them per mask when it has several
TextResult = list[Candidate] | list[list[Candidate]]


class OnnxMaskFiller:
    """Fill mask tokens (`[MASK]`, `<mask>`: `filler.mask_token`) like transformers' fill-mask pipeline.

    Instances hold no per-call state, so one filler may serve many threads at once.
    """

    def __init__(self, graph: LoadedGraph, tokenizer: Any, batch_size: int = 32) -> None:
        self.graph = graph
        self.artifact: Artifact = graph.artifact
        self.directory: Path = graph.artifact.path
        self.manifest: Manifest = graph.artifact.present
        self.variant: str = graph.name
        self.provider: str = graph.provider
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        tok = self.manifest.tokenizer
        self.mask_token: str = tok.mask_token
        self.mask_token_id: int = tok.mask_token_id
        self.pad_token_id: int = tok.pad_token_id
        self.max_length: int = self.manifest.model.max_length
        self.vocab_size: int = self.manifest.model.vocab_size
        self._specials = frozenset(tok.every_special_id)
        self._token_strs: dict[int, str] = {}
        missing = [name for name in _OUTPUTS if name not in graph.output_names]
        unknown = [name for name in graph.input_names if name not in _FEEDS]
        if missing or unknown:
            raise ArtifactError(f"the {self.variant} graph of {self.directory} declares outputs "
                                f"{list(graph.output_names)} and inputs {list(graph.input_names)}; this predictor "
                                f"needs {_OUTPUTS} and can feed {sorted(_FEEDS)}. Re-export the artifact")

    @classmethod
    def from_pretrained(cls, directory: str | Path | Artifact, variant: str | None = None,
                        providers: str | Sequence[str] = "auto", threads: int | None = None,
                        batch_size: int = 32, io_binding: bool | None = None,
                        public_key: Any = None) -> OnnxMaskFiller:
        """Open an artifact; the graph and tokenizer are checked against their sha256 first.

        `directory` is an artifact's path (or an opened `Artifact`). `public_key` (a key file, PEM/OpenSSH
        bytes or a key object) makes the manifest's Ed25519 signature mandatory: an unsigned or edited
        artifact raises `SignatureError`.
        """
        artifact = artifact_from(directory, public_key)
        check_threads(threads)
        check_batch_size(batch_size)
        graph = LoadedGraph.open_task(artifact, "fill-mask", variant, providers, threads, io_binding)
        return cls(graph, artifact.tokenizer(), int(batch_size))

    def __repr__(self) -> str:
        return (f"OnnxMaskFiller({str(self.directory)!r}, variant={self.variant!r}, "
                f"provider={self.provider!r})")

    @property
    def session(self) -> Session:
        """The backend session the graph runs on (`self.graph.session`), for callers that time it bare."""
        return self.graph.session

    @property
    def io_binding(self) -> bool:
        """Whether runs bind inputs and outputs (ONNX Runtime's IO binding: on CUDA by default)."""
        return self.graph.io_binding

    def scorer(self) -> Scorer:
        """PLL scoring on this filler's graph (what `score` uses; batch engines keep one per worker)."""
        from .scoring import Scorer

        return Scorer(self.graph, self.tokenizer)

    @overload
    def __call__(self, inputs: str, top_k: int = 5, return_sequence: bool = True,
                 targets: str | Sequence[str] | None = None,
                 batch_size: int | None = None,
                 tokenizer_kwargs: Mapping[str, Any] | None = None) -> TextResult: ...
    @overload
    def __call__(self, inputs: Sequence[str], top_k: int = 5, return_sequence: bool = True,
                 targets: str | Sequence[str] | None = None,
                 batch_size: int | None = None,
                 tokenizer_kwargs: Mapping[str, Any] | None = None) -> TextResult | list[TextResult]: ...

    def __call__(self, inputs: str | Sequence[str], top_k: int = 5, return_sequence: bool = True,
                 targets: str | Sequence[str] | None = None,
                 batch_size: int | None = None,
                 tokenizer_kwargs: Mapping[str, Any] | None = None) -> TextResult | list[TextResult]:
        """Per text: a list of {score, token, token_str, sequence} for one mask, a list of such
        lists for several masks. A single string in gives that result; a list gives a list, except
        that a one-element list gives its element's result, as transformers' pipeline does.

        Each candidate's `sequence` is the whole text with that mask filled, so a call returns
        masks x top_k copies of its texts: 10 texts with 510 masks each at top_k=25 hold 127,500
        decoded sequences (several hundred MB). `return_sequence=False` leaves the key out.
        `top_k` above the vocabulary size returns the whole vocabulary, ranked.

        `targets` (a string or a list) restricts the candidates as transformers' pipeline does: a
        target outside the vocabulary is tokenized and its first token used, with a warning; scores
        stay probabilities over the whole vocabulary (not renormalised over the targets), and at most
        as many candidates as distinct targets come back.

        `batch_size` (texts per graph run, at most; on ONNX Runtime's CPU provider a run also stops at ~1,000
        padded tokens, where it computes fastest) overrides the filler's for this call, as the pipeline's does.
        `tokenizer_kwargs` takes the pipeline's `truncation` and `max_length`; truncation that would cut
        a mask token raises `InputError` instead (the pipeline's own error is that no mask was found).
        """
        if not isinstance(return_sequence, (bool, np.bool_)):
            raise InputError(f"return_sequence must be True or False, got {return_sequence!r}")
        single = isinstance(inputs, str)
        texts = [inputs] if single else as_text_list(inputs)
        if not texts:
            raise InputError("no input texts were given")
        if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        top_k = min(int(top_k), self.vocab_size)  # before any conversion to a fixed-width integer
        if batch_size is None:
            batch_size = self.batch_size
        elif not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        target_ids = None if targets is None else self.target_ids(targets)
        encoded = self._encode(texts, self._truncation(tokenizer_kwargs))
        results: list[Any] = [None] * len(texts)
        for chunk in self._runs(encoded, int(batch_size)):
            rows = [encoded[i] for i in chunk]
            for index, result in zip(chunk, self._run(rows, top_k, bool(return_sequence), target_ids)):
                results[index] = result
        # the pipeline's nesting: a string or a one-element list gives that text's result
        return results[0] if single or len(results) == 1 else results

    def _runs(self, encoded: list[list[int]], batch_size: int) -> Iterator[list[int]]:
        """Indices of the texts per graph run: similar lengths together, at most `batch_size` texts, and on ONNX
        Runtime's CPU provider at most ~1,000 padded tokens (`CPU_TOKENS_PER_RUN`; 120-residue chains: 87
        texts/s in runs of 8 against 80 in runs of 32, int8 on Zen 4), unless a text alone is longer."""
        budget = CPU_TOKENS_PER_RUN if self.provider == CPU else None
        chunk: list[int] = []
        for i in sorted(range(len(encoded)), key=lambda i: len(encoded[i])):
            full = len(chunk) == batch_size or (budget is not None and (len(chunk) + 1) * len(encoded[i]) > budget)
            if chunk and full:
                yield chunk
                chunk = []
            chunk.append(i)
        if chunk:
            yield chunk

    def target_ids(self, targets: str | Sequence[str]) -> np.ndarray:
        """The distinct token ids `targets` name, as transformers' fill-mask pipeline picks them: a
        vocabulary entry as is, anything else by the first token it encodes to (with a warning)."""
        self.require_scoring("targets=")
        if not isinstance(targets, (str, list, tuple, set, frozenset)):
            raise InputError(f"targets must be a string or a list of strings, got {type(targets).__name__}")
        names = [targets] if isinstance(targets, str) else list(targets)
        ids: list[int] = []
        for target in names:
            if not isinstance(target, str):
                raise InputError(f"targets must be strings, got {type(target).__name__}")
            token_id = self.tokenizer.token_to_id(target)
            if token_id is None:
                encoded = self.tokenizer.encode(target, add_special_tokens=False).ids
                if not encoded:
                    warnings.warn(f"the target {target[:40]!r} is not in the model's vocabulary and encodes to no "
                                  "token; it is ignored", UserWarning, stacklevel=3)
                    continue
                token_id = encoded[0]
                warnings.warn(f"the target {target[:40]!r} is not in the model's vocabulary; it is replaced by "
                              f"{self.tokenizer.id_to_token(token_id)!r}, its first token", UserWarning, stacklevel=3)
            if token_id not in ids:
                ids.append(token_id)
        if not ids:
            raise InputError("targets names no token of the vocabulary; give at least one target")
        return np.array([ids], dtype=np.int64)

    @overload
    def score(self, texts: str, reduction: str = "sum", exclude_special: bool = False,  # type: ignore[overload-overlap]
              per_token: bool = False, batch_size: int | None = None) -> PLLScore: ...
    @overload
    def score(self, texts: Sequence[str], reduction: str = "sum", exclude_special: bool = False,
              per_token: bool = False, batch_size: int | None = None) -> list[PLLScore]: ...

    def score(self, texts: str | Sequence[str], reduction: str = "sum", exclude_special: bool = False,
              per_token: bool = False, batch_size: int | None = None) -> PLLScore | list[PLLScore]:
        """Pseudo-log-likelihood of each text (a `PLLScore`; a list for a list): every non-special
        token masked in its own copy and scored by the log-probability of the original token.

        `reduction` "sum" (Salazar et al.) or "mean"; `exclude_special` takes the softmax without the
        special tokens (AntiBERTy's convention); `per_token` keeps each token's log-probability;
        `batch_size` is masked copies per graph run (None: ~1,000 tokens per run on ONNX Runtime's CPU
        provider, 128 copies elsewhere). A text that cannot be scored raises `InputError`.
        """
        from .scoring import ScoreOptions

        options = ScoreOptions(reduction, exclude_special, per_token, batch_size)
        if not isinstance(texts, str):
            texts = as_text_list(texts)
            if not texts:
                raise InputError("no input texts were given")
        return self.scorer().score(texts, options)

    def score_variants(self, wild_type: str, mutations: str | Sequence[str], method: str = "masked-marginal",
                       offset: int = 1, alphabet: str | Sequence[str] | None = None,
                       batch_size: int | None = None) -> list[float]:
        """Zero-shot effect of each mutation of `wild_type`, one float per mutation in order (higher: more
        likely under the model than the wild type).

        `mutations` are written `A23G`, several in one variant joined by `:` (`A23G:K45R`), positions
        counted from `offset` (1: the first residue is 1); a string is one variant. `method`:
        "masked-marginal" (one PLL of the wild type, whatever the number of mutations), "wt-marginal" (one
        pass; needs an artifact of format 6), or "pll-delta" (a PLL per distinct variant). `alphabet` is the
        letters a mutation may introduce (default: the 20 standard amino acids on a protein vocabulary,
        else every ordinary token). `batch_size` is masked copies per graph run (default: the backend's
        best). Every mutation is checked before anything runs: a wrong wild-type
        letter, a position outside the sequence, a letter outside the alphabet or a malformed mutation
        raises `InputError` naming it. See `mlm_export.runtime.mutations` for the formulas.
        """
        from .mutations import MutationScorer, check_methods

        if not isinstance(method, str):
            raise InputError(f"method must be one name such as 'masked-marginal', got {method!r}")
        (name,) = check_methods(method)
        if isinstance(mutations, str):
            mutations = [mutations]
        elif not isinstance(mutations, (list, tuple)):
            raise InputError(f"mutations must be a string or a list of strings, got {type(mutations).__name__}")
        if not mutations:
            raise InputError("no mutations were given")
        copies = None if batch_size is None else check_batch_size(batch_size)
        scorer = MutationScorer(self.scorer(), alphabet)
        wt = scorer.wild_type(wild_type)
        if wt.warning:  # a lower-case chain reads as all UNK to an upper-case vocabulary: its scores mean little
            warnings.warn(wt.warning, UserWarning, stacklevel=2)
        mutants = scorer.parse(wt, mutations, offset)
        return scorer.score(wt, mutants, [name], copies)[name]

    def require_scoring(self, what: str) -> None:
        """Scoring needs the graph's `target_ids` input, which artifacts before mlm-export 0.4 lack."""
        require_scoring(self.graph, what)

    def _truncation(self, kwargs: Mapping[str, Any] | None) -> int | None:
        """The length `tokenizer_kwargs` truncates to (special tokens included), or None."""
        if kwargs is None:
            return None
        if not isinstance(kwargs, Mapping):
            raise InputError(f"tokenizer_kwargs must be a dict, got {type(kwargs).__name__}")
        unknown = sorted(set(kwargs) - {"truncation", "max_length"})
        if unknown:
            raise InputError(f"tokenizer_kwargs {unknown} are not supported; the filler takes truncation and "
                             "max_length (padding is its own)")
        truncation = kwargs.get("truncation", False)
        if truncation not in (True, False, "longest_first", "only_first", "do_not_truncate"):
            raise InputError(f"tokenizer_kwargs truncation must be True, False or a truncation strategy, "
                             f"got {truncation!r}")
        if truncation in (False, "do_not_truncate"):
            return None
        length = kwargs.get("max_length", self.max_length)
        if not isinstance(length, numbers.Integral) or isinstance(length, bool) or length < 1:
            raise InputError(f"tokenizer_kwargs max_length must be a positive integer, got {length!r}")
        return int(length)

    def _encode(self, texts: list[str], truncate_to: int | None = None) -> list[list[int]]:
        check_texts(texts)
        encodings = self.tokenizer.encode_batch(texts)
        ids = [e.ids for e in encodings]
        if truncate_to is not None:
            ids = [self._truncated(i, row, texts[i], truncate_to) for i, row in enumerate(ids)]
        for i, row in enumerate(ids):
            if self.mask_token_id not in row:
                raise InputError(f"input {i} has no {self.mask_token} token: {texts[i][:60]!r}")
            if len(row) > self.max_length:
                raise InputError(f"input {i} is {len(row)} tokens long (with special tokens); this "
                                 f"model takes at most {self.max_length}. Shorten the text.")
        return ids

    def _truncated(self, index: int, row: list[int], text: str, length: int) -> list[int]:
        """`row` cut to `length` tokens as a transformers tokenizer truncates (the text's end goes, the
        special tokens stay), unless that would drop a mask token."""
        if len(row) <= length:
            return row
        room = length - self.tokenizer.num_special_tokens_to_add(False)
        if room < 1:
            raise InputError(f"tokenizer_kwargs max_length {length} leaves no room for text beside the special tokens")
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        encoding.truncate(room)
        cut: list[int] = self.tokenizer.post_process(encoding).ids
        if cut.count(self.mask_token_id) < row.count(self.mask_token_id):
            raise InputError(f"truncating input {index} to {length} tokens would cut a {self.mask_token} token; "
                             "raise max_length or shorten the text")
        return cut

    def _run(self, rows: list[list[int]], top_k: int, with_sequence: bool,
             target_ids: np.ndarray | None = None) -> list[Any]:
        input_ids, attention_mask = right_padded(rows, self.pad_token_id)
        if target_ids is None:
            feeds = self.graph.feeds(input_ids, attention_mask, top_k=top_k)
            batch_index, position, scores, token_ids = self.graph.run(_OUTPUTS, feeds)
        else:  # the pipeline's targets: full-vocabulary probabilities at the targets, the best top_k of them
            feeds = self.graph.feeds(input_ids, attention_mask, top_k=1, target_ids=target_ids)
            batch_index, position, log_probs = self.graph.run(["mask_batch_index", "mask_position",
                                                               "target_log_probs"], feeds)
            order = np.argsort(-log_probs, axis=1, kind="stable")[:, :top_k]
            scores = np.exp(np.take_along_axis(log_probs, order, axis=1))
            token_ids = target_ids[0][order]
        if not np.isfinite(scores).all():
            raise ArtifactError(f"the {self.variant} graph of {self.directory} produced non-finite scores (NaN "
                                "or inf): it is broken or was altered. Run `mlm-export verify` on it")
        per_row: list[list[Any]] = [[] for _ in rows]
        masks = [row.count(self.mask_token_id) for row in rows]
        for b, p, row_scores, row_ids in zip(batch_index, position, scores, token_ids):
            found = []
            several = masks[b] > 1
            for s, t in zip(row_scores.tolist(), row_ids.tolist()):
                candidate: Candidate = {"score": s, "token": t, "token_str": self._token_str(t)}
                if with_sequence:  # decode_batch was slower here: its thread pool, for a few short texts
                    candidate["sequence"] = self.tokenizer.decode(self._filled(rows[b], int(p), t, several),
                                                                  skip_special_tokens=not several)
                found.append(candidate)
            per_row[b].append(found)
        return [found[0] if len(found) == 1 else found for found in per_row]  # one mask: its list alone

    def _token_str(self, token: int) -> str:
        """A token decoded alone, as the pipeline's token_str; remembered, since top-k ids repeat."""
        text = self._token_strs.get(token)
        if text is None:
            text = self._token_strs[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return text

    def _filled(self, row: list[int], position: int, token: int, several: bool) -> list[int]:
        """The ids the pipeline decodes into `sequence`: padding out (a predicted pad too); with one mask,
        special tokens out as well (an unknown character's UNK, a predicted special too); with several,
        the other masks stay visible (CLS and SEP as well, as decode keeps them)."""
        filled = [token if i == position else t for i, t in enumerate(row)]
        return [t for t in filled if t != self.pad_token_id and (several or t not in self._specials)]


def preferred_variant(manifest: Manifest, provider: str) -> str | None:
    """The fill-mask variant the policy table prefers on `provider` (what `from_pretrained(variant=None,
    providers=...)` opens there, unless `providers="auto"` finds a tuning record, see `runtime.defaults`);
    None without one (a slim copy that kept only the logits form)."""
    variants = manifest.fill_mask_graphs
    return preferred(variants, provider) if variants else None
