"""Sequences in, scores out: the file formats of batch scoring.

Inputs are read as a stream, so the local engine never holds a file of millions of sequences whole
(the Ray engine's driver does, to ship it to the actors):
- a text file, one sequence per line (`line` is the line number, as `wc -l` counts);
- CSV (`line` is the line the record ends on) or Parquet (`line` is the 1-based row) with a column.

Outputs are JSON Lines (a file, or stdout) or Parquet, one row per input row in input order. A file
output is written under a temporary name beside it and renamed into place only when complete, so
an interrupted run leaves no half-written file, and an existing file is replaced only when asked.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import ArtifactError, InputError, StorageError

TEXT_SUFFIXES = (".txt", ".seq", ".text", "")
DEFAULT_COLUMNS = ("text", "sequence")


@dataclass(frozen=True)
class InputRow:
    line: int
    text: str


@dataclass(frozen=True)
class ScoredRow:
    """One output row: a score, or the reason there is none (`error`)."""

    line: int
    text: str
    pll: float | None
    n_tokens: int | None
    token_log_probs: tuple[float, ...] | None = None
    error: str | None = None

    def to_dict(self, per_token: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"line": self.line, "text": self.text, "pll": self.pll, "n_tokens": self.n_tokens}
        if per_token:
            row["token_log_probs"] = None if self.token_log_probs is None else list(self.token_log_probs)
        if self.error is not None:
            row["error"] = self.error
        return row


def input_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise InputError(f"{path}: unknown input format {suffix!r}; give a text file (one sequence per line, "
                     ".txt), a .csv or a .parquet file")


def read_rows(path: Path, column: str | None = None) -> Iterator[InputRow]:
    """Stream the sequences of `path`; the file is checked (exists, column present) before the first row."""
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    kind = input_format(path)
    if kind == "text":
        if column is not None:
            raise InputError("--column applies to CSV and Parquet inputs; a text file holds one sequence per line")
        return _text_rows(path)
    if kind == "csv":
        return _csv_rows(path, column)
    return _parquet_rows(path, column)


def _text_rows(path: Path) -> Iterator[InputRow]:
    """Lines end at \n (\r\n too); a lone \r stays inside its line, so line numbers match `wc -l`."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}, line {number}: not UTF-8 text ({exc.reason} at byte {exc.start} of "
                                 "the line)") from exc
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark, as some editors write
            yield InputRow(number, line.removesuffix("\n").removesuffix("\r"))


def _pick_column(path: Path, columns: list[str], column: str | None) -> str:
    if column is not None:
        if column not in columns:
            raise InputError(f"{path} has no column {column!r}; it has {', '.join(map(repr, columns))}")
        name = column
    else:
        name = next((n for n in DEFAULT_COLUMNS if n in columns), "")
        if not name:
            raise InputError(f"{path} has columns {', '.join(map(repr, columns))}; name the one with the "
                             "sequences with --column")
    if columns.count(name) > 1:
        raise InputError(f"{path} has {columns.count(name)} columns named {name!r}; rename them")
    return name


def _csv_rows(path: Path, column: str | None) -> Iterator[InputRow]:
    handle = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 (closed by the generator)
    reader = csv.reader(handle, strict=True)  # a stray quote is an error, not rows merged into one
    try:
        header = next(reader, None)
    except (UnicodeDecodeError, csv.Error) as exc:
        handle.close()
        raise InputError(f"{path}: cannot read the CSV header ({exc})") from exc
    if header is None:
        handle.close()
        raise InputError(f"{path} is empty; a CSV input needs a header row")
    index = header.index(_pick_column(path, header, column))

    def rows() -> Iterator[InputRow]:
        with handle:
            try:
                for record in reader:
                    if len(record) != len(header):  # a shifted row would score the wrong field
                        raise InputError(f"{path}, line {reader.line_num}: {len(record)} fields, the header has "
                                         f"{len(header)}")
                    yield InputRow(reader.line_num, record[index])
            except (UnicodeDecodeError, csv.Error) as exc:
                raise InputError(f"{path}, line {reader.line_num}: cannot read the CSV ({exc})") from exc

    return rows()


def _open_parquet(path: Path, column: str | None) -> tuple[Any, str]:
    import pyarrow as pa

    pq = _pyarrow_parquet("Parquet input")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        raise InputError(f"{path} cannot be read as Parquet ({exc})") from exc
    schema = parquet.schema_arrow
    name = _pick_column(path, schema.names, column)
    kind = schema.field(name).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"{path}: column {name!r} holds {kind}, not strings")
    return parquet, name


def parquet_column(path: Path, column: str | None) -> str:
    """The column of a Parquet input that holds the sequences (checked, not read)."""
    return _open_parquet(path, column)[1]


def _parquet_rows(path: Path, column: str | None) -> Iterator[InputRow]:
    parquet, name = _open_parquet(path, column)

    def rows() -> Iterator[InputRow]:
        number = 0
        for batch in parquet.iter_batches(columns=[name], batch_size=4096):
            for value in batch.column(0).to_pylist():
                number += 1
                yield InputRow(number, "" if value is None else value)  # a null is an empty sequence

    return rows()


