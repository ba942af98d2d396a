"""Files of sequences in: text, FASTA, CSV and Parquet, read as a stream.

The local engine never holds a file of millions of sequences whole (the Ray engine's driver does, to
ship it to the actors):
- a text file, one sequence per line (`line` is the line number, as `wc -l` counts);
- FASTA (`.fa`, `.fasta`, `.faa`, `.fas`): one sequence per record, its lines joined; `line` is the
  header's line (a lone CR counts as a line end), and the record's `id` (the header's first word)
  and `description` are kept;
- CSV (`line` is the line the record ends on) or Parquet (`line` is the 1-based row) with a column
  of sequences; the other columns are kept (all by default, `keep` to choose).
A row the reader cannot use (a line that is not UTF-8, a CSV record with the wrong number of fields)
becomes a row error, as a sequence the model cannot score does; only a file that cannot be read as
its format at all is refused, and as much as can be is checked before the first row.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

TEXT_SUFFIXES = (".txt", ".seq", ".text", "")
FASTA_SUFFIXES = (".fa", ".fasta", ".faa", ".fas")
FORMATS = ("text", "fasta", "csv", "parquet")
DEFAULT_COLUMNS = ("text", "sequence")
FASTA_COLUMNS = ("id", "description")
CSV_FIELD_LIMIT = 2**31 - 1  # characters; the csv module's default (128 KiB) aborted a run on one long field
_FASTA_HEADER = re.compile(r">\S")  # a quoted e-mail line ("> text") is not one


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, as surrogateescape keeps them


@dataclass(frozen=True)
class InputRow:
    line: int
    text: str
    kept: tuple[Any, ...] = ()  # the values of `InputTable.kept`, in order
    error: str | None = None    # found while reading: the row is reported, not scored


@dataclass
class InputTable:
    """An input file, checked (format, columns) but not yet read: its rows stream from `rows`."""

    path: Path
    format: str
    column: str | None             # the column (CSV, Parquet) that holds the sequences
    kept: tuple[str, ...]          # input columns copied into every output row
    kept_types: tuple[Any, ...]    # their Arrow types, for a Parquet output (None: strings)
    rows: Iterator[InputRow] = field(repr=False)
    close: Callable[[], None] = field(default=lambda: None, repr=False)  # the file, if the rows are never read


def input_format(path: Path, given: str | None = None) -> str:
    """The format `given` (--format), else the one the suffix names."""
    if given is not None:
        if given not in FORMATS:
            raise InputError(f"input format must be one of {', '.join(FORMATS)}, got {given!r}")
        return given
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in FASTA_SUFFIXES:
        return "fasta"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise InputError(f"{path}: unknown input format {suffix!r}; give a text file (one sequence per line, "
                     f".txt), FASTA ({', '.join(FASTA_SUFFIXES)}), a .csv or a .parquet file, or name the "
                     "format with --format")


def read_rows(path: Path, column: str | None = None, keep: Sequence[str] | None = None,
              format: str | None = None, reserved: Sequence[str] = ()) -> InputTable:
    """Open `path` for streaming; the file is checked (exists, format, columns) before the first row.

    `keep`: the input columns to copy into the output rows; None keeps every one but the sequences'.
    `reserved`: the names of the output's own fields, which a kept column may not take.
    """
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    kind = input_format(path, format)
    if kind != "parquet":
        _refuse_binary(path)
    if kind in ("text", "fasta") and column is not None:
        raise InputError(f"--column applies to CSV and Parquet inputs; {path} is read as {kind}")
    if kind == "text":
        if keep:
            raise InputError(f"{path} is read as text, one sequence per line: it has no columns to keep")
        handle, rows = _text_rows(path, checked=format is None)
        return InputTable(path, kind, None, (), (), rows, handle.close)
    if kind == "fasta":
        _check_fasta_start(path)
        kept = _kept(path, list(FASTA_COLUMNS), None, keep, reserved)
        picks = [FASTA_COLUMNS.index(name) for name in kept]
        rows = (InputRow(r.line, r.text, tuple(r.kept[i] for i in picks), r.error) for r in _fasta_rows(path))
        return InputTable(path, kind, None, kept, (None,) * len(kept), rows)
    if kind == "csv":
        return _csv_table(path, column, keep, reserved)
    return _parquet_table(path, column, keep, reserved)


def _kept(path: Path, columns: list[str], sequences: str | None, keep: Sequence[str] | None,
          reserved: Sequence[str]) -> tuple[str, ...]:
    """The columns to keep: checked against the input's, and against the names of our own fields."""
    if keep is None:
        chosen = [c for c in columns if c != sequences]
    else:
        chosen = list(dict.fromkeys(keep))
        for name in chosen:
            if name not in columns:
                raise InputError(f"--keep-columns: {path} has no column {name!r}; it has "
                                 f"{', '.join(map(repr, columns))}")
            if name == sequences:
                raise InputError(f"--keep-columns: {name!r} holds the sequences; they are in every row as `text`")
    clash = [c for c in chosen if c in reserved]
    if clash and keep is not None:
        raise InputError(f"--keep-columns: {clash[0]!r} is also a field of the output rows, so it cannot be kept "
                         "under that name; rename the column in the input")
    if clash:
        raise InputError(f"{path} has a column named {clash[0]!r}, which is also a field of the output rows; "
                         "choose the columns to keep with --keep-columns (--keep-columns '' keeps none)")
    if any(columns.count(c) > 1 for c in chosen):
        raise InputError(f"{path} has two columns named {next(c for c in chosen if columns.count(c) > 1)!r}; "
                         "rename one, or leave it out with --keep-columns")
    return tuple(chosen)


