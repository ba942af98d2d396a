"""Probe data for parity: synthetic shapes that break exporters, and realistic texts for accuracy gates.

Synthetic probes (random tokens) check the plumbing at every shape: 1 token of text to the maximum
length, right padding, 0..n masks per row, every token type. Realistic texts carry the accuracy
gates of reduced precisions: a trained model's predictions on random tokens are flat and their
top-k order is noise. mlm-export ships two realistic sets; an export may bring its own
(`--probe-file`), which then travels inside the artifact as `probes.txt`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ConfigError
from ..manifest import Manifest

_SEED = 20261126
ARTIFACT_PROBES = "probes.txt"  # a user's realistic texts, stored in the artifact by export
ARTIFACT_SET = "artifact"       # the probe_set name that points at them


@dataclass(frozen=True)
class ProbeBatch:
    """One right-padded batch; masks are already placed in input_ids."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    label: str
    probe_set: str  # "shapes" for synthetic probes; otherwise the realistic text set's name

    def feeds(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """The inputs a graph (or the PyTorch model) takes, by name."""
        available = {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                     "token_type_ids": self.token_type_ids}
        return {name: available[name] for name in names}


@dataclass(frozen=True)
class ProbeSpec:
    """Facts about the model that probes are built from (read from the manifest)."""

    vocab_size: int
    max_length: int
    type_vocab_size: int  # 0 or 1: every token type is 0
    mask_id: int
    pad_id: int
    cls_id: int
    sep_id: int
    unk_id: int
    special_ids: tuple[int, ...]

    @classmethod
    def of(cls, manifest: Manifest) -> ProbeSpec:
        m, ids = manifest.model, manifest.tokenizer.special_ids
        return cls(m.vocab_size, m.max_length, m.type_vocab_size, ids["mask"], ids["pad"], ids["cls"], ids["sep"],
                   ids["unk"], manifest.tokenizer.every_special_id)


def _batch(rows: list[list[int]], types: list[list[int]], pad_id: int, label: str,
           probe_set: str) -> ProbeBatch:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    tt = np.zeros_like(ids)
    for i, (row, typ) in enumerate(zip(rows, types)):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        tt[i, : len(row)] = typ
    return ProbeBatch(ids, mask, tt, label, probe_set)


def synthetic_probes(spec: ProbeSpec) -> list[ProbeBatch]:
    """Shapes that break exporters: 1 token of text to the maximum length, padding, 0..n masks."""
    rng = np.random.default_rng(_SEED)
    normal = np.setdiff1d(np.arange(spec.vocab_size), np.array(spec.special_ids))
    longest = spec.max_length
    cases = [
        ("one token", [3], [1]),
        ("short", [16], [2]),
        ("padded batch", [5, 12, 33, min(64, longest)], [1, 2, 5, 10]),
        ("max length", [longest, max(3, longest // 2)], [max(8, longest // 40), 4]),
        ("zero-mask row", [20, 9, min(40, longest)], [3, 0, 4]),
        ("many masks", [min(32, longest)] * 4, [6] * 4),
    ]
    batches = []
    for label, lengths, mask_counts in cases:
        rows, types = [], []
        for i, (length, n_masks) in enumerate(zip(lengths, mask_counts)):
            body = rng.choice(normal, size=length - 2).tolist()
            places = rng.choice(length - 2, size=min(n_masks, length - 2), replace=False)
            for p in places:
                body[p] = spec.mask_id
            rows.append([spec.cls_id, *body, spec.sep_id])
            second = spec.type_vocab_size > 1 and i % 2 == 1
            half = length // 2
            types.append([0] * half + [1 if second else 0] * (length - half))
        batches.append(_batch(rows, types, spec.pad_id, label, "shapes"))
    return batches


PACKAGED_SETS = ("antibody", "english", "reactions")


def packaged_texts(name: str) -> list[str]:
    """Realistic probe texts shipped in mlm_export/probes/ (antibody: the sequence column)."""
    if name not in PACKAGED_SETS:
        raise ArtifactError(f"no packaged probe set is called {name!r}; mlm-export has {', '.join(PACKAGED_SETS)}")
    text = resources.files("mlm_export.probes").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [line.split("\t")[-1] for line in lines]


def read_probe_file(path: Path | str) -> list[str]:
    """A user's realistic probe texts: one per non-blank line of a UTF-8 file."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the probe file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the probe file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"the probe file {path} has no texts (one per line)")
    return texts


def antibody_sequences() -> list[str]:
    return packaged_texts("antibody")


REALISTIC_POSITIONS = 360  # enough masked positions for a 99% gate to mean something


def text_probes(spec: ProbeSpec, tokenizer: Any, texts: Iterable[str], probe_set: str,
                batch_size: int = 32) -> list[ProbeBatch]:
    """One [MASK] per row, the way fill-mask and pseudo-log-likelihood scoring use a model.

    Every `stride`-th token of each text is masked in its own row, the stride chosen to give
    about REALISTIC_POSITIONS masked positions in all.
    """
    encoded = [tokenizer.encode(text).ids[: spec.max_length] for text in texts]
    maskable = sum(1 for ids in encoded for t in ids if t not in spec.special_ids)
    stride = max(1, maskable // REALISTIC_POSITIONS)
    rows = []
    for j, ids in enumerate(encoded):
        for i, token in enumerate(ids):
            if token not in spec.special_ids and (i + j) % stride == 0:
                rows.append(ids[:i] + [spec.mask_id] + ids[i + 1 :])
    return [_batch(rows[i : i + batch_size], [[0] * len(r) for r in rows[i : i + batch_size]],
                   spec.pad_id, f"{probe_set} {i // batch_size}", probe_set)
            for i in range(0, len(rows), batch_size)]


CALIBRATION_ROWS = 64  # every AntiBERTy chain, a few rows each


def calibration_rows(batches: list[ProbeBatch], rows: int = CALIBRATION_ROWS) -> list[ProbeBatch]:
    """About `rows` single rows, unpadded, spread evenly over the realistic probes (over the synthetic
    shapes where there are none): what int8 recipes that measure activations run on."""
    pool = [(batch, i) for batch in batches if batch.probe_set != "shapes" for i in range(len(batch.input_ids))]
    pool = pool or [(batch, i) for batch in batches for i in range(len(batch.input_ids))]
    chosen = []
    picks = sorted(set(np.linspace(0, len(pool) - 1, min(rows, len(pool))).round().astype(int))) if pool else []
    for batch, i in (pool[k] for k in picks):  # evenly over every text, first to last
        n = int(batch.attention_mask[i].sum())  # right-padded
        chosen.append(ProbeBatch(batch.input_ids[i : i + 1, :n], batch.attention_mask[i : i + 1, :n],
                                 batch.token_type_ids[i : i + 1, :n], f"{batch.label} row {i}", batch.probe_set))
    return chosen


def choose_probe_set(spec: ProbeSpec, tokenizer: Any) -> str | None:
    """The packaged text set this tokenizer reads best, if it reads any.

    A set qualifies with under 2% unknown tokens. Byte-level BPE never produces one, so among the
    qualifying sets the one read in the fewest tokens per character wins: a vocabulary learnt on a
    domain reads that domain in long pieces (English words), and other text in short ones.
    """
    best, best_chars_per_token = None, 0.0
    for name in PACKAGED_SETS:
        texts = packaged_texts(name)
        ids = [t for text in texts for t in tokenizer.encode(text).ids if t not in spec.special_ids or t == spec.unk_id]
        if not ids or sum(t == spec.unk_id for t in ids) / len(ids) >= 0.02:
            continue
        chars_per_token = sum(len("".join(text.split())) for text in texts) / len(ids)
        if chars_per_token > best_chars_per_token:
            best, best_chars_per_token = name, chars_per_token
    return best


def build_probes(manifest: Manifest, tokenizer: Any, probe_texts: list[str] | None = None,
                 directory: Path | None = None, texts_name: str = "user texts") -> list[ProbeBatch]:
    """Synthetic probes, plus the realistic texts: the caller's, else the artifact's own set."""
    spec = ProbeSpec.of(manifest)
    batches = synthetic_probes(spec)
    if probe_texts:
        batches += text_probes(spec, tokenizer, probe_texts, texts_name)
    elif manifest.probe_set == ARTIFACT_SET:
        if directory is None:
            raise ArtifactError("the artifact's probe texts are needed, but no artifact directory was given")
        from ..artifact.files import checked_bytes

        texts = [line for line in checked_bytes(directory, manifest, ARTIFACT_PROBES).decode("utf-8").splitlines()
                 if line.strip()]
        batches += text_probes(spec, tokenizer, texts, ARTIFACT_SET)
    elif manifest.probe_set:
        batches += text_probes(spec, tokenizer, packaged_texts(manifest.probe_set), manifest.probe_set)
    return batches
