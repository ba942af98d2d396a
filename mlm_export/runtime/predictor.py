"""Runtime: `OnnxMaskFiller`, a fill-mask predictor over an mlm-export artifact.

Only `tokenizers`, `numpy` and `onnxruntime` (or `openvino`, for the bf16 variant) are imported here,
never torch or transformers, so production apps install `mlm-export[cpu]`, `[gpu]` or `[openvino]`
and nothing heavier.
"""

from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, overload
from collections.abc import Iterable, Mapping, Sequence, Set

import numpy as np

from ..artifact import checked_bytes, checked_file, present_graphs, refuse_left_out, verified_path
from ..errors import ArtifactError, InputError, IntegrityError, ProviderError
from ..manifest import GraphEntry, Manifest, read_manifest
from .feeds import CONTROL_INPUTS, control_feeds
from .openvino import INSTALL_HINT, OPENVINO, cpu_has_bf16, openvino_usable
from .providers import CUDA, check_threads, create_session, requested_providers

if TYPE_CHECKING:
    from .scoring import PLLScore

# Best variant first, per provider. int8 is never picked for CUDA: its int8 ops fall back to the
# CPU there, an order of magnitude slower. bf16 is OpenVINO's, and the only variant OpenVINO can read.
_PREFERENCE = {"CPUExecutionProvider": ("int8", "fp32", "fp16"),
               CUDA: ("fp16", "fp32"),
               OPENVINO: ("bf16",)}
