"""Encoded rows out (`mlm-export encode`): JSON Lines (a file, or stdout), Parquet, or for embeddings a
`.npy` matrix (pooled) or an HDF5 file keyed by record id, one row per input row in input order.

JSON Lines and Parquet rows hold the input's kept columns, then ours (`VECTOR_FIELDS`): a sparse row
its term ids and weights (`indices`, `values`), an embed row its `embedding` (a vector, or one per
token with `--pooling none`). A `.npy` file is the float32 `[rows, hidden]` matrix, a row that could
not be encoded left NaN (the summary names its line). An `.h5` file holds one float32 dataset per
encoded record, named by its `id` column (FASTA's record id) or else its line number, with the line and
token count as attributes, as esm's `extract.py` keys its outputs by label; a repeated id ends the run.
Every file is a `publish.OutputFile`: it appears whole or not at all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import InputError
from ..publish import OutputFile, is_stream
from .inputs import pyarrow_parquet
from .outputs import RowFile, _jsonable

VECTOR_FIELDS = ("line", "text", "n_tokens", "indices", "values", "embedding", "variant", "provider", "error")
NPY_SUFFIX = ".npy"
H5_SUFFIXES = (".h5", ".hdf5")
_NPY_HEADER = 128  # bytes: room for any row count in a version 1.0 header, rewritten once the count is known


@dataclass(frozen=True)
class EncodedRow:
    """One output row: a sparse vector (`indices`, `values`) or an `embedding`, or the reason there is none."""

    line: int
    text: str
    n_tokens: int | None
    indices: np.ndarray | None = None
    values: np.ndarray | None = None
    embedding: np.ndarray | None = None
    error: str | None = None
    variant: str = ""
    provider: str = ""
    kept: tuple[Any, ...] = ()

    def to_dict(self, task: str, kept: Sequence[str] = ()) -> dict[str, Any]:
        row: dict[str, Any] = {name: _jsonable(value) for name, value in zip(kept, self.kept)}
        row.update({"line": self.line, "text": self.text, "n_tokens": self.n_tokens})
        if task == "sparse":
            row["indices"] = None if self.indices is None else self.indices.tolist()
            row["values"] = None if self.values is None else self.values.tolist()
        else:
            row["embedding"] = None if self.embedding is None else self.embedding.tolist()
        row.update({"variant": self.variant, "provider": self.provider})
        if self.error is not None:
            row["error"] = self.error
        return row


class VectorWriter(RowFile):
    """Writes encoded rows as JSON Lines, Parquet or `.npy`; a file appears under its name only when complete."""

    def __init__(self, path: Path | None, task: str, per_token: bool, hidden_size: int, force: bool = False,
                 stdout: IO[str] | None = None, source: Path | None = None, kept: Sequence[str] = (),
                 kept_types: Sequence[Any] = ()) -> None:
        self.path, self.task, self.per_token, self.hidden_size = path, task, per_token, hidden_size
        self.kept = tuple(kept)
        self.kept_types = tuple(kept_types) or (None,) * len(self.kept)
        suffix = "" if path is None else path.suffix.lower()
        self.kind = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
                     NPY_SUFFIX: "npy", **dict.fromkeys(H5_SUFFIXES, "h5")}.get(suffix)
        if path is None or (self.kind is None and is_stream(path)):
            self.kind = "jsonl"
        if self.kind is None:
            raise InputError(f"{path}: the output is .jsonl or .parquet" + (", or .npy or .h5 for embed"
                                                                           if task == "embed" else ""))
        if self.kind == "npy" and (task != "embed" or per_token):
            raise InputError(f"{path}: a .npy output holds one pooled vector per row: it is for --task embed with "
                             "--pooling mean or cls; write .jsonl or .parquet")
        if self.kind == "h5" and task != "embed":
            raise InputError(f"{path}: an .h5 output holds embeddings: it is for --task embed; write .jsonl or "
                             ".parquet")
        self.rows = 0
        self._keys: dict[str, int] = {}  # dataset name -> the line that took it
        self._pending: list[EncodedRow] = []
        if path is None:
            self._stream = stdout or sys.stdout
            return
        if source is not None and path.exists() and path.resolve() == source.resolve():
            raise InputError(f"{path} is the input; choose another --output")
        if self.kind in ("npy", "h5") and is_stream(path):
            raise InputError(f"{path} is a stream; a .{self.kind} file is written to a regular file")
        h5py: Any = _h5py() if self.kind == "h5" else None
        self._file = OutputFile(path, force=force)
        try:
            if self.kind == "jsonl":
                self._stream = self._file.open()
            elif self.kind == "npy":
                self._binary = self._file.open(binary=True)
                self._binary.write(_npy_header(0, hidden_size))
            elif self.kind == "h5":
                self._file.open(binary=True).close()  # created exclusively, then HDF5's own
                self._h5 = h5py.File(self._file.target, "w")
            else:
                pq = pyarrow_parquet("Parquet output")
                self._binary = self._file.open(binary=True)
                self._parquet = pq.ParquetWriter(self._binary, self._schema())
        except OSError as exc:
            self.abort()
            raise self._file.storage_error(exc) from exc
        except BaseException:
            self.abort()
            raise

    def write(self, rows: list[EncodedRow]) -> None:
        try:
            if self.kind == "jsonl":
                assert self._stream is not None
                self._stream.write("".join(json.dumps(r.to_dict(self.task, self.kept), allow_nan=False) + "\n"
                                           for r in rows))
                self._stream.flush()
            elif self.kind == "npy":
                assert self._binary is not None
                block = np.full((len(rows), self.hidden_size), np.nan, dtype="<f4")
                for i, row in enumerate(rows):
                    if row.embedding is not None:
                        block[i] = row.embedding
                self._binary.write(block.tobytes())
            elif self.kind == "h5":
                self._write_h5(rows)
            else:
                self._pending.extend(rows)
                if len(self._pending) >= 4096:
                    self._flush_parquet()
            self.rows += len(rows)
        except OSError as exc:
            if self._file is None:
                raise
            raise self._file.storage_error(exc) from exc

    def _write_h5(self, rows: list[EncodedRow]) -> None:
        """One dataset per encoded row, named by the record's id (else its line); a name taken twice, or one
        HDF5 cannot hold, ends the run rather than overwrite or nest."""
        id_at = self.kept.index("id") if "id" in self.kept else None
        for row in rows:
            if row.embedding is None:
                continue  # not encoded: the summary names its line
            key = str(row.line if id_at is None else row.kept[id_at])
            if not key or "/" in key or key == ".":
                raise InputError(f"line {row.line}: the id {key!r} cannot name an HDF5 dataset (empty, '.', or "
                                 "holding '/'); give plain ids, or write .jsonl or .parquet")
            if key in self._keys:
                raise InputError(f"line {row.line}: the id {key!r} is the one of line {self._keys[key]}; an .h5 "
                                 "output keys each embedding by its id, so ids must be unique (or write .jsonl, "
                                 ".parquet or .npy)")
            self._keys[key] = row.line
            dataset = self._h5.create_dataset(key, data=np.asarray(row.embedding, dtype=np.float32))
            dataset.attrs["line"] = row.line
            dataset.attrs["n_tokens"] = -1 if row.n_tokens is None else row.n_tokens
            if not self._h5.attrs.get("variant"):
                self._h5.attrs.update({"task": self.task, "variant": row.variant, "provider": row.provider,
                                       "per_token": self.per_token})

    def _schema(self) -> Any:
        import pyarrow as pa

        fields = [pa.field(name, pa.string() if kind is None else kind)
                  for name, kind in zip(self.kept, self.kept_types)]
        fields += [pa.field("line", pa.int64()), pa.field("text", pa.string()), pa.field("n_tokens", pa.int64())]
        if self.task == "sparse":
            fields += [pa.field("indices", pa.list_(pa.int64())), pa.field("values", pa.list_(pa.float32()))]
        elif self.per_token:
            fields.append(pa.field("embedding", pa.list_(pa.list_(pa.float32()))))
        else:
            fields.append(pa.field("embedding", pa.list_(pa.float32())))
        fields += [pa.field("variant", pa.string()), pa.field("provider", pa.string()), pa.field("error", pa.string())]
        return pa.schema(fields)

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        schema = self._schema()
        columns: dict[str, list[Any]] = {name: [r.kept[i] for r in self._pending] for i, name in enumerate(self.kept)}
        for name in schema.names[len(self.kept):]:
            values = [getattr(r, name) for r in self._pending]
            columns[name] = [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
        self._parquet.write_table(pa.Table.from_pydict(columns, schema=schema))
        self._pending = []

    def _finish(self) -> None:
        if self.kind == "parquet" and self._pending:
            self._flush_parquet()
        if self.kind == "npy":
            assert self._binary is not None
            self._binary.seek(0)
            self._binary.write(_npy_header(self.rows, self.hidden_size))


def _npy_header(rows: int, columns: int) -> bytes:
    """A `.npy` version 1.0 header for a float32 `[rows, columns]` C-order array, always _NPY_HEADER bytes long,
    so the row count can be written once the rows are."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {columns}), }}"
    room = _NPY_HEADER - 10  # magic (6) + version (2) + header length (2)
    if len(text) + 1 > room:
        raise InputError(f"{rows} x {columns} is too large for a .npy header of {_NPY_HEADER} bytes")
    body = text.ljust(room - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + body.encode("latin1")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise InputError("an .h5 output needs h5py: pip install 'mlm-export[hdf5]'") from exc
    return h5py
