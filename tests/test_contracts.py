"""The --json contracts: each shipped schema is valid, and real CLI outputs (errors too) match theirs.

Besides these, conftest checks every `--json` CLI run of every test against the schema it names.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from mlm_export.cli import main
from mlm_export.contracts import (
    DOCUMENTS,
    MANIFEST_SCHEMA,
    READ_MANIFEST_SCHEMAS,
    RECORDS,
    ROWS,
    load_schema,
    schema_names,
    validate,
)

FILL_MASK_FORMAT = 6  # the fill-mask graph takes score_positions (format 6; manifest.format_for)


def _json(args: list[str], code: int = 0) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == code, result.output
    document = json.loads(result.stdout)
    validate(document)
    return document


@pytest.mark.parametrize("name", schema_names())
def test_every_shipped_schema_is_valid_and_named_after_its_file(name: str) -> None:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"].endswith(f"/{name}.schema.json")
    if name in DOCUMENTS.values():
        assert schema["properties"]["schema"] == {"const": name, "description": schema["properties"]["schema"]
                                                  ["description"]}


def test_every_document_and_row_has_a_schema() -> None:
    assert (set(DOCUMENTS.values()) | set(ROWS.values()) | set(RECORDS.values()) | set(READ_MANIFEST_SCHEMAS)
            == set(schema_names()))
    assert MANIFEST_SCHEMA in READ_MANIFEST_SCHEMAS


def test_the_validator_rejects_a_missing_or_an_undocumented_field(tiny_artifact: Path) -> None:
    document = _json(["predict", str(tiny_artifact), "the [MASK] sat ."])
    with pytest.raises(jsonschema.ValidationError, match="'results' is a required property"):
        validate({k: v for k, v in document.items() if k != "results"})
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        validate(document | {"latency_ms": 3})
    with pytest.raises(jsonschema.ValidationError, match="no 'schema' field"):
        validate({"results": []})


def test_predict_one_mask_and_several(tiny_artifact: Path) -> None:
    document = _json(["predict", str(tiny_artifact), "the [MASK] sat .", "a [MASK] ran to the [MASK] ."])
    assert document["schema"] == "predict-v1"
    one, two = document["results"]
    assert isinstance(one[0], dict) and len(two) == 2 and isinstance(two[0][0], dict)


def test_info_is_the_manifest_plus_what_this_machine_would_load(tiny_artifact: Path) -> None:
    document = _json(["info", str(tiny_artifact)])
    assert document["schema"] == "info-v3" and document["format_version"] == FILL_MASK_FORMAT
    validate({k: v for k, v in document.items() if k not in ("schema", "default_variant", "default_variants",
                                                          "signature")}, "manifest-v6")
    broken = dict(document)
    del broken["graphs"]  # a manifest field: the info schema checks it through the manifest's
    with pytest.raises(jsonschema.ValidationError, match="'graphs' is a required property"):
        validate(broken)


def test_score_summary_and_rows(tiny_artifact: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat\n\nthe dog ran\n")
    out = tmp_path / "scores.jsonl"
    summary = _json(["score", str(tiny_artifact), str(texts), "-o", str(out), "--per-token"])
    assert summary["schema"] == "score-v2" and summary["rows"] == 3 and summary["scored"] == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        validate(row, ROWS["score"])
    assert rows[1]["error"] and rows[1]["pll"] is None
    with pytest.raises(jsonschema.ValidationError):
        validate(rows[0] | {"error": "made up"}, ROWS["score"])  # an error row cannot carry a score
    for field in ("variant", "provider", "unknown_tokens"):  # v2: every row says what scored it
        with pytest.raises(jsonschema.ValidationError, match=f"'{field}' is a required property"):
            validate({k: v for k, v in rows[0].items() if k != field}, ROWS["score"])
    streamed = CliRunner().invoke(main, ["score", str(tiny_artifact), str(texts), "--json"])
    assert streamed.exit_code == 0
    for line in streamed.stdout.splitlines():
        validate(json.loads(line), ROWS["score"])


def test_triton_keygen_sign(tiny_copy: Path, tmp_path: Path) -> None:
    assert _json(["triton", str(tiny_copy), "--repo", str(tmp_path / "repo")])["schema"] == "triton-v1"
    keys = _json(["keygen", str(tmp_path / "key")])
    assert keys["schema"] == "keygen-v1"
    assert _json(["sign", str(tiny_copy), "--key", keys["private_key"]])["schema"] == "sign-v1"


@pytest.mark.parametrize("args,code,kind", [
    (["predict", "{missing}", "a [MASK]"], 1, "ArtifactError"),
    (["predict", "{artifact}", "a [MASK]", "--top-k", "0"], 2, "UsageError"),
    (["score", "{artifact}", "{missing}"], 1, "InputError"),
    (["nonsense-command-or-model-that-is-not-there"], 1, "SourceError"),
])
def test_errors_are_documents_too(tiny_artifact: Path, tmp_path: Path, args: list[str], code: int,
                                  kind: str) -> None:
    args = [a.format(artifact=tiny_artifact, missing=tmp_path / "missing") for a in args]
    document = _json(args, code)
    assert document["schema"] == "error-v1"
    assert document["error"]["type"] == kind and document["error"]["exit_code"] == code


def test_schema_command_prints_each_schema(tmp_path: Path) -> None:
    listing = CliRunner().invoke(main, ["schema"])
    assert listing.exit_code == 0 and listing.stdout.split() == schema_names()
    assert _json(["schema"]) == {"schema": "schemas-v1", "schemas": schema_names()}
    assert json.loads(CliRunner().invoke(main, ["schema", "slim-v1", "--json"]).stdout) == load_schema("slim-v1")
    shown = CliRunner().invoke(main, ["schema", "error-v1"])
    assert json.loads(shown.stdout) == load_schema("error-v1")
    unknown = CliRunner().invoke(main, ["schema", "error-v9"])
    assert unknown.exit_code == 2 and "no schema 'error-v9'" in unknown.stderr