_OUTPUTS = ["mask_batch_index", "mask_position", "scores", "token_ids"]
_FEEDS = {"input_ids", "attention_mask", "token_type_ids", *CONTROL_INPUTS}  # what _run can build


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

    def __init__(self, directory: Path, manifest: Manifest, variant: str, session: Any,
                 tokenizer: Any, batch_size: int = 32, io_binding: bool | None = None) -> None:
        self.directory = directory
        self.manifest = manifest
        self.variant = variant
        self.graph: GraphEntry = manifest.graphs[variant]
        self.session = session
        self.provider: str = session.get_providers()[0]
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # IO binding hands inputs to the device once and lets ONNX Runtime allocate the outputs;
        # on the CPU it gains nothing, so by default it is used on CUDA only.
        self.io_binding = self.provider == CUDA if io_binding is None else io_binding
        if self.io_binding and self.provider == OPENVINO:
            raise InputError("io_binding is ONNX Runtime's; OpenVINO (the bf16 variant) has none: leave it unset")
        tok = manifest.tokenizer
        self.mask_token: str = tok.mask_token
        self.mask_token_id: int = tok.mask_token_id
        self.pad_token_id: int = tok.pad_token_id
        self.max_length: int = manifest.model.max_length
        self.vocab_size: int = manifest.model.vocab_size
        self._specials = frozenset(tok.every_special_id)
        self._token_strs: dict[int, str] = {}
        missing = [name for name in _OUTPUTS if name not in self.graph.output_names]
        unknown = [name for name in self.graph.input_names if name not in _FEEDS]
        if missing or unknown:
            raise ArtifactError(f"the {variant} graph of {directory} declares outputs {list(self.graph.output_names)} "
                                f"and inputs {list(self.graph.input_names)}; this predictor needs {_OUTPUTS} and "
                                f"can feed {sorted(_FEEDS)}. Re-export the artifact")

    @classmethod
    def from_pretrained(cls, directory: str | Path, variant: str | None = None,
                        providers: str | Sequence[str] = "auto", threads: int | None = None,
                        batch_size: int = 32, io_binding: bool | None = None,
                        public_key: Any = None) -> OnnxMaskFiller:
        """Open an artifact; the graph and tokenizer are checked against their sha256 first.

        `public_key` (a key file, PEM/OpenSSH bytes or a key object) makes the manifest's Ed25519
        signature mandatory: an unsigned or edited artifact raises `SignatureError`.
        """
        from tokenizers import Tokenizer

        if not isinstance(directory, (str, os.PathLike)):
            raise InputError(f"directory must be a path to an artifact, got {type(directory).__name__}")
        directory = Path(directory)
        check_threads(threads)
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch_size = int(batch_size)
        if variant is not None and not isinstance(variant, str):
            raise InputError(f"variant must be a name such as 'fp32' or None, got {variant!r}")
        full = read_manifest(directory, public_key=public_key)
        manifest = present_graphs(directory, full)  # a slim copy holds only some graphs
        variants = manifest.fill_mask_graphs
        refuse_left_out(directory, full, manifest, variant)
        if not variants:
            raise ArtifactError(f"{directory} has no fill-mask graph")
        if variant is not None and variant not in variants:
            raise ArtifactError(f"variant {variant!r} is not in {directory}; it has "
                                f"{', '.join(sorted(variants))}")
        primary = requested_providers(providers)[0]
        if isinstance(providers, str) and providers.lower() == "auto":
            primary = auto_provider(variants, primary, variant)
            providers = "openvino" if primary == OPENVINO else providers
        if variant == "int8" and primary == CUDA:
            raise ProviderError("the int8 variant is for the CPU provider: on CUDA its int8 ops fall "
                                "back to the CPU. Use variant='fp16' (or None) with CUDA, or "
                                "providers='cpu' with int8.")
        # Open the preferred variant for the requested providers; the session says where it landed.
        # The session and the tokenizer load the very bytes that were hashed: a file swapped on
        # disk between the check and the load cannot slip in.
        first = variant or _pick(variants, primary)
        check_runtime(directory, variants, first, primary)
        session = _open(directory, manifest, variants[first], providers, threads)
        landed = session.get_providers()[0]
        if variant is None and _pick(variants, landed) != first:
            first = _pick(variants, landed)
            session = _open(directory, manifest, variants[first], providers, threads)
        tokenizer_file = manifest.tokenizer.file
        tokenizer_json = checked_bytes(directory, manifest, tokenizer_file)
        try:
            tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as exc:  # not UTF-8, or the Rust side's bare Exception
            raise ArtifactError(f"{directory / tokenizer_file} cannot be read by `tokenizers` ({exc}); "
                                "re-export the artifact") from exc
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return cls(directory, manifest, first, session, tokenizer, batch_size, io_binding)

    def __repr__(self) -> str:
        return (f"OnnxMaskFiller({str(self.directory)!r}, variant={self.variant!r}, "
                f"provider={self.provider!r})")

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

        `batch_size` (texts per graph run) overrides the filler's for this call, as the pipeline's does.
        `tokenizer_kwargs` takes the pipeline's `truncation` and `max_length`; truncation that would cut
        a mask token raises `InputError` instead (the pipeline's own error is that no mask was found).
        """
        if not isinstance(return_sequence, (bool, np.bool_)):
            raise InputError(f"return_sequence must be True or False, got {return_sequence!r}")
        single = isinstance(inputs, str)
        texts = [inputs] if single else _as_text_list(inputs)
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
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths together
        for start in range(0, len(order), int(batch_size)):
            chunk = order[start : start + int(batch_size)]
            rows = [encoded[i] for i in chunk]
            for index, result in zip(chunk, self._run(rows, top_k, bool(return_sequence), target_ids)):
                results[index] = result
        # the pipeline's nesting: a string or a one-element list gives that text's result
        return results[0] if single or len(results) == 1 else results

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
    def score(self, texts: str, reduction: str = "sum", exclude_special: bool = False,
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
        `batch_size` is masked copies per graph run. A text that cannot be scored raises `InputError`.
        """
        from .scoring import DEFAULT_COPIES_PER_RUN, Scorer, ScoreOptions

        options = ScoreOptions(reduction, exclude_special, per_token,
                               DEFAULT_COPIES_PER_RUN if batch_size is None else batch_size)
        if not isinstance(texts, str):
            texts = _as_text_list(texts)
            if not texts:
                raise InputError("no input texts were given")
        return Scorer(self).score(texts, options)

    def require_scoring(self, what: str) -> None:
        """Scoring needs the graph's `target_ids` input, which artifacts before mlm-export 0.4 lack."""
        if "target_ids" not in self.graph.input_names:
            raise ArtifactError(f"the {self.variant} graph of {self.directory} has no scoring inputs, which "
                                f"{what} needs; re-export the artifact with this version of mlm-export")

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
        for i, text in enumerate(texts):
            if isinstance(text, (bytes, bytearray)):
                raise InputError(f"input {i} is bytes, not a string; decode it first, e.g. text.decode('utf-8')")
            if not isinstance(text, str):
                raise InputError(f"input {i} is a {type(text).__name__}, not a string")
            if not text.strip():
                raise InputError(f"input {i} is empty")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(f"input {i} is not valid Unicode ({exc.reason} at character "
                                 f"{exc.start}); it cannot be tokenized") from exc
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
        cut = self.tokenizer.post_process(encoding).ids
        if cut.count(self.mask_token_id) < row.count(self.mask_token_id):
            raise InputError(f"truncating input {index} to {length} tokens would cut a {self.mask_token} token; "
                             "raise max_length or shorten the text")
        return cut

    def _run(self, rows: list[list[int]], top_k: int, with_sequence: bool,
             target_ids: np.ndarray | None = None) -> list[list]:
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        names = self.graph.input_names  # fed exactly what the graph declares
        tokens = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}
        feeds = {name: tokens[name] for name in names if name in tokens}
        if target_ids is None:
            feeds |= control_feeds(names, top_k)
            batch_index, position, scores, token_ids = self.run_graph(_OUTPUTS, feeds)
        else:  # the pipeline's targets: full-vocabulary probabilities at the targets, the best top_k of them
            feeds |= control_feeds(names, 1, target_ids=target_ids)
            batch_index, position, log_probs = self.run_graph(["mask_batch_index", "mask_position",
                                                               "target_log_probs"], feeds)
            order = np.argsort(-log_probs, axis=1, kind="stable")[:, :top_k]
            scores = np.exp(np.take_along_axis(log_probs, order, axis=1))
            token_ids = target_ids[0][order]
        if not np.isfinite(scores).all():
            raise ArtifactError(f"the {self.variant} graph of {self.directory} produced non-finite scores (NaN "
                                "or inf): it is broken or was altered. Run `mlm-export verify` on it")
        per_row: list[list] = [[] for _ in rows]
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

    def run_graph(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session, turning ONNX Runtime's own errors (out of memory, a device fault) into
        `ProviderError`."""
        try:
            return self._run_session(outputs, feeds)
        except Exception as exc:  # onnxruntime's own error types: out of memory, a device fault
            raise ProviderError(f"ONNX Runtime failed running the {self.variant} graph on {self.provider} "
                                f"for a batch of {feeds['input_ids'].shape[0]} x {feeds['input_ids'].shape[1]} "
                                f"tokens: {exc}") from exc

    def _run_session(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.io_binding:
            return self.session.run(outputs, feeds)
        binding = self.session.io_binding()  # one per call: bindings are not shared across threads
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")  # small outputs: one copy back, sized by the graph
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

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


def _open(directory: Path, manifest: Manifest, graph: GraphEntry, providers: Any, threads: int | None) -> Any:
    """A session on the hash-checked graph. A single-file graph is read through the descriptor that was
    hashed; one with external data by its path (ONNX Runtime finds the data beside it), after both files
    matched their sha256."""
    if graph.data_file is None:
        with verified_path(directory, manifest, graph.file) as path:
            session = create_session(path, providers, threads, graph.head_input)
    else:  # two files: hashed, loaded by path, and refused if either changed meanwhile
        paths = [checked_file(directory, manifest, graph.data_file), checked_file(directory, manifest, graph.file)]
        before = [_stamp(p) for p in paths]
        session = create_session(str(paths[1]), providers, threads, graph.head_input)
        if [_stamp(p) for p in paths] != before:
            raise IntegrityError(f"{directory / graph.file} or its data changed while it was being loaded; "
                                 "load it again")
    actual = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if actual != (list(graph.input_names), list(graph.output_names)):
        raise ArtifactError(f"{directory / graph.file} takes {actual[0]} and gives {actual[1]}, but the "
                            f"manifest declares {list(graph.input_names)} and {list(graph.output_names)}: "
                            "re-export the artifact")
    return session


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def preferred_variant(manifest: Manifest, provider: str) -> str | None:
    """The fill-mask variant `from_pretrained(variant=None)` opens on `provider`; None without one
    (a slim copy that kept only the logits form)."""
    variants = manifest.fill_mask_graphs
    return _pick(variants, provider) if variants else None


def _as_text_list(inputs: object) -> list:
    """A list of the texts in `inputs`; refuses what only looks iterable (bytes, mappings, numbers)."""
    if isinstance(inputs, (bytes, bytearray)):
        raise InputError("inputs are bytes, not a string; decode them first, e.g. text.decode('utf-8')")
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    if isinstance(inputs, Sequence) or (isinstance(inputs, Iterable) and not isinstance(inputs, (Mapping, Set))):
        try:
            return list(inputs)
        except TypeError as exc:  # e.g. a 0-d numpy array: iterable in type, not in fact
            raise InputError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}") from exc
    raise InputError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}")


def _pick(variants: dict[str, GraphEntry], provider: str) -> str:
    for name in _PREFERENCE.get(provider, ("fp32",)):
        if name in variants:
            return name
    # no preferred one (a slim copy): any graph this runtime can read, bf16 only for OpenVINO
    readable = sorted(name for name, g in variants.items() if (g.precision == "bf16") == (provider == OPENVINO))
    return (readable or sorted(variants))[0]


def auto_provider(variants: dict[str, GraphEntry], primary: str | None = None, variant: str | None = None) -> str:
    """What `providers="auto"` runs: CUDA where ONNX Runtime sees a GPU; else OpenVINO where the artifact
    has a bf16 variant (and no other variant was asked for), openvino is installed and the CPU computes
    in bf16, since that variant ran batches of 32 1.4-1.65x faster than int8 (README, Benchmarks); else ONNX
    Runtime's CPU provider. `primary` is `requested_providers("auto")[0]`, when already known."""
    primary = primary or requested_providers("auto")[0]
    wanted = [variants[variant]] if variant in variants else list(variants.values())
    if primary != CUDA and any(g.precision == "bf16" for g in wanted) and openvino_usable() and cpu_has_bf16():
        return OPENVINO
    return primary


def check_runtime(directory: Path | str, variants: dict[str, GraphEntry], name: str, provider: str) -> None:
    """The bf16 variant runs only on OpenVINO, and OpenVINO runs only it (the other graphs hold ONNX
    Runtime's own ops): any other pairing is a ProviderError that says what to pass instead."""
    bf16 = variants[name].precision == "bf16"
    if bf16 and provider != OPENVINO:
        raise ProviderError(f"variant {name!r} is bf16, which runs on OpenVINO: pass providers='openvino' "
                            f"(--providers openvino; {INSTALL_HINT})")
    if not bf16 and provider == OPENVINO:
        others = sorted(n for n, g in variants.items() if g.precision == "bf16")
        fix = (f"use variant={others[0]!r} (or None) with it, or providers='cpu' for {name}" if others
               else "export with --bf16 for a variant it runs, or use providers='cpu'")
        raise ProviderError(f"providers='openvino' runs only the bf16 variant, not {name!r} (its graph holds ONNX "
                            f"Runtime's own ops), and {directory} has {', '.join(sorted(variants))}: {fix}")
