"""`mlm-export variants`: mutation-effect scores of a list, a deep-mutational-scan table or a saturation scan,
written as a CSV or Parquet table.

Everything is read and every mutation checked before the first graph run, so a bad mutation costs
nothing and leaves no file. The output keeps every input column and row, in order, and adds one
column per method (`masked_marginal`, `wt_marginal`, `pll_delta`), then `variant` and `provider`.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..progress import stage
from ..publish import OutputFile
from ..runtime.mutations import COLUMNS, METHODS, Mutant, MutationScorer, WildType, check_methods, check_offset
from .inputs import CSV_FIELD_LIMIT, pyarrow_parquet, read_rows

log = logging.getLogger("mlm_export")

OUTPUT_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SATURATION_COLUMNS = ("mutant", "position", "wt", "mt")


@dataclass(frozen=True)
class VariantsJob:
    """One `mlm-export variants` run. Exactly one of `wt` and `wt_fasta`, and one of `mutations`, `dms`
    and `saturation`, are given."""

    directory: Path
    output: Path
    wt: str | None = None
    wt_fasta: Path | None = None
    mutations: tuple[str, ...] | None = None
    dms: Path | None = None
    mutation_col: str = "mutant"
    record_col: str = "id"
    saturation: bool = False
    methods: tuple[str, ...] = ("masked-marginal",)
    offset: int = 1
    alphabet: str | tuple[str, ...] | None = None
    variant: str | None = None
    providers: str = "auto"
    threads: int | None = None
    batch_size: int | None = None  # masked copies per run; None: the backend's best (Scorer.copies_per_run)
    force: bool = False
    public_key: Any = None
    progress: bool = False


@dataclass
class VariantsSummary:
    """What a run did, for the log line and `--json` (`variants-v1`)."""

    artifact: str
    output: str
    rows: int
    wild_types: int
    methods: tuple[str, ...]
    variant: str
    provider: str
    copies: int  # masked copies run, over every wild type
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "output": self.output, "rows": self.rows, "wild_types": self.wild_types,
                "methods": list(self.methods), "variant": self.variant, "provider": self.provider,
                "copies": self.copies, "seconds": self.seconds, "warnings": self.warnings}


@dataclass
class _Table:
    """The input rows (or the scan's), each row's mutant and the wild type it mutates."""

    columns: list[str]
    rows: list[list[Any]]  # values per column: a CSV's as the file spells them, or the scan's
    arrow: Any = None  # a Parquet input's own table (types and values kept as they are)
    types: dict[str, str] = field(default_factory=dict)  # a scan's column types in Parquet: "int64", else text
    texts: list[Any] = field(default_factory=list)  # per row: the mutation as written
    labels: list[str] = field(default_factory=list)  # per row: how an error names it ("row 3 (line 4)")
    by_record: dict[int, list[int]] = field(default_factory=dict)  # wild type -> its rows, in order
    mutants: list[Mutant] = field(default_factory=list)


def score_variants_file(job: VariantsJob) -> VariantsSummary:
    """Read, check, score and write; the output appears whole or not at all. Every argument, the wild types
    and every mutation are checked before the first graph run."""
    from ..runtime.predictor import OnnxMaskFiller

    methods = check_methods(job.methods)
    offset = check_offset(job.offset)
    if (job.wt is None) == (job.wt_fasta is None):
        raise InputError("give the wild type with exactly one of --wt and --wt-fasta")
    if sum(x for x in (job.mutations is not None, job.dms is not None, job.saturation)) != 1:
        raise InputError("give the variants with exactly one of --mutations, --dms and --saturation")
    kind = _output_kind(job.output)
    out = OutputFile(job.output, force=job.force)  # checked before anything runs: an existing file, a folder
    if kind == "parquet":
        pyarrow_parquet("a Parquet --output")
    records = _records_of(job)
    table = _read_variants(job, records) if not job.saturation else None
    filler = OnnxMaskFiller.from_pretrained(job.directory, job.variant, job.providers, job.threads,
                                            public_key=job.public_key)
    scorer = MutationScorer(filler.scorer(), job.alphabet)
    if table is None:
        wild_types = {r: _read_wt(scorer, record) for r, record in enumerate(records)}
        table = _saturation(scorer, job, records, wild_types, offset)
    else:
        wild_types = {r: _read_wt(scorer, records[r]) for r in table.by_record}  # only the wild types rows name
        _parse(scorer, table, records, wild_types, offset)
    warnings = [f"{records[r][0]}: {wt.warning}" for r, wt in wild_types.items() if wt.warning]
    for warning in warnings:
        log.warning("%s", warning)
    copies = sum(scorer.copies(wild_types[r], [table.mutants[i] for i in rows], methods)
                 for r, rows in table.by_record.items())
    if "pll-delta" in methods:
        log.warning("pll-delta runs a PLL of every distinct variant (%d masked copies in all); masked-marginal runs "
                    "one PLL per wild type", copies)
    started = time.perf_counter()
    scores: dict[str, list[float]] = {m: [0.0] * len(table.mutants) for m in methods}
    n = len(table.by_record)
    with stage(f"scoring {len(table.mutants)} variants of {n} wild type{'s' if n != 1 else ''} with "
               f"{filler.variant} on {filler.provider}", total=copies or None, unit="copy",
               bar=job.progress) as advance:
        for record, rows in table.by_record.items():
            found = scorer.score(wild_types[record], [table.mutants[i] for i in rows], methods, job.batch_size,
                                 advance)
            for method, values in found.items():
                for i, value in zip(rows, values):
                    scores[method][i] = value
    seconds = time.perf_counter() - started
    _write(out, kind, table, methods, scores, filler.variant, filler.provider)
    return VariantsSummary(str(job.directory), str(job.output), len(table.mutants), n, methods, filler.variant,
                           filler.provider, copies, seconds, warnings)


def _output_kind(path: Path) -> str:
    kind = OUTPUT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"--output {path}: give a .csv or .parquet file")
    return kind


def _records_of(job: VariantsJob) -> list[tuple[str, str, str]]:
    """The wild types as (name, sequence, what to call it in errors): "wt" for --wt, else each FASTA record
    by its id. They are read by the model later, and only those that rows name."""
    if job.wt is not None:
        return [("wt", job.wt, "--wt")]
    assert job.wt_fasta is not None
    source = read_rows(job.wt_fasta, format="fasta", keep=["id"])
    records: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for row in source.rows:
        if row.error:
            raise InputError(f"{job.wt_fasta} line {row.line}: {row.error}")
        name = str(row.kept[0])
        if name in seen:
            raise InputError(f"{job.wt_fasta} holds two records named {name!r}; each wild type needs its own id")
        seen.add(name)
        records.append((name, row.text, f"{job.wt_fasta} record {name!r}"))
    if not records:
        raise InputError(f"{job.wt_fasta} holds no FASTA record")
    return records


def _read_wt(scorer: MutationScorer, record: tuple[str, str, str]) -> WildType:
    try:
        return scorer.wild_type(record[1])
    except InputError as exc:
        raise InputError(f"{record[2]}: {exc}") from exc


def _read_variants(job: VariantsJob, records: list[tuple[str, str, str]]) -> _Table:
    """The --mutations list or the --dms table, each row assigned its wild type (not yet parsed)."""
    if job.mutations is not None:
        if len(records) > 1:
            raise InputError(f"--wt-fasta holds {len(records)} records; --mutations would apply to each: give "
                             f"the variants as a --dms table whose {job.record_col!r} column names each row's record")
        table = _Table(["mutant"], [[m] for m in job.mutations], None)
        table.texts = list(job.mutations)
        table.labels = [f"mutation {i + 1}" for i in range(len(table.rows))]
        if not table.rows:
            raise InputError("--mutations names no mutation")
    else:
        assert job.dms is not None
        table = _read_dms(job.dms)
        if job.mutation_col not in table.columns:
            raise InputError(f"{job.dms} has no column {job.mutation_col!r} (--mutation-col); it has "
                             f"{', '.join(map(repr, table.columns[:20]))}")
        at = table.columns.index(job.mutation_col)
        table.texts = [row[at] for row in table.rows]
    clash = [c for c in table.columns if c in _added(job.methods)]
    if clash:
        raise InputError(f"the input has a column named {clash[0]!r}, which the output adds (the scores, and the "
                         "precision variant and provider that computed them); rename it in the input")
    for i, record in enumerate(_records(job, table, [name for name, _, _ in records])):
        table.by_record.setdefault(record, []).append(i)
    return table


def _parse(scorer: MutationScorer, table: _Table, records: list[tuple[str, str, str]],
           wild_types: dict[int, WildType], offset: int) -> None:
    """Every row's mutant, checked against its wild type; one error names every invalid one."""
    mutants: list[Mutant | None] = [None] * len(table.rows)
    problems: list[str] = []
    for record, rows in table.by_record.items():
        try:
            parsed = scorer.parse(wild_types[record], [table.texts[i] for i in rows], offset,
                                  [table.labels[i] for i in rows])
        except InputError as exc:
            problems.append((f"record {records[record][0]!r}: " if len(records) > 1 else "") + str(exc))
            continue
        for i, mutant in zip(rows, parsed):
            mutants[i] = mutant
    if problems:
        raise InputError("; ".join(problems) + "; nothing was scored or written")
    table.mutants = [m for m in mutants if m is not None]


def _added(methods: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(COLUMNS[m] for m in METHODS if m in methods) + ("variant", "provider")


def _records(job: VariantsJob, table: _Table, names: list[str]) -> list[int]:
    """Per row, the wild type it mutates: the only one (any --record-col is then just another column), or
    the one its --record-col names."""
    if len(names) == 1:
        return [0] * len(table.rows)
    if job.dms is None or job.record_col not in table.columns:
        raise InputError(f"--wt-fasta holds {len(names)} records; the --dms table needs a column "
                         f"{job.record_col!r} (--record-col) naming each row's record")
    at = table.columns.index(job.record_col)
    index = {name: i for i, name in enumerate(names)}
    records = []
    for i, row in enumerate(table.rows):
        name = "" if row[at] is None else str(row[at])
        if name not in index:
            raise InputError(f"{job.dms} {table.labels[i]}: {job.record_col} {name!r} is not a record of --wt-fasta "
                             f"({', '.join(map(repr, names[:10]))}{', ...' if len(names) > 10 else ''})")
        records.append(index[name])
    return records


def _saturation(scorer: MutationScorer, job: VariantsJob, records: list[tuple[str, str, str]],
                wild_types: dict[int, WildType], offset: int) -> _Table:
    """Every position by every other alphabet letter: L x (alphabet - 1) rows per wild type (L x alphabet at
    a residue outside the alphabet); a --wt-fasta record's id leads each row."""
    named = job.wt_fasta is not None
    table = _Table((["id"] if named else []) + list(SATURATION_COLUMNS), [], types={"position": "int64"})
    for record, (name, _, _) in enumerate(records):
        table.by_record[record] = []
        for mutant in scorer.saturation(wild_types[record], offset):
            sub = mutant.substitutions[0]
            table.by_record[record].append(len(table.rows))
            table.rows.append(([name] if named else []) + [mutant.name, sub.position, sub.wt, sub.mt])
            table.mutants.append(mutant)
    return table


def _read_dms(path: Path) -> _Table:
    """A deep-mutational-scan table: CSV (values kept as the file spells them) or Parquet (kept as Arrow)."""
    if not path.is_file():
        raise InputError(f"--dms {path} is not a file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    if suffix != ".csv":
        raise InputError(f"--dms {path}: give a .csv or .parquet table")
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    rows: list[list[str]] = []
    labels: list[str] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)  # a stray quote is an error, not rows merged into one
            header = next(reader, None)
            if header is None:
                raise InputError(f"--dms {path} is empty; it needs a header row naming its columns")
            last = reader.line_num
            for row in reader:
                first, last = last + 1, reader.line_num
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    raise InputError(f"--dms {path} line {first} has {len(row)} fields; the header has {len(header)}")
                rows.append(row)
                labels.append(f"row {len(rows)} (line {first})")
    except UnicodeDecodeError as exc:
        raise InputError(f"--dms {path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from exc
    except csv.Error as exc:
        raise InputError(f"--dms {path} is not a readable CSV file: {exc}") from exc
    _check_columns(path, header)
    if not rows:
        raise InputError(f"--dms {path} has a header and no rows")
    return _Table(header, rows, labels=labels)


def _read_parquet(path: Path) -> _Table:
    pq = pyarrow_parquet("a Parquet --dms table")
    try:
        columns = list(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow's own error types
        raise InputError(f"--dms {path} is not a readable Parquet file: {str(exc).splitlines()[0]}") from exc
    _check_columns(path, columns)
    try:
        data = pq.read_table(path)
    except Exception as exc:
        raise InputError(f"--dms {path} is not a readable Parquet file: {str(exc).splitlines()[0]}") from exc
    if data.num_rows == 0:
        raise InputError(f"--dms {path} has no rows")
    values = [data.column(c).to_pylist() for c in columns]
    return _Table(columns, [list(r) for r in zip(*values)], arrow=data,
                  labels=[f"row {i + 1}" for i in range(data.num_rows)])


def _check_columns(path: Path, columns: list[str]) -> None:
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise InputError(f"--dms {path} has two columns named {duplicated[0]!r}; rename one")


def _write(out: OutputFile, kind: str, table: _Table, methods: tuple[str, ...], scores: dict[str, list[float]],
           variant: str, provider: str) -> None:
    """The table with its added columns, under a temporary name, then published whole."""
    added = [COLUMNS[m] for m in METHODS if m in methods]
    ordered = [m for m in METHODS if m in methods]
    try:
        if kind == "csv":
            with out.open() as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(table.columns + added + ["variant", "provider"])
                for i, row in enumerate(table.rows):
                    writer.writerow(["" if v is None else v for v in row]
                                    + [repr(scores[m][i]) for m in ordered] + [variant, provider])
        else:
            import pyarrow as pa

            pq = pyarrow_parquet("a Parquet --output")
            if table.arrow is not None:  # a Parquet input: its own columns, types and metadata, as they are
                data = table.arrow
            else:  # a CSV's values stay text (CSV has no types); a scan's position is an integer
                data = pa.table({name: pa.array([row[k] for row in table.rows],
                                                type=pa.int64() if table.types.get(name) == "int64" else pa.string())
                                 for k, name in enumerate(table.columns)})
            for method, name in zip(ordered, added):
                data = data.append_column(name, pa.array(scores[method], type=pa.float64()))
            for name, value in (("variant", variant), ("provider", provider)):
                data = data.append_column(name, pa.array([value] * len(table.rows), type=pa.string()))
            with out.open(binary=True) as handle:
                pq.write_table(data, handle)
    except OSError as exc:
        out.discard()
        raise out.storage_error(exc) from exc
    except BaseException:
        out.discard()
        raise
    out.publish()