_MAGIC = ((b"\x1f\x8b", "compressed with gzip: decompress it first (gunzip)"),
          (b"(\xb5/\xfd", "compressed with zstd: decompress it first (unzstd)"),
          (b"BZh1", "compressed with bzip2: decompress it first (bunzip2)"),
          (b"BZh9", "compressed with bzip2: decompress it first (bunzip2)"),
          (b"PK\x03\x04", "a zip archive: extract it first"),
          (b"\xff\xfe", "UTF-16 text: convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"),
          (b"\xfe\xff", "UTF-16 text: convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"))


def _refuse_binary(path: Path) -> None:
    """A compressed or UTF-16 file would be read as garbage rows; say what it is instead."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    for magic, what in _MAGIC:
        if start.startswith(magic):
            raise InputError(f"{path} is {what}; mlm-export reads UTF-8 text")


def _decode(raw: bytes, number: int) -> tuple[str, str | None]:
    """A line as text, and the reason it is not UTF-8 (the row then becomes a row error)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (raw.decode("utf-8", "backslashreplace"),
                f"not UTF-8 text ({exc.reason} at byte {exc.start} of line {number}); fix the file's encoding")
    return (line.removeprefix("\ufeff") if number == 1 else line), None  # a byte-order mark, as editors write


def _text_rows(path: Path, checked: bool) -> tuple[Any, Iterator[InputRow]]:
    """Lines end at \n (\r\n too); a lone \r stays inside its line, so line numbers match `wc -l`.

    A file whose first non-blank line is a FASTA header is refused unless the format was given
    (`checked` False): every header would be scored as a sequence, and every record cut into lines.
    """
    handle = open(path, "rb")  # noqa: SIM115 (closed by the generator)
    head: list[bytes] = []
    for raw in handle:  # the blank lines before the first text, and that line
        head.append(raw)
        if raw.strip() or len(head) >= 10_000:
            break
    first = _decode(head[-1], len(head))[0].strip() if head else ""
    if checked and _FASTA_HEADER.match(first):
        handle.close()
        raise InputError(f"{path}, line {len(head)} is a FASTA header ({first[:40]!r}): name the file .fasta or "
                         ".fa, or pass --format fasta (--format text scores every line)")

    def rows() -> Iterator[InputRow]:
        with handle:
            for number, raw in enumerate(head, 1):
                yield _text_row(number, raw)
            for number, raw in enumerate(handle, len(head) + 1):
                yield _text_row(number, raw)

    return handle, rows()


def _text_row(number: int, raw: bytes) -> InputRow:
    line, error = _decode(raw, number)
    return InputRow(number, line.removesuffix("\n").removesuffix("\r"), (), error)


