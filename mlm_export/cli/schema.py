"""`mlm-export schema [NAME]`: the JSON Schemas of the `--json` documents."""

from __future__ import annotations

import json

import click

from ._common import command, common_options, _out


@command("schema")
@click.argument("name", required=False)
@common_options
def schema_command(name: str | None, as_json: bool) -> None:
    """Print the JSON Schema NAME (e.g. export-v2, error-v1, manifest-v4), or list them all.

    Every --json document names its schema in its "schema" field. A schema is JSON already: NAME
    prints the same with or without --json.
    """
    from ..contracts import load_schema, schema_names

    if name is None:
        _out().result("schema", {"schemas": schema_names()}, "\n".join(schema_names()))
        return
    try:
        schema = load_schema(name)
    except KeyError:
        raise click.BadParameter(f"no schema {name!r}; choose from {', '.join(schema_names())}",
                                 param_hint="NAME") from None
    _out().echo(json.dumps(schema, indent=2))
