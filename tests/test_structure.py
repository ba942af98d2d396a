"""The architecture's promises, checked: the serving side never imports torch, no import cycles inside the
package (lazy imports count), the package never imports the benchmarks, no folder named like build output,
and the public surface (`__all__`) is what the package exports."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mlm_export
from mlm_export import variants

PACKAGE = Path(mlm_export.__file__).parent
HEAVY = ("torch", "transformers", "optimum", "onnxscript")

# A subprocess in which importing torch (or transformers, optimum) fails, as in an app that installed
# only `mlm-export[cpu]`: it opens an artifact, fills masks, scores, and runs the CLI's predict and info.
_TORCH_FREE = r"""
import importlib.abc, json, sys

class NoHeavy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} is not installed (the serving install has no torch)")
        return None

HEAVY = set(sys.argv[2].split(","))
sys.meta_path.insert(0, NoHeavy())
from click.testing import CliRunner
from mlm_export import Artifact, OnnxMaskFiller
from mlm_export.cli import main

artifact = Artifact.open(sys.argv[1])
filler = OnnxMaskFiller.from_pretrained(artifact, providers="cpu")
answer = filler("the [MASK] sat", top_k=3)
score = filler.score("the cat sat")
predict = CliRunner().invoke(main, ["predict", sys.argv[1], "a [MASK] b", "--json"])
info = CliRunner().invoke(main, ["info", sys.argv[1], "--json"])
print(json.dumps({"tokens": [c["token_str"] for c in answer], "pll": score.pll, "graphs": list(artifact.graphs),
                  "predict": predict.exit_code, "info": info.exit_code,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)}))
"""


def test_the_serving_path_never_imports_torch(tiny_artifact: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _TORCH_FREE, str(tiny_artifact), ",".join(HEAVY)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(out["tokens"]) == 3 and out["pll"] < 0 and out["graphs"]
    assert out["predict"] == 0 and out["info"] == 0
    assert out["heavy"] == []


def test_the_blocker_would_catch_an_import_of_torch() -> None:
    """The check above can fail: under the same blocker, importing torch in the child is an error."""
    code = _TORCH_FREE.split("from click.testing import CliRunner")[0] + "import torch\n"
    result = subprocess.run([sys.executable, "-c", code, "unused", ",".join(HEAVY)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "the serving install has no torch" in result.stderr


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of any package this file imports, lazy imports included, TYPE_CHECKING blocks excluded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    package = _module_name(path).split(".") if path.name == "__init__.py" else _module_name(path).split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            found.add(node.args[0].value)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_inside_the_package() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_never_imports_the_benchmarks() -> None:
    offenders = {name for name, path in ((_module_name(p), p) for p in PACKAGE.rglob("*.py"))
                 if any(m.split(".")[0] == "benchmarks" for m in _imports(path))}
    assert offenders == set()


def test_no_package_folder_is_named_like_build_output() -> None:
    folders = {p.name for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert not folders & {"build", "dist", "out", "target"}


def test_torch_free_packages_import_no_torch_side_module() -> None:
    """The serving side (artifact, runtime, batch, triton, variants, manifest) never imports the exporter,
    verify or the passes, which need torch or onnx at import or call time."""
    graph = _graph()
    serving = [m for m in graph if m.split(".")[1:2] and m.split(".")[1] in
               ("artifact", "runtime", "batch", "triton", "variants", "manifest", "errors")]
    torch_side = {m for m in graph if len(m.split(".")) > 1 and m.split(".")[1] in ("exporter", "verify", "passes")}
    assert serving
    for module in serving:
        assert not graph[module] & torch_side, module


def test_every_public_name_is_exported_and_loads() -> None:
    for name in mlm_export.__all__:
        assert getattr(mlm_export, name) is not None, name
    assert {"Artifact", "OnnxMaskFiller", "PLLScore", "ScoreOptions", "Candidate", "LoadedGraph"} <= set(
        mlm_export.__all__)


@pytest.mark.parametrize("precision", sorted(variants.PRECISIONS))
def test_every_precision_runs_where_verify_judges_it(precision: str) -> None:
    """The policy table agrees with itself: where verify judges a precision, it runs as built."""
    home = variants.judged_on(precision, "cpu")
    assert variants.runs_on(precision, variants.BACKEND_NAMES[home])


def test_policy_never_prefers_a_precision_where_it_does_not_run() -> None:
    for (_task, backend), names in variants.PREFERENCE.items():
        assert all(variants.runs_on(name, backend) for name in names), (backend, names)
    assert not variants.runs_on("int8", variants.CUDA) and not variants.runs_on("bf16", variants.CPU)
