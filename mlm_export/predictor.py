"""Runtime: `OnnxMaskFiller`, a fill-mask predictor over an mlm-export artifact.

Only `tokenizers`, `numpy` and `onnxruntime` are imported here, never torch or transformers, so
production apps install `mlm-export[cpu]` or `[gpu]` and nothing heavier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

from .artifact import checked_file, read_manifest
from .errors import ArtifactError, InputError, ProviderError
from .providers import CUDA, create_session, requested_providers

# Best variant first, per provider. int8 is never picked for CUDA: its int8 ops fall back to the
# CPU there, an order of magnitude slower.
_PREFERENCE = {"CPUExecutionProvider": ("int8", "fp32", "fp16"),
               CUDA: ("fp16", "fp32")}
_OUTPUTS = ["mask_batch_index", "mask_position", "scores", "token_ids"]


class OnnxMaskFiller:
    """Fill `[MASK]` tokens like transformers' fill-mask pipeline, from an ONNX artifact.

    Instances hold no per-call state, so one filler may serve many threads at once.
    """

    def __init__(self, directory: Path, manifest: dict, variant: str, session: Any,
                 tokenizer: Any, batch_size: int = 32, io_binding: bool | None = None) -> None:
        self.directory = directory
        self.manifest = manifest
        self.variant = variant
        self.session = session
        self.provider: str = session.get_providers()[0]
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # IO binding hands inputs to the device once and lets ONNX Runtime allocate the outputs;
        # on the CPU it gains nothing, so by default it is used on CUDA only.
        self.io_binding = self.provider == CUDA if io_binding is None else io_binding
        tok = manifest["tokenizer"]
        self.mask_token: str = tok["mask_token"]
        self.mask_token_id: int = tok["mask_token_id"]
        self.pad_token_id: int = tok["pad_token_id"]
        self.max_length: int = manifest["model"]["max_length"]
        self._strip = {tok["cls_token_id"], tok["sep_token_id"], tok["pad_token_id"]}

    @classmethod
    def from_pretrained(cls, directory: str | Path, variant: str | None = None,
                        providers: str | Sequence[str] = "auto", threads: int | None = None,
                        batch_size: int = 32, io_binding: bool | None = None) -> OnnxMaskFiller:
        """Open an artifact; the graph and tokenizer are checked against their sha256 first."""
        from tokenizers import Tokenizer

        directory = Path(directory)
        manifest = read_manifest(directory)
        variants = _fill_mask_graphs(manifest)
        if not variants:
            raise ArtifactError(f"{directory} has no fill-mask graph")
        if variant is not None and variant not in variants:
            raise ArtifactError(f"variant {variant!r} is not in {directory}; it has "
                                f"{', '.join(sorted(variants))}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        primary = requested_providers(providers)[0]
        if variant == "int8" and primary == CUDA:
            raise ProviderError("the int8 variant is for the CPU provider: on CUDA its int8 ops fall "
                                "back to the CPU. Use variant='fp16' (or None) with CUDA, or "
                                "providers='cpu' with int8.")
        # Open the preferred variant for the requested providers; the session says where it landed.
        first = variant or _pick(variants, primary)
        session = create_session(str(checked_file(directory, manifest, variants[first]["file"])),
                                 providers, threads)
        landed = session.get_providers()[0]
        if variant is None and _pick(variants, landed) != first:
            first = _pick(variants, landed)
            session = create_session(str(checked_file(directory, manifest, variants[first]["file"])),
                                     providers, threads)
        tokenizer = Tokenizer.from_file(str(checked_file(directory, manifest, "tokenizer.json")))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return cls(directory, manifest, first, session, tokenizer, batch_size, io_binding)

    def __repr__(self) -> str:
        return (f"OnnxMaskFiller({str(self.directory)!r}, variant={self.variant!r}, "
                f"provider={self.provider!r})")

    def __call__(self, inputs: str | Sequence[str], top_k: int = 5) -> list:
        """Per text: a list of {score, token, token_str, sequence} for one mask, a list of such
        lists for several masks. A single string in gives that result; a list gives a list."""
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts:
            raise InputError("no input texts were given")
        if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        encoded = self._encode(texts)
        results: list[Any] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths together
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for index, result in zip(chunk, self._run([encoded[i] for i in chunk], int(top_k))):
                results[index] = result
        return results[0] if single else results

    def _encode(self, texts: list[str]) -> list[list[int]]:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"input {i} is a {type(text).__name__}, not a string")
            if not text.strip():
                raise InputError(f"input {i} is empty")
        encodings = self.tokenizer.encode_batch(texts)
        ids = [e.ids for e in encodings]
        for i, row in enumerate(ids):
            if self.mask_token_id not in row:
                raise InputError(f"input {i} has no {self.mask_token} token: {texts[i][:60]!r}")
            if len(row) > self.max_length:
                raise InputError(f"input {i} is {len(row)} tokens long (with special tokens); this "
                                 f"model takes at most {self.max_length}. Shorten the text.")
        return ids

    def _run(self, rows: list[list[int]], top_k: int) -> list[list]:
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": np.zeros_like(input_ids), "top_k": np.array(top_k, dtype=np.int64)}
        batch_index, position, scores, token_ids = self._infer(feeds)
        per_row: list[list] = [[] for _ in rows]
        for b, p, row_scores, row_ids in zip(batch_index, position, scores, token_ids):
            per_row[b].append([self._candidate(rows[b], int(p), float(s), int(t))
                               for s, t in zip(row_scores, row_ids)])
        return [masks[0] if len(masks) == 1 else masks for masks in per_row]

    def _infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.io_binding:
            return self.session.run(_OUTPUTS, feeds)
        binding = self.session.io_binding()  # one per call: bindings are not shared across threads
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in _OUTPUTS:
            binding.bind_output(name, "cpu")  # small outputs: one copy back, sized by the graph
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _candidate(self, row: list[int], position: int, score: float, token: int) -> dict:
        filled = [token if i == position else t for i, t in enumerate(row) if t not in self._strip]
        return {"score": score, "token": token, "token_str": self.tokenizer.decode([token], skip_special_tokens=False),
                "sequence": self.tokenizer.decode(filled, skip_special_tokens=False)}


def preferred_variant(manifest: dict, provider: str) -> str:
    """The fill-mask variant `from_pretrained(variant=None)` opens on `provider`."""
    return _pick(_fill_mask_graphs(manifest), provider)


def _fill_mask_graphs(manifest: dict) -> dict[str, dict]:
    return {name: g for name, g in manifest["graphs"].items() if g["form"] == "fill-mask"}


def _pick(variants: dict, provider: str) -> str:
    for name in _PREFERENCE.get(provider, ("fp32",)):
        if name in variants:
            return name
    return sorted(variants)[0]
