"""`mlm-export tune` and the default it records: measured on this machine, kept in the user's cache (never in
the artifact), read by providers="auto", explained by `info`."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlm_export import OnnxMaskFiller
from mlm_export.cli import main
from mlm_export.contracts import validate
from mlm_export.runtime.backends import cpu_class
from mlm_export.runtime.tuning_records import (
    CACHE_ENV,
    TaskTuning,
    TuningRecord,
    VariantTiming,
    cpu_model,
    manifest_sha256,
    record_path,
)
from mlm_export.variants import CPU


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def _write_record(artifact: Path, winner: str, model: str | None = None) -> Path:
    """A record as tune writes it, naming `winner` (so a test knows what auto must open)."""
    data = (artifact / "manifest.json").read_bytes()
    timing = VariantTiming(winner, CPU, {"1 text": 1.0}, 1.0)
    tuned = TaskTuning("fill-mask", winner, CPU, 2, "2026-12-07T00:00:00+00:00", (timing,))
    record = TuningRecord(manifest_sha256(data), model or cpu_model(), cpu_class(), {"fill-mask": tuned})
    path = record_path(data, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record.to_dict()))
    return path


def test_tune_times_every_variant_and_auto_then_opens_the_winner(tiny_variants: Path, tmp_path: Path,
                                                                  cache: Path) -> None:
    artifact = tmp_path / "art"
    shutil.copytree(tiny_variants, artifact)
    before = {p.name: p.read_bytes() for p in artifact.iterdir()}
    artifact.chmod(stat.S_IRUSR | stat.S_IXUSR)  # read-only: the record must go to the cache
    try:
        result = CliRunner().invoke(main, ["tune", str(artifact), "--repeats", "1", "--json"])
    finally:
        artifact.chmod(stat.S_IRWXU)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    tuned = document["record"]["tasks"]["fill-mask"]
    timed = {t["variant"]: t for t in tuned["timings"]}
    assert set(timed) == {"fp32", "fp16", "int8"}  # every variant that runs on this CPU, its gate passed
    assert set(timed["int8"]["median_ms"]) == {"1 text", "32 texts", "PLL of 1 text"}
    # relative: the geometric mean of a variant's per-workload ratios to the fastest there (>= 1); the winner's
    # is the least (1.0 only where it won every workload)
    assert all(t["relative"] >= 1.0 for t in timed.values())
    assert timed[tuned["winner"]]["relative"] == min(t["relative"] for t in timed.values())
    validate(json.loads(Path(document["path"]).read_text()))  # the record file is a tuning-v1 document
    path = Path(document["path"])
    assert path.parent == cache / "tuning" and path.name.startswith(manifest_sha256(before["manifest.json"]))
    assert {p.name: p.read_bytes() for p in artifact.iterdir()} == before  # the artifact is untouched
    filler = OnnxMaskFiller.from_pretrained(artifact, providers="auto")
    assert filler.variant == tuned["winner"] and "mlm-export tune" in filler.graph.why
    shown = json.loads(CliRunner().invoke(main, ["info", str(artifact), "--json"]).stdout)
    assert shown["default_variants"]["fill-mask"]["variant"] == tuned["winner"]
    assert shown["default_variants"]["fill-mask"]["tuned"] is True


def test_auto_reads_the_record_and_info_says_why(tiny_variants: Path, cache: Path) -> None:
    table = OnnxMaskFiller.from_pretrained(tiny_variants, providers="auto")
    assert table.variant == "int8" and "policy table" in table.graph.why and cpu_model() in table.graph.why
    _write_record(tiny_variants, "fp32")  # a machine where fp32 measured fastest
    assert OnnxMaskFiller.from_pretrained(tiny_variants, providers="auto").variant == "fp32"
    assert OnnxMaskFiller.from_pretrained(tiny_variants, providers="cpu").variant == "int8"  # not auto: the table
    assert OnnxMaskFiller.from_pretrained(tiny_variants, variant="int8").variant == "int8"  # asked for
    text = CliRunner().invoke(main, ["info", str(tiny_variants)]).output
    assert "default variant here: fp32 (CPUExecutionProvider)" in text and "measured fastest on this CPU" in text
    forgot = CliRunner().invoke(main, ["tune", str(tiny_variants), "--forget"])
    assert forgot.exit_code == 0 and "removed" in forgot.output
    assert OnnxMaskFiller.from_pretrained(tiny_variants, providers="auto").variant == "int8"
    again = CliRunner().invoke(main, ["tune", str(tiny_variants), "--forget", "--json"])
    assert json.loads(again.stdout) == {"schema": "tune-v1", "path": None, "forgot": []}
    with_threads = CliRunner().invoke(main, ["tune", str(tiny_variants), "--forget", "--threads", "2"])
    assert with_threads.exit_code == 2 and "--forget" in with_threads.output


def test_forget_one_task_keeps_the_others_and_tune_merges_tasks(tiny_tasks: Path, cache: Path) -> None:
    """Two tune runs of different tasks both land (the second merges with the record on disk); --forget
    --task removes that task only."""
    records = {}
    for task in ("sparse", "embed"):
        done = CliRunner().invoke(main, ["tune", str(tiny_tasks), "--task", task, "--repeats", "1", "--json"])
        assert done.exit_code == 0, done.output
        records[task] = json.loads(done.stdout)["record"]
    assert set(records["sparse"]["tasks"]) == {"sparse"} and set(records["embed"]["tasks"]) == {"sparse", "embed"}
    forgot = json.loads(CliRunner().invoke(main, ["tune", str(tiny_tasks), "--forget", "--task", "sparse",
                                                  "--json"]).stdout)
    assert forgot["forgot"] == ["sparse"]
    path = Path(forgot["path"])
    assert set(json.loads(path.read_text())["tasks"]) == {"embed"}


def test_a_record_of_another_cpu_or_a_lost_winner_is_not_used(tiny_variants: Path, cache: Path) -> None:
    _write_record(tiny_variants, "fp32", model="Some Other CPU")  # another machine's file: another name
    assert OnnxMaskFiller.from_pretrained(tiny_variants, providers="auto").variant == "int8"
    path = _write_record(tiny_variants, "fp32")
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | {"cpu_model": "Some Other CPU"}))  # copied from another machine
    assert OnnxMaskFiller.from_pretrained(tiny_variants, providers="auto").variant == "int8"
    path = _write_record(tiny_variants, "bf16")  # a winner this artifact does not have (a re-export without it)
    filler = OnnxMaskFiller.from_pretrained(tiny_variants, providers="auto")
    assert filler.variant == "int8" and "does not run here now" in filler.graph.why
    path.write_text("{not json")  # a broken record never fails a load
    assert OnnxMaskFiller.from_pretrained(tiny_variants, providers="auto").variant == "int8"
    good = json.loads(_write_record(tiny_variants, "fp32").read_text())
    fill = good["tasks"]["fill-mask"]
    for broken in (good | {"tasks": []}, good | {"tasks": {"fill-mask": fill | {"winner": ["fp32"]}}},
                   good | {"tasks": {"fill-mask": fill | {"timings": [{"variant": "fp32", "relative": "x"}]}}},
                   good | {"tasks": {"fill-mask": fill | {"winner": "int8"}}}):  # a winner it never timed
        path.write_text(json.dumps(broken))
        filler = OnnxMaskFiller.from_pretrained(tiny_variants, providers="auto")
        assert filler.variant == "int8" and "policy table" in filler.graph.why
        shown = CliRunner().invoke(main, ["info", str(tiny_variants)])
        assert shown.exit_code == 0 and "policy table" in shown.output


def test_tune_errors_are_clear(tiny_variants: Path, tmp_path: Path, cache: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    missing = CliRunner().invoke(main, ["tune", str(tmp_path / "nothing"), "--json"])
    assert missing.exit_code != 0 and json.loads(missing.stdout)["schema"] == "error-v1"
    no_task = CliRunner().invoke(main, ["tune", str(tiny_variants), "--task", "sparse"])
    assert no_task.exit_code != 0 and "has no sparse graph" in no_task.output
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocked / "cache"))  # the cache cannot be created under a file (even by root)
    result = CliRunner().invoke(main, ["tune", str(tiny_variants), "--repeats", "1", "-q"])
    assert result.exit_code != 0 and "MLM_EXPORT_CACHE" in result.output and "Error:" in result.output
