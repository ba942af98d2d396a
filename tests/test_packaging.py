"""What the wheel promises users: typing (py.typed, TypedDicts that match the results), license, version."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from pathlib import Path

from click.testing import CliRunner

from mlm_export import OnnxMaskFiller
from mlm_export.cli import main
from mlm_export.manifest import FORMAT_VERSION
from mlm_export.runtime.predictor import Candidate


def test_the_package_is_marked_typed() -> None:
    assert importlib.resources.files("mlm_export").joinpath("py.typed").is_file()


def test_candidate_typeddict_names_exactly_the_keys_returned(tiny_artifact: Path) -> None:
    filler = OnnxMaskFiller.from_pretrained(tiny_artifact)
    with_sequence = filler("the [MASK] sat", top_k=2)[0]
    without = filler("the [MASK] sat", top_k=2, return_sequence=False)[0]
    assert set(with_sequence) == set(Candidate.__annotations__)
    assert set(without) == Candidate.__required_keys__
    assert {type(v) for v in without.values()} == {float, int, str}


def test_license_and_classifiers_are_in_the_metadata() -> None:
    meta = importlib.metadata.metadata("mlm-export")
    assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier")
    assert (Path(__file__).parents[1] / "LICENSE").read_text().startswith("MIT License")


def test_version_names_the_artifact_format() -> None:
    out = CliRunner().invoke(main, ["--version"]).stdout
    assert f"artifact format {FORMAT_VERSION}" in out
