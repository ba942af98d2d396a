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
from .inputs import pyarrow_parquet, read_rows

log = logging.getLogger("mlm_export")

OUTPUT_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SATURATION_COLUMNS = ("mutant", "position", "wt", "mt")
MAX_CSV_FIELD = 1 << 24  # a DMS row holds a sequence at most (ProteinGym: mutated_sequence); 16 MB is generous


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
    """The input rows (or the scan's) and, per row, the wild type it mutates and its mutant."""

    columns: list[str]
    rows: list[list[Any]]  # values per column; CSV values are the file's text, unchanged
    types: list[Any] | None  # Arrow types of a Parquet input's columns (None: text)
    records: list[int] = field(default_factory=list)  # per row: index into the wild types
    mutants: list[Mutant] = field(default_factory=list)


def score_variants_file(job: VariantsJob) -> VariantsSummary:
    """Read, check, score and write; the output appears whole or not at all."""
    from ..runtime.predictor import OnnxMaskFiller

    methods = check_methods(job.methods)
    offset = check_offset(job.offset)
    kind = _output_kind(job.output)
    out = OutputFile(job.output, force=job.force)  # checked before anything runs: an existing file, a folder
    if kind == "parquet":
        pyarrow_parquet("a Parquet --output")
    filler = OnnxMaskFiller.from_pretrained(job.directory, job.variant, job.providers, job.threads,
                                            public_key=job.public_key)
    scorer = MutationScorer(filler.scorer(), job.alphabet)
    names, wild_types = _wild_types(job, scorer)
    table = _table(job, scorer, names, wild_types, offset)
    warnings = [f"{name}: {wt.unknown} of {len(wt)} residues are unknown to the model's vocabulary; their scores "
                "mean little" for name, wt in zip(names, wild_types) if wt.unknown > 0.1 * len(wt)]
    for warning in warnings:
        log.warning("%s", warning)
    used = sorted(set(table.records))
    copies = sum(scorer.copies(wild_types[w], [m for m, r in zip(table.mutants, table.records) if r == w], methods)
                 for w in used)
    if "pll-delta" in methods:
        log.warning("pll-delta runs a PLL of every distinct variant (%d masked copies in all); masked-marginal runs "
                    "one PLL per wild type", copies)
    started = time.perf_counter()
    scores: dict[str, list[float]] = {m: [0.0] * len(table.rows) for m in methods}
    with stage(f"scoring {len(table.rows)} variants of {len(used)} wild type{'s' if len(used) != 1 else ''} with "
               f"{filler.variant} on {filler.provider}", total=copies or None, unit="copy",
               bar=job.progress) as advance:
        for w in used:
            rows = [i for i, r in enumerate(table.records) if r == w]
            found = scorer.score(wild_types[w], [table.mutants[i] for i in rows], methods, job.batch_size, advance)
            for method, values in found.items():
                for i, value in zip(rows, values):
                    scores[method][i] = value
    seconds = time.perf_counter() - started
    _write(out, kind, table, methods, scores, filler.variant, filler.provider)
    return VariantsSummary(str(job.directory), str(job.output), len(table.rows), len(used), methods, filler.variant,
                           filler.provider, copies, seconds, warnings)


def _output_kind(path: Path) -> str:
    kind = OUTPUT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"--output {path}: give a .csv or .parquet file")
    return kind


def _wild_types(job: VariantsJob, scorer: MutationScorer) -> tuple[list[str], list[WildType]]:
    """The wild types, named (a FASTA record's id; "wt" for --wt), each read by the model."""
    if (job.wt is None) == (job.wt_fasta is None):
        raise InputError("give the wild type with exactly one of --wt and --wt-fasta")
    if job.wt is not None:
        return ["wt"], [_read_wt(scorer, job.wt, "--wt")]
    assert job.wt_fasta is not None
    table = read_rows(job.wt_fasta, format="fasta", keep=["id"])
    names: list[str] = []
    wild_types = []
    for row in table.rows:
        if row.error:
            raise InputError(f"{job.wt_fasta} line {row.line}: {row.error}")
        name = str(row.kept[0])
        if name in names:
            raise InputError(f"{job.wt_fasta} holds two records named {name!r}; each wild type needs its own id")
        names.append(name)
        wild_types.append(_read_wt(scorer, row.text, f"{job.wt_fasta} record {name!r}"))
    if not wild_types:
        raise InputError(f"{job.wt_fasta} holds no FASTA record")
    return names, wild_types


def _read_wt(scorer: MutationScorer, sequence: str, what: str) -> WildType:
    try:
        return scorer.wild_type(sequence)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from exc