def _check_fasta_start(path: Path) -> None:
    """Before any work: the first line with text must be a header (the rows repeat the check as they go)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            line = _decode(raw, number)[0].split("\r")[0].strip().lstrip("\ufeff")
            if line and not line.startswith(";"):
                if not line.startswith(">"):
                    raise InputError(_NOT_FASTA.format(path=path, number=number))
                return


_NOT_FASTA = ("{path}, line {number}: a sequence before the first '>' header; a FASTA file starts with a header "
              "line ('>id description'). For one sequence per line, name the file .txt or pass --format text")


def _fasta_rows(path: Path) -> Iterator[InputRow]:
    """Records of `>id description` and sequence lines (joined, whitespace dropped); blank lines and
    `;` comment lines are skipped. Text before the first header is refused: the file is not FASTA."""
    with open(path, "rb") as handle:
        header: tuple[Any, ...] | None = None
        parts: list[str] = []
        error: str | None = None
        number = 0
        for raw in handle:
            decoded, bad = _decode(raw, number + 1)
            for line in decoded.removesuffix("\n").removesuffix("\r").split("\r"):  # a lone CR ends a line too
                number += 1
                line = line.strip().lstrip("\ufeff")  # a BOM inside: files joined with cat
                if not line or line.startswith(";"):
                    continue
                if line.startswith(">"):
                    if header is not None:
                        yield InputRow(header[0], "".join(parts), header[1:], error)
                    words = line[1:].split(maxsplit=1)
                    header, parts, error = (number, *(words + ["", ""])[:2]), [], bad
                    continue
                if header is None:
                    raise InputError(_NOT_FASTA.format(path=path, number=number))
                parts.append("".join(line.split()))
                error = error or bad
        if header is not None:
            yield InputRow(header[0], "".join(parts), header[1:], error)


def _pick_column(path: Path, columns: list[str], column: str | None) -> str:
    if column is not None:
        if column not in columns:
            raise InputError(f"{path} has no column {column!r}; it has {', '.join(map(repr, columns))}")
        name = column
    else:
        found = [n for n in DEFAULT_COLUMNS if n in columns]
        if len(found) > 1:
            raise InputError(f"{path} has both {' and '.join(map(repr, found))} columns; name the one with the "
                             "sequences with --column")
        name = found[0] if found else ""
        if not name:
            raise InputError(f"{path} has columns {', '.join(map(repr, columns))}; name the one with the "
                             "sequences with --column")
    if columns.count(name) > 1:
        raise InputError(f"{path} has {columns.count(name)} columns named {name!r}; rename them")
    return name


def _csv_table(path: Path, column: str | None, keep: Sequence[str] | None, reserved: Sequence[str]) -> InputTable:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))  # a long field is a row error, later
    # bytes that are not UTF-8 are kept as surrogates, so one bad line is found on its own line; newline=""
    # ends lines at \n, \r\n and a lone \r, as the csv module expects
    handle = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115 (generator)
    not_utf8: set[int] = set()  # lines with bytes that are not UTF-8: their records are row errors

    def lines() -> Iterator[str]:
        for number, line in enumerate(handle, 1):
            if _NOT_UTF8.search(line):
                not_utf8.add(number)
            yield line

    reader = csv.reader(lines(), strict=True)  # a stray quote is an error, not rows merged into one
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path} is empty; a CSV input needs a header row")
        if not_utf8:
            raise InputError(f"{path}: the CSV header is not UTF-8 text; fix the file's encoding")
        name = _pick_column(path, header, column)
        kept = _kept(path, header, name, keep, reserved)
    except csv.Error as exc:
        handle.close()
        raise InputError(f"{path}: cannot read the CSV header ({exc})") from exc
    except InputError:
        handle.close()
        raise
    index = header.index(name)
    picks = [header.index(k) for k in kept]

    def rows() -> Iterator[InputRow]:
        with handle:
            last = reader.line_num
            try:
                for record in reader:
                    first, last = last + 1, reader.line_num
                    bad = next((n for n in range(first, last + 1) if n in not_utf8), None)
                    if bad is not None:  # the ids are kept (their bad bytes escaped), so the row can be found
                        values = tuple(_escaped(record[i]) if len(record) == len(header) else None for i in picks)
                        where = "" if bad == last else f" (line {bad})"
                        yield InputRow(last, "", values, f"not UTF-8 text{where}; fix the file's encoding")
                    elif len(record) != len(header):  # a shifted row would score the wrong field
                        yield InputRow(last, "", tuple(None for _ in picks),
                                       f"{len(record)} fields, the header has {len(header)}")
                    else:
                        yield InputRow(last, record[index], tuple(record[i] for i in picks))
            except csv.Error as exc:
                raise InputError(f"{path}, line {reader.line_num}: cannot read the CSV ({exc})") from exc

    return InputTable(path, "csv", name, kept, (None,) * len(kept), rows(), handle.close)


def _escaped(value: str) -> str:
    """A field read with surrogateescape, its bytes that are not UTF-8 written as \\xNN."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _open_parquet(path: Path, column: str | None) -> tuple[Any, str]:
    import pyarrow as pa

    pq = pyarrow_parquet("Parquet input")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        raise InputError(f"{path} cannot be read as Parquet ({exc})") from exc
    schema = parquet.schema_arrow
    try:
        name = _pick_column(path, schema.names, column)
        kind = schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"{path}: column {name!r} holds {kind}, not strings")
    except InputError:
        parquet.close()
        raise
    return parquet, name


def _parquet_table(path: Path, column: str | None, keep: Sequence[str] | None,
                   reserved: Sequence[str]) -> InputTable:
    parquet, name = _open_parquet(path, column)
    schema = parquet.schema_arrow
    try:
        kept = _kept(path, schema.names, name, keep, reserved)
    except InputError:
        parquet.close()
        raise

    def rows() -> Iterator[InputRow]:
        number = 0
        for batch in parquet.iter_batches(columns=[name, *kept], batch_size=4096):
            texts = batch.column(0).to_pylist()
            values = [batch.column(i + 1).to_pylist() for i in range(len(kept))]
            for i, text in enumerate(texts):
                number += 1
                yield InputRow(number, "" if text is None else text,  # a null is an empty sequence
                               tuple(v[i] for v in values))

    return InputTable(path, "parquet", name, kept, tuple(schema.field(k).type for k in kept), rows(),
                      parquet.close)


def pyarrow_parquet(what: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(f"{what} needs pyarrow: pip install 'mlm-export[parquet]'") from exc
    return pq


def chunked(rows: Iterable[InputRow], size: int) -> Iterator[list[InputRow]]:
    """Rows in lists of `size` (the last one shorter), for engines that work a chunk at a time."""
    chunk: list[InputRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
