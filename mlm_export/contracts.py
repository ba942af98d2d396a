"""The JSON documents mlm-export prints under `--json`: one versioned JSON Schema per document.

Every document carries `"schema": "<name>"`, and `mlm_export/schemas/<name>.schema.json` (shipped
in the wheel, printed by `mlm-export schema <name>`) describes it: `export-v2`, `verify-v1`,
`integrity-v1` (`verify --integrity`), `predict-v1`, `score-v2` (+ `score-row-v2` for the rows),
`encode-v1` (+ `encode-row-v1`), `variants-v1`, `slim-v1`, `triton-v1`, `info-v3`, `sign-v1`, `tune-v1`,
`keygen-v1`, `schemas-v1` (the list `mlm-export schema` prints), `tuning-v1` (a tuning record in the user's
cache, which `tune-v1` carries), and
`error-v1` for a failure of any command. The artifact's manifest is `manifest-v6` (format 6: the
fill-mask graph's `score_positions` input); formats 5 to 2 (`manifest-v5`: the sparse and embed tasks,
`manifest-v4`: the family as a name) are still read: see `manifest.SCHEMAS`. A schema lists every
field of its version (`additionalProperties: false`;
`info-v3` also carries the manifest's own fields, which its manifest schema checks, and `score-row-v2`
the input's kept columns), so a field is
added, renamed or removed only with a new version name. `export-v2` and `info-v3` carry a manifest of
any format read, each checked by the schema of its `format_version`.
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources
from typing import Any

from .manifest import FORMAT_VERSION, SCHEMAS

DOCUMENTS = {"export": "export-v2", "verify": "verify-v1", "integrity": "integrity-v1", "predict": "predict-v1",
             "score": "score-v2", "encode": "encode-v1", "variants": "variants-v1",
             "slim": "slim-v1", "triton": "triton-v1", "info": "info-v3", "sign": "sign-v1", "tune": "tune-v1",
             "keygen": "keygen-v1", "schema": "schemas-v1", "error": "error-v1"}
# files mlm-export keeps outside artifacts: the tuning records in the user's cache (runtime.tuning_records)
RECORDS = {"tuning": "tuning-v1"}
# documents written one per line, which carry no schema field
ROWS = {"score": "score-row-v2", "encode": "encode-row-v1"}
# the manifest's schemas are manifest.py's, which picks one per format_version
READ_MANIFEST_SCHEMAS = tuple(file.removesuffix(".schema.json") for file in SCHEMAS.values())  # what is read
MANIFEST_SCHEMA = SCHEMAS[FORMAT_VERSION].removesuffix(".schema.json")  # what export writes


def schema_names() -> list[str]:
    """Every schema shipped with the package."""
    return sorted(p.name.removesuffix(".schema.json") for p in resources.files("mlm_export.schemas").iterdir()
                  if p.name.endswith(".schema.json"))


def stamp(document: str, payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` as the `document` ("export", "error", ...), its schema named first."""
    return {"schema": DOCUMENTS[document], **payload}


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema called `name` (e.g. "export-v2"); KeyError for a name that does not exist."""
    if name not in schema_names():
        raise KeyError(f"no schema {name!r}; there are {', '.join(schema_names())}")
    text = resources.files("mlm_export.schemas").joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def validate(document: dict[str, Any], name: str | None = None) -> None:
    """Raise `jsonschema.ValidationError` unless `document` matches its schema (`name`, else its
    `schema` field). For consumers and tests: the CLI does not validate what it prints."""
    import jsonschema

    name = name or document.get("schema")
    if not isinstance(name, str):
        raise jsonschema.ValidationError("the document has no 'schema' field naming its schema")
    validator = jsonschema.Draft202012Validator(load_schema(name), registry=_registry())
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        raise error


@functools.cache
def _registry() -> Any:
    """Every shipped schema under its `$id`, so that documents can `$ref` the manifest's."""
    from referencing import Registry, Resource

    return Registry().with_resources(
        (load_schema(name)["$id"], Resource.from_contents(load_schema(name))) for name in schema_names())


def dumps(document: Any, indent: int | None = 2) -> str:
    """A document as strict JSON, indented (`indent=None`: one line, for a JSON Lines stream): NaN and
    infinity (e.g. in a broken graph's parity figures) become null, since JSON has neither and a
    consumer's parser would reject them."""
    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(document), indent=indent, allow_nan=False,
                      separators=None if indent else (",", ":"))
