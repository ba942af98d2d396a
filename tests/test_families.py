"""Every family on real weights where they exist: AntiBERTy rewritten exactly into the RoBERTa,
DistilBERT and ELECTRA layouts, rxnmapper's ALBERT and rxnfp's BERT from PyPI; seeded tiny models
for ESM and for BPE / Unigram tokenizers."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import layouts
from conftest import fewer_realistic_probes
from mlm_export import ExportConfig, InputError, MissingHeadError, OnnxMaskFiller, SourceError, export_model
from mlm_export.passes.fuse import attention_branch_first
from mlm_export.exporter.model import load_model
from mlm_export.exporter.source import resolve
from mlm_export.families import FAMILIES, family_of
from mlm_export.verify import antibody_sequences

LAYOUT_INPUTS = {"roberta": ("input_ids", "attention_mask"), "distilbert": ("input_ids", "attention_mask"),
                 "electra": ("input_ids", "attention_mask", "token_type_ids")}


def _texts_with_masks(mask: str, every: int = 9, chains: int = 4) -> list[str]:
    """Real antibody chains, every `every`-th residue masked, one mask per text."""
    texts = []
    for chain in antibody_sequences()[:chains]:
        for i in range(3, len(chain) - 3, every):
            texts.append(chain[:i] + mask + chain[i + 1:])
    return texts


def _hf_top1(model_dir: Path, texts: list[str], mask: str) -> list[int]:
    """Each family's own transformers model, fed the artifact's token ids: the answer to match."""
    from tokenizers import Tokenizer

    from mlm_export.exporter.tokenizer import load_tokenizer

    source = resolve(str(model_dir))
    model = load_model(source)
    tokenizer: Tokenizer = load_tokenizer(source).tokenizer
    mask_id = tokenizer.token_to_id(mask)
    answers: dict[str, int] = {}
    by_length: dict[int, list[tuple[str, list[int]]]] = {}
    for text in texts:  # one batch per token length (a chain's masked copies): no padding to get wrong
        ids = tokenizer.encode(text).ids
        by_length.setdefault(len(ids), []).append((text, ids))
    for group in by_length.values():
        ids = torch.tensor([row for _, row in group])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        rows, columns = (ids == mask_id).nonzero(as_tuple=True)
        assert rows.tolist() == list(range(len(group))), "one mask per text"
        for (text, _), best in zip(group, logits[rows, columns].argmax(-1).tolist()):
            answers[text] = int(best)
    return [answers[text] for text in texts]


def test_rewrites_reproduce_antiberty_in_pytorch(antiberty_bert: Any, antiberty_layouts: dict[str, Path]) -> None:
    from transformers import AutoModelForMaskedLM

    ids = torch.tensor([[2, *range(5, 25), 4, 9, 11, 3], [2, 5, 6, 4, 8, 3] + [0] * 19])
    mask = (ids != 0).long()
    with torch.no_grad():
        reference = antiberty_bert(input_ids=ids, attention_mask=mask).logits
        for family, directory in antiberty_layouts.items():
            model = AutoModelForMaskedLM.from_pretrained(directory).eval()
            assert type(model).__name__ == FAMILIES[family].model_class
            got = model(input_ids=ids, attention_mask=mask).logits
            assert float((got - reference)[mask.bool()].abs().max()) < 1e-4, family


# ELECTRA's and DistilBERT's fused graphs are op for op BERT's (EmbedLayerNormalization, Attention),
# whose int8 gate the AntiBERTy export covers; RoBERTa's differs (no EmbedLayerNormalization, positions
# from the padding), so its int8 is exported here. The suite's time budget decides the rest.
WITH_INT8 = ("roberta",)


@pytest.fixture(scope="module")
def layout_exports(antiberty_layouts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each layout exported as AntiBERTy is, gated on the same packaged antibody chains."""
    root = tmp_path_factory.mktemp("layout-artifacts")
    exports = {}
    for family, directory in antiberty_layouts.items():
        # int8's gate is checked on all 360 positions; the fp32-only layouts on a sixth (their parity is exact)
        with contextlib.nullcontext() if family in WITH_INT8 else fewer_realistic_probes(60):
            exports[family] = export_model(ExportConfig(str(directory), out=root / family, int8=family in WITH_INT8))
    return exports


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_rewritten_layouts_pass_antibertys_gates(layout_exports: dict[str, Any], family: str) -> None:
    manifest = layout_exports[family].manifest
    assert manifest.family == family and manifest.model.architecture == FAMILIES[family].model_class
    assert manifest.model.max_length == 512  # RoBERTa: 513 positions, pad id 0
    for name, graph in manifest.graphs.items():
        controls = () if graph.form == "logits" else ("target_ids", "exclude_special", "score_positions", "top_k")
        expected = LAYOUT_INPUTS[family] + controls
        assert graph.input_names == expected and graph.family == family
        assert graph.parity["passed"], (name, graph.parity["failures"])
    fused = manifest.graphs["fp32"].fusion
    assert fused["mode"] == "required" and fused["attention"] == fused["expected_attention"] == 8
    assert manifest.graphs["fp32"].parity["top1_agreement"] == 1.0
    if family in WITH_INT8:
        int8 = manifest.graphs["int8"].parity
        assert int8["gated_on"] == "antibody" and int8["masked_positions"] >= 300
        assert int8["top1_agreement"] >= 0.995 and int8["topk_overlap"] >= 0.99


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_the_filler_answers_as_the_familys_own_transformers_model(
        layout_exports: dict[str, Any], antiberty_layouts: dict[str, Path], family: str) -> None:
    artifact = layout_exports[family].path
    fp32 = OnnxMaskFiller.from_pretrained(artifact, variant="fp32", providers="cpu")
    texts = _texts_with_masks(fp32.mask_token)
    expected = _hf_top1(antiberty_layouts[family], texts, fp32.mask_token)
    assert [r[0]["token"] for r in fp32(texts, top_k=1)] == expected
    if family in WITH_INT8:
        int8 = OnnxMaskFiller.from_pretrained(artifact, providers="cpu")
        assert int8.variant == "int8"
        agree = np.mean([r[0]["token"] == e for r, e in zip(int8(texts, top_k=1), expected)])
        assert agree >= 0.97, agree


