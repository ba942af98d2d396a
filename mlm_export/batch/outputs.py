"""Scored rows out: JSON Lines (a file, or stdout) or Parquet, one row per input row in input order.

Each row holds the input's kept columns, then ours (`OUTPUT_FIELDS`). A file output is a
`publish.OutputFile`: it appears whole or not at all, and replaces an existing file only when asked.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import InputError
from ..publish import OutputFile, is_stream
from .inputs import pyarrow_parquet

OUTPUT_FIELDS = ("line", "text", "pll", "n_tokens", "unknown_tokens", "variant", "provider", "token_log_probs",
                 "error", "warning")


@dataclass(frozen=True)
class ScoredRow:
    """One output row: a score, or the reason there is none (`error`); `warning` flags a doubtful score."""

    line: int
    text: str
    pll: float | None
    n_tokens: int | None
    token_log_probs: tuple[float, ...] | None = None
    error: str | None = None
    unknown_tokens: int | None = None
    warning: str | None = None
    variant: str = ""
    provider: str = ""
    kept: tuple[Any, ...] = ()

    def to_dict(self, per_token: bool, kept: Sequence[str] = ()) -> dict[str, Any]:
        row: dict[str, Any] = {name: _jsonable(value) for name, value in zip(kept, self.kept)}
        row.update({"line": self.line, "text": self.text, "pll": self.pll, "n_tokens": self.n_tokens,
                    "unknown_tokens": self.unknown_tokens, "variant": self.variant, "provider": self.provider})
        if per_token:
            row["token_log_probs"] = None if self.token_log_probs is None else list(self.token_log_probs)
        if self.error is not None:
            row["error"] = self.error
        if self.warning is not None:
            row["warning"] = self.warning
        return row


def _jsonable(value: Any) -> Any:
    """A kept Parquet value as JSON holds it: dates as ISO 8601, decimals and bytes as text, NaN as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # a UUID, an extension type: its text


class RowFile:
    """What the row writers share: the output (an `OutputFile`, or stdout) and its open handles, published
    whole by `close` or removed by `abort`. A subclass writes what is pending in `_finish`."""

    _file: OutputFile | None = None
    _stream: IO[str] | None = None
    _binary: IO[bytes] | None = None  # the Parquet (or .npy) file under its writer, closed after it
    _parquet: Any = None
    _h5: Any = None

    def write(self, rows: list[Any]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Write what is pending (the last Parquet rows, a header) before the handles close."""

    def close(self) -> None:
        """Finish the file and publish it under its name."""
        try:
            self._finish()
            for writer in (self._parquet, self._h5):
                if writer is not None:
                    writer.close()
            self._parquet = self._h5 = None
            for handle in (self._binary, self._stream if self._file is not None else None):
                if handle is not None:
                    handle.close()
            self._binary = self._stream = None
        except OSError as exc:
            self.abort()
            if self._file is None:
                raise
            raise self._file.storage_error(exc) from exc
        if self._file is not None:
            self._file.publish()

    def abort(self) -> None:
        """Remove the partial file (ours alone: the temporary name)."""
        try:
            for writer in (self._parquet, self._h5):
                if writer is not None:
                    writer.close()
            for handle in (self._binary, self._stream if self._file is not None else None):
                if handle is not None:
                    handle.close()
        except OSError:
            pass  # closing a file on a full disk fails again; it is removed all the same
        finally:
            self._parquet = self._stream = self._binary = self._h5 = None
            if self._file is not None:
                self._file.discard()


class RowWriter(RowFile):
    """Writes scored rows to JSON Lines or Parquet; a file appears under its name only when complete."""

    def __init__(self, path: Path | None, per_token: bool, force: bool = False, stdout: IO[str] | None = None,
                 source: Path | None = None, kept: Sequence[str] = (), kept_types: Sequence[Any] = ()) -> None:
        self.path = path
        self.per_token = per_token
        self.kept = tuple(kept)
        self.kept_types = tuple(kept_types) or (None,) * len(self.kept)
        self.kind = "jsonl" if path is None or path.suffix.lower() in (".jsonl", ".json", ".ndjson") else None
        if path is not None and path.suffix.lower() in (".parquet", ".pq"):
            self.kind = "parquet"
        if self.kind is None and path is not None and is_stream(path):
            self.kind = "jsonl"  # /dev/stdout, a named pipe: JSON Lines, as on stdout
        if self.kind is None:
            raise InputError(f"{path}: the output is .jsonl or .parquet")
        self._pending: list[ScoredRow] = []
        if path is None:
            self._stream = stdout or sys.stdout
            return
        if source is not None and path.exists() and os.path.samefile(path, source):
            raise InputError(f"{path} is the input; choose another --output")
        self._file = OutputFile(path, force=force)
        if self.kind == "jsonl":
            self._stream = self._file.open()
        else:  # opened now: an unwritable folder or a missing pyarrow is found before any scoring
            pq = pyarrow_parquet("Parquet output")
            self._binary = self._file.open(binary=True)
            try:
                self._parquet = pq.ParquetWriter(self._binary, self._schema())
            except OSError as exc:
                self.abort()
                raise self._file.storage_error(exc) from exc
            except BaseException:  # a kept column Parquet cannot hold: no temporary file is left
                self.abort()
                raise

    def write(self, rows: list[ScoredRow]) -> None:
        try:
            if self.kind == "jsonl":
                assert self._stream is not None
                self._stream.write("".join(json.dumps(r.to_dict(self.per_token, self.kept), allow_nan=False) + "\n"
                                           for r in rows))
                self._stream.flush()
            else:
                self._pending.extend(rows)
                if len(self._pending) >= 8192:
                    self._flush_parquet()
        except OSError as exc:  # no space, a read-only remount, a quota: the user's to fix
            if self._file is None:
                raise
            raise self._file.storage_error(exc) from exc

    def _schema(self) -> Any:
        import pyarrow as pa

        fields = [pa.field(name, pa.string() if kind is None else kind)
                  for name, kind in zip(self.kept, self.kept_types)]
        fields += [pa.field("line", pa.int64()), pa.field("text", pa.string()), pa.field("pll", pa.float64()),
                   pa.field("n_tokens", pa.int64()), pa.field("unknown_tokens", pa.int64()),
                   pa.field("variant", pa.string()), pa.field("provider", pa.string()),
                   pa.field("error", pa.string()), pa.field("warning", pa.string())]
        if self.per_token:
            fields.append(pa.field("token_log_probs", pa.list_(pa.float64())))
        return pa.schema(fields)

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        schema = self._schema()
        columns: dict[str, list[Any]] = {name: [r.kept[i] for r in self._pending] for i, name in enumerate(self.kept)}
        for name in schema.names[len(self.kept):]:
            columns[name] = [getattr(r, name) for r in self._pending]
        if self.per_token:
            columns["token_log_probs"] = [None if v is None else list(v) for v in columns["token_log_probs"]]
        self._parquet.write_table(pa.Table.from_pydict(columns, schema=schema))
        self._pending = []

    def _finish(self) -> None:
        if self.kind == "parquet" and self._pending:
            self._flush_parquet()