def _table(job: VariantsJob, scorer: MutationScorer, names: list[str], wild_types: list[WildType],
           offset: int) -> _Table:
    given = sum(x for x in (job.mutations is not None, job.dms is not None, job.saturation))
    if given != 1:
        raise InputError("give the variants with exactly one of --mutations, --dms and --saturation")
    if job.saturation:
        return _saturation(scorer, names, wild_types, offset)
    if job.mutations is not None:
        if len(wild_types) > 1:
            raise InputError(f"--wt-fasta holds {len(wild_types)} records; --mutations would apply to each: give "
                             f"the variants as a --dms table whose {job.record_col!r} column names each row's record")
        table = _Table(["mutant"], [[m] for m in job.mutations], None)
        if not table.rows:
            raise InputError("--mutations names no mutation")
        texts: list[Any] = list(job.mutations)
    else:
        assert job.dms is not None
        table = _read_dms(job.dms)
        if job.mutation_col not in table.columns:
            raise InputError(f"{job.dms} has no column {job.mutation_col!r} (--mutation-col); it has "
                             f"{', '.join(map(repr, table.columns[:20]))}")
        at = table.columns.index(job.mutation_col)
        texts = [row[at] for row in table.rows]
    clash = [c for c in table.columns if c in _added(job.methods)]
    if clash:
        raise InputError(f"the input has a column named {clash[0]!r}, which the output adds; rename it in the input")
    table.records = _records(job, table, names)
    by_record: dict[int, list[int]] = {}
    for i, record in enumerate(table.records):
        by_record.setdefault(record, []).append(i)
    mutants: list[Mutant | None] = [None] * len(table.rows)
    problems: list[str] = []
    line = 2 if job.dms is not None and job.dms.suffix.lower() == ".csv" else 1  # a CSV's first line is its header
    for record, rows in by_record.items():
        labels = [f"row {i + 1}" + (f" (line {i + line})" if line == 2 else "") for i in rows]
        try:
            for i, mutant in zip(rows, scorer.parse(wild_types[record], [texts[i] for i in rows], offset, labels)):
                mutants[i] = mutant
        except InputError as exc:
            problems.append((f"record {names[record]!r}: " if len(names) > 1 else "") + str(exc))
    if problems:
        raise InputError("; ".join(problems) + "; nothing was scored or written")
    table.mutants = [m for m in mutants if m is not None]
    return table


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
            raise InputError(f"{job.dms} row {i + 1}: {job.record_col} {name!r} is not a record of --wt-fasta "
                             f"({', '.join(map(repr, names[:10]))}{', ...' if len(names) > 10 else ''})")
        records.append(index[name])
    return records


def _saturation(scorer: MutationScorer, names: list[str], wild_types: list[WildType], offset: int) -> _Table:
    """Every position by every other alphabet letter: L x (alphabet - 1) rows per wild type (L x alphabet at
    a residue outside the alphabet)."""
    named = len(names) > 1 or names != ["wt"]
    table = _Table((["id"] if named else []) + list(SATURATION_COLUMNS), [], None)
    for record, (name, wt) in enumerate(zip(names, wild_types)):
        for mutant in scorer.saturation(wt, offset):
            sub = mutant.substitutions[0]
            table.rows.append(([name] if named else []) + [mutant.name, sub.position, sub.wt, sub.mt])
            table.mutants.append(mutant)
            table.records.append(record)
    return table


def _read_dms(path: Path) -> _Table:
    """A deep-mutational-scan table, CSV (values kept as the file's text) or Parquet (with its types)."""
    if not path.is_file():
        raise InputError(f"--dms {path} is not a file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        pq = pyarrow_parquet("a Parquet --dms table")
        try:
            data = pq.read_table(path)
        except Exception as exc:  # pyarrow's own error types
            raise InputError(f"--dms {path} is not a readable Parquet file: {exc}") from exc
        columns = list(data.column_names)
        values = [data.column(c).to_pylist() for c in columns]
        return _Table(columns, [list(r) for r in zip(*values)] if columns else [], list(data.schema.types))
    if suffix != ".csv":
        raise InputError(f"--dms {path}: give a .csv or .parquet table")
    csv.field_size_limit(MAX_CSV_FIELD)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise InputError(f"--dms {path} is empty; it needs a header row naming its columns")
            rows = []
            for number, row in enumerate(reader, start=2):
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    raise InputError(f"--dms {path} line {number} has {len(row)} fields; the header has "
                                     f"{len(header)}")
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise InputError(f"--dms {path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from exc
    except csv.Error as exc:
        raise InputError(f"--dms {path} is not a readable CSV file: {exc}") from exc
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise InputError(f"--dms {path} has two columns named {duplicated[0]!r}")
    if not rows:
        raise InputError(f"--dms {path} has a header and no rows")
    return _Table(header, rows, None)


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
            arrays = {}
            for k, name in enumerate(table.columns):
                column = [row[k] for row in table.rows]
                kind_of = table.types[k] if table.types is not None else None
                arrays[name] = pa.array(column, type=kind_of if kind_of is not None
                                        else (pa.int64() if name == "position" else pa.string()))
            for method, name in zip(ordered, added):
                arrays[name] = pa.array(scores[method], type=pa.float64())
            arrays["variant"] = pa.array([variant] * len(table.rows), type=pa.string())
            arrays["provider"] = pa.array([provider] * len(table.rows), type=pa.string())
            with out.open(binary=True) as handle:
                pq.write_table(pa.table(arrays), handle)
    except OSError as exc:
        out.discard()
        raise out.storage_error(exc) from exc
    except BaseException:
        out.discard()
        raise
    out.publish()