def test_roberta_artifacts_use_their_own_mask_token(layout_exports: dict[str, Any]) -> None:
    filler = OnnxMaskFiller.from_pretrained(layout_exports["roberta"].path, providers="cpu")
    assert filler.mask_token == "<mask>"
    assert filler("EVQLVESGG<mask>LVQPGGSLRLSCAAS", top_k=1)[0]["token_str"] == "G"
    with pytest.raises(InputError, match="has no <mask> token"):
        filler("EVQLVESGG[MASK]LVQPGGSLRLSCAAS")


def test_optimum_loads_the_roberta_logits_form(layout_exports: dict[str, Any]) -> None:
    from optimum.onnxruntime import ORTModelForMaskedLM

    artifact = layout_exports["roberta"].path
    model = ORTModelForMaskedLM.from_pretrained(artifact, file_name="model.onnx")
    ids = torch.tensor([[0, 9, 13, 22, 4, 10, 2]])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert tuple(logits.shape) == (1, 7, 25)


def test_the_tied_matrix_is_stored_once_in_every_graph(layout_exports: dict[str, Any]) -> None:
    artifact = layout_exports["roberta"].path
    for name in ("model.onnx", "fill_mask.fp32.onnx"):
        graph = onnx.load(str(artifact / name)).graph
        embeddings = [t.name for t in graph.initializer if list(t.dims) in ([25, 512], [512, 25])]
        assert len(embeddings) == 1, (name, embeddings)


# --- chemistry checkpoints shipped on PyPI ---

def test_rxnmappers_albert_fuses_every_layer_and_fills_a_reaction(rxnmapper_albert: Path, reactions_file: Path,
                                                                   tmp_path: Path) -> None:
    texts = tuple(reactions_file.read_text().splitlines())
    result = export_model(ExportConfig(str(rxnmapper_albert), out=tmp_path / "albert", probe_texts=texts))
    manifest = result.manifest
    assert manifest.family == "albert" and manifest.tokenizer.scheme == "smiles"
    fused = manifest.graphs["fp32"].fusion
    assert fused["attention"] == fused["expected_attention"] == 12  # 11 of 12 before the residual fix
    assert manifest.graphs["fp32"].weight_bytes <= 1.05 * manifest.model.float32_parameter_bytes  # shared layers
    filler = OnnxMaskFiller.from_pretrained(result.path, providers="cpu")
    best = filler("CC(=O)O.OCC>>CCOC([MASK])=O", top_k=1)[0]  # ethyl acetate
    assert best["token_str"] == "C" and best["sequence"] == "CC(=O)O.OCC>>CCOC(C)=O"