def _pyarrow_parquet(what: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(f"{what} needs pyarrow: pip install 'mlm-export[parquet]'") from exc
    return pq


class RowWriter:
    """Writes scored rows to JSON Lines or Parquet; a file appears under its name only when complete."""

    def __init__(self, path: Path | None, per_token: bool, force: bool = False, stdout: IO[str] | None = None,
                 source: Path | None = None) -> None:
        self.path = path
        self.force = force
        self.per_token = per_token
        self.kind = "jsonl" if path is None or path.suffix.lower() in (".jsonl", ".json", ".ndjson") else None
        if path is not None and path.suffix.lower() in (".parquet", ".pq"):
            self.kind = "parquet"
        if self.kind is None:
            raise InputError(f"{path}: the output is .jsonl or .parquet")
        self._tmp: Path | None = None
        self._stream: IO[str] | None = None
        self._parquet: Any = None
        self._pending: list[ScoredRow] = []
        if path is None:
            self._stream = stdout or sys.stdout
            return
        if path.is_dir():
            raise InputError(f"{path} is a directory; --output names a file")
        if source is not None and path.exists() and os.path.samefile(path, source):
            raise InputError(f"{path} is the input; choose another --output")
        if path.exists() and not force:
            raise InputError(f"{path} exists; pass --force (ScoreJob(force=True)) to replace it, or choose "
                             "another --output")
        if not path.parent.is_dir():
            raise InputError(f"the folder of {path} does not exist")
        self._tmp = path.parent / f".{path.name}.mlm-export-tmp-{os.getpid()}"
        try:
            if self.kind == "jsonl":
                self._stream = open(self._tmp, "x", encoding="utf-8")  # noqa: SIM115 (closed in close/abort)
            else:  # opened now: an unwritable folder or a missing pyarrow is found before any scoring
                self._open_parquet()
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def write(self, rows: list[ScoredRow]) -> None:
        if self.kind == "jsonl":
            assert self._stream is not None
            self._stream.write("".join(json.dumps(r.to_dict(self.per_token), allow_nan=False) + "\n" for r in rows))
            self._stream.flush()
        else:
            self._pending.extend(rows)
            if len(self._pending) >= 8192:
                self._flush_parquet()

    def _schema(self) -> Any:
        import pyarrow as pa

        fields = [pa.field("line", pa.int64()), pa.field("text", pa.string()), pa.field("pll", pa.float64()),
                  pa.field("n_tokens", pa.int64()), pa.field("error", pa.string())]
        if self.per_token:
            fields.append(pa.field("token_log_probs", pa.list_(pa.float64())))
        return pa.schema(fields)

    def _open_parquet(self) -> None:
        pq = _pyarrow_parquet("Parquet output")
        self._parquet = pq.ParquetWriter(self._tmp, self._schema())

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        schema = self._schema()
        columns = {f.name: [getattr(r, f.name) for r in self._pending] for f in schema}
        if self.per_token:
            columns["token_log_probs"] = [None if v is None else list(v) for v in columns["token_log_probs"]]
        self._parquet.write_table(pa.Table.from_pydict(columns, schema=schema))
        self._pending = []

    def close(self) -> None:
        """Finish the file and move it into place."""
        if self.kind == "parquet":
            if self._pending:
                self._flush_parquet()
            self._parquet.close()
        elif self._stream is not None and self._tmp is not None:
            self._stream.close()
        if self._tmp is not None and self.path is not None:
            tmp, self._tmp = self._tmp, None  # from here on, _publish decides what becomes of it
            self._publish(tmp, self.path)

    def _publish(self, tmp: Path, path: Path) -> None:
        """Move the finished file into place. Without `force` the name is taken exclusively (a hard link
        fails on an existing name): a file that appeared there during the run, a user's or a second run's,
        is left untouched, and the scores are kept under a name of their own."""
        if self.force:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            kept = path.with_name(f"{path.stem}.mlm-export-{os.getpid()}{path.suffix}")
            try:
                os.link(tmp, kept)
            except OSError:
                kept = tmp  # the temporary name, then: it is complete
            else:
                tmp.unlink()
            raise ArtifactError(f"{path} appeared while the scores were being written, and mlm-export does not "
                                f"replace it without --force: it was left untouched. The scores are in {kept}") \
                from None
        except OSError:  # a file system without hard links: check, then rename (the old, racier way)
            if os.path.lexists(path):
                raise ArtifactError(f"{path} appeared while the scores were being written; it was left "
                                    f"untouched. The scores are in {tmp}") from None
            os.replace(tmp, path)
            return
        tmp.unlink()

    def abort(self) -> None:
        """Remove the partial file (ours alone: the temporary name)."""
        try:
            if self._parquet is not None:
                self._parquet.close()
            if self._stream is not None and self._tmp is not None:
                self._stream.close()
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
                self._tmp = None