def test_rxnfps_bert_without_model_type_exports_with_int8(rxnfp_bert: Path, tmp_path: Path) -> None:
    """Gated on the packaged reaction SMILES, which a SMILES vocabulary reads best."""
    config = json.loads((rxnfp_bert / "config.json").read_text())
    assert "model_type" not in config and "architectures" not in config
    result = export_model(ExportConfig(str(rxnfp_bert), out=tmp_path / "rxnfp", int8=True))
    assert result.manifest.family == "bert" and result.manifest.tokenizer.scheme == "smiles"
    assert result.manifest.probe_set == "reactions"
    assert result.manifest.graphs["int8"].parity["gated_on"] == "reactions"
    filler = OnnxMaskFiller.from_pretrained(result.path, providers="cpu")
    assert filler.variant == "int8" and len(filler("CC(=O)Cl.NCc1ccccc1>>CC(=O)NC[MASK]1ccccc1", top_k=3)) == 3


def test_the_albert_residual_fix_on_a_tiny_albert(tmp_path: Path) -> None:
    """ALBERT adds attention second; in the first layer the other summand is the embedding projection,
    whose MatMul + Add the optimizer's matcher walks into. Unswapped, that layer stays unfused."""
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AlbertConfig, AlbertForMaskedLM

    from mlm_export.passes.fuse import fuse
    from mlm_export.exporter.trace import export_fill_mask
    from mlm_export.families import ALBERT

    torch.manual_seed(5)
    model = AlbertForMaskedLM(AlbertConfig(vocab_size=40, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                                           num_attention_heads=4, intermediate_size=64,
                                           max_position_embeddings=32)).eval()
    raw = tmp_path / "albert.onnx"
    export_fill_mask(model, ALBERT, raw, 17, 4, (0, 1, 2, 3, 4))
    plain = optimize_model(str(raw), model_type="bert", num_heads=4, hidden_size=32, opt_level=0)
    assert plain.get_fused_operator_statistics()["Attention"] == 2  # of 3 layers
    graph = onnx.load(str(raw))
    assert attention_branch_first(graph) == 3 and attention_branch_first(graph) == 0  # every layer, once
    report = fuse(raw, tmp_path / "fused.onnx", num_heads=4, hidden_size=32, num_layers=3)
    assert report.attention == 3 and report.complete


# --- families no wheel ships: seeded tiny models ---

@pytest.mark.parametrize("positions,usable", [("rotary", 66), ("absolute", 66 - 1 - 1)])
def test_esm_exports_unfused_and_says_so(tmp_path: Path, positions: str, usable: int) -> None:
    from click.testing import CliRunner

    from mlm_export.cli import main

    source = layouts.tiny_esm(tmp_path / "esm", positions)
    result = export_model(ExportConfig(str(source), out=tmp_path / "art", int8=True))
    manifest = result.manifest
    assert manifest.family == "esm" and manifest.tokenizer.scheme == "characters"
    assert manifest.model.max_length == usable  # the synthetic probes reach it: a wrong length crashes them
    assert manifest.graphs["fp32"].input_names == ("input_ids", "attention_mask", "target_ids", "exclude_special",
                                                   "score_positions",
                                                   "top_k")
    for name in ("fp32", "int8"):
        fusion = manifest.graphs[name].fusion
        assert fusion["mode"] == "none" and fusion["expected_attention"] == 0 and fusion["complete"]
        assert manifest.graphs[name].parity["passed"]
    assert manifest.graphs["int8"].parity["gated_on"] == "antibody"  # amino-acid vocabulary
    row = next(r for r in CliRunner().invoke(main, ["info", str(result.path)]).stdout.splitlines()
               if r.split()[:1] == ["fp32"])
    assert row.split()[4] == "none"
    filler = OnnxMaskFiller.from_pretrained(result.path, providers="cpu")
    # any length up to the usable one, not only the one traced
    for length in (5, 30, usable - 3):
        assert len(filler("M" * length + "<mask>", top_k=2)) == 2
    with pytest.raises(InputError, match=f"at most {usable}"):
        filler("M" * (usable - 2) + "<mask>")


def test_roberta_with_a_byte_level_bpe(tmp_path: Path) -> None:
    source = layouts.tiny_roberta_bpe(tmp_path / "roberta")
    result = export_model(ExportConfig(str(source), out=tmp_path / "art", int8=True))
    manifest = result.manifest
    assert manifest.tokenizer.scheme == "bpe" and manifest.tokenizer.special_tokens["mask"] == "<mask>"
    assert manifest.probe_set == "english"  # BPE never says <unk>; English is what it reads in long pieces
    assert manifest.model.max_length == 66 - 1 - 1
    filler = OnnxMaskFiller.from_pretrained(result.path, providers="cpu")
    assert filler.tokenizer.encode("the cat <mask> .").tokens[:3] == ["<s>", "the", "Ġcat"]
    assert len(filler("the cat <mask> on the mat .", top_k=3)) == 3


def test_xlm_roberta_with_a_unigram_tokenizer_without_template(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    source = layouts.tiny_xlm_roberta_unigram(tmp_path / "xlmr")
    with caplog.at_level(logging.WARNING, logger="mlm_export"):
        result = export_model(ExportConfig(str(source), out=tmp_path / "art"))
    assert "adds no <s> ... </s>" in caplog.text
    filler = OnnxMaskFiller.from_pretrained(result.path, providers="cpu")
    tokens = filler.tokenizer.encode("the cat <mask> .").tokens
    assert tokens[0] == "<s>" and tokens[-1] == "</s>" and "<mask>" in tokens
    assert result.manifest.family == "xlm-roberta" and len(filler("the <mask> sat", top_k=2)) == 2


def test_bert_for_pretraining_checkpoints_load_without_their_nsp_head(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import BertForMaskedLM, BertForPreTraining

    masked = BertForMaskedLM.from_pretrained(tiny_dir)
    pretraining = BertForPreTraining(masked.config)
    pretraining.load_state_dict(masked.state_dict(), strict=False)
    directory = tmp_path / "pretraining"
    pretraining.save_pretrained(directory)
    shutil.copyfile(tiny_dir / "vocab.txt", directory / "vocab.txt")
    result = export_model(ExportConfig(str(directory), out=tmp_path / "art"))
    assert result.manifest.family == "bert" and result.report.passed


def test_the_family_is_read_from_architectures_or_weight_names() -> None:
    assert family_of({"architectures": ["ElectraForMaskedLM"]}).name == "electra"
    assert family_of({}, lambda: ["roberta.embeddings.word_embeddings.weight", "lm_head.bias"]).name == "roberta"
    with pytest.raises(SourceError, match="several families"):
        family_of({}, lambda: ["bert.embeddings.x", "albert.embeddings.x"])
    with pytest.raises(SourceError, match=r"several families \(bert, roberta\)"):
        family_of({"architectures": ["BertForMaskedLM", "RobertaForMaskedLM"]})
    with pytest.raises(SourceError, match="add \"model_type\""):
        family_of({"architectures": ["GPT2LMHeadModel"]}, lambda: ["transformer.h.0.attn.weight"])


@pytest.mark.parametrize("family", ["roberta", "esm"])
def test_an_encoder_without_its_head_is_refused_naming_the_heads_weights(family: str, tmp_path: Path) -> None:
    source = {"roberta": layouts.tiny_roberta_bpe, "esm": layouts.tiny_esm}[family](tmp_path / family)
    from transformers import AutoModel

    AutoModel.from_pretrained(source).save_pretrained(source)  # the weights become the encoder's alone
    with pytest.raises(MissingHeadError, match="lm_head"):
        export_model(ExportConfig(str(source), out=tmp_path / "art"))
    assert not (tmp_path / "art").exists()


def test_special_tokens_named_only_by_the_vocabulary(tmp_path: Path) -> None:
    """albert-base-v2 mixes `<pad>`/`<unk>` with `[CLS]`/`[SEP]`/`[MASK]`; with no special_tokens_map.json
    the names come from what the vocabulary holds, never from a literal that is not there."""
    source = layouts.tiny_albert_unigram(tmp_path / "albert")
    result = export_model(ExportConfig(str(source), out=tmp_path / "art"))
    names = result.manifest.tokenizer.special_tokens
    assert (names["pad"], names["unk"], names["cls"], names["sep"], names["mask"]) == \
        ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")
    assert result.manifest.tokenizer.special_ids["pad"] == 0
    assert len(OnnxMaskFiller.from_pretrained(result.path, providers="cpu")("the [MASK] sat", top_k=2)) == 2


# --- the registry: a family is one module ---

NEW_FAMILY = '''
from mlm_export.families.bert import WORDPIECE_SPECIALS
from mlm_export.families.spec import FamilySpec

NEWFAMILY = FamilySpec(name="newfamily", model_types=("newfamily",), architectures=("NewFamilyForMaskedLM",),
                       weight_prefix="newfamily.", model_class="NewFamilyForMaskedLM", head_prefixes=("head.",),
                       token_types=False, specials=WORDPIECE_SPECIALS, encoder=lambda m: m.newfamily,
                       head=lambda m: m.head)
SPECS = (NEWFAMILY,)
'''


def _package(root: Path, modules: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], str]:
    """A package of family modules outside mlm_export, under a name of its own (no import cache shared)."""
    name = "families_" + "".join(c if c.isalnum() else "_" for c in root.name)
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, text in modules.items():
        (package / f"{module}.py").write_text(text)
    monkeypatch.syspath_prepend(str(root))
    return [str(package)], name


def test_the_registry_is_every_family_module_of_the_package() -> None:
    import importlib
    import pkgutil

    import mlm_export.families as families

    specs = [spec for info in pkgutil.iter_modules(families.__path__) if info.name != "spec"
             for spec in importlib.import_module(f"mlm_export.families.{info.name}").SPECS]
    assert sorted(s.name for s in specs) == list(FAMILIES) and len(specs) == len(FAMILIES)
    for name in ("BERT", "ROBERTA", "XLM_ROBERTA", "CAMEMBERT", "DISTILBERT", "ELECTRA", "ALBERT", "ESM"):
        spec = getattr(families, name)  # the names the registry had before it was collected
        assert FAMILIES[spec.name] is spec


def test_a_new_family_is_one_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlm_export.families import _collect

    found = _collect(*_package(tmp_path, {"newfamily": NEW_FAMILY}, monkeypatch))
    assert list(found) == ["newfamily"] and found["newfamily"].model_types == ("newfamily",)


@pytest.mark.parametrize("text,match", [
    ("X = 1\n", "defines no SPECS"),
    (NEW_FAMILY.replace('name="newfamily"', 'name="New Family"'), "not one a manifest can store"),
    (NEW_FAMILY.replace('model_types=("newfamily",)', 'model_types=("bert",)'), "already belongs"),
    (NEW_FAMILY.replace('weight_prefix="newfamily."', 'weight_prefix="bert."'), "shares its weight_prefix"),
], ids=["no SPECS", "a name no manifest stores", "a model_type taken", "a weight prefix taken"])
def test_a_family_module_the_registry_cannot_take_fails_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   text: str, match: str) -> None:
    from mlm_export.families import _collect

    bert = "from mlm_export.families.bert import SPECS\n"  # BERT registered first, then the module under test
    package = _package(tmp_path, {"bert": bert, "zz": text}, monkeypatch)
    with pytest.raises(ImportError, match=match):
        _collect(*package)


def test_code_that_needs_a_family_refuses_one_it_does_not_know_by_name() -> None:
    from mlm_export import ArtifactError
    from mlm_export.families import BERT, family_named

    assert family_named("bert") is BERT
    with pytest.raises(ArtifactError, match=r"'newfamily', which this mlm-export does not know \(it knows albert, "
                                            r"bert, .*xlm-roberta\).*upgrade"):
        family_named("newfamily")
    with pytest.raises(SourceError, match="model_type 'newfamily' is not supported; mlm-export supports albert, bert"):
        family_of({"model_type": "newfamily"})
