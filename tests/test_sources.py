"""Model sources: local directories, hub ids offline, built-ins, and checkpoints without a head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlm_export import ExportConfig, MissingHeadError, SourceError, export_model
from mlm_export.exporter.model import load_model
from mlm_export.exporter.source import resolve
from mlm_export.exporter.tokenizer import load_tokenizer


def test_encoder_only_checkpoint_is_refused_naming_the_head(minilm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "minilm"
    with pytest.raises(MissingHeadError) as info:
        export_model(ExportConfig(str(minilm_dir), out=out))
    message = str(info.value)
    assert "no trained MLM head" in message
    for name in ("cls.predictions.transform.dense.weight", "cls.predictions.bias"):
        assert name in message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_unreachable_hub_id_is_an_error_with_advice() -> None:
    with pytest.raises(SourceError, match="pass a local model directory"):
        resolve("mlm-export-tests/no-such-model-0b7f")


def test_missing_local_path_is_not_mistaken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is not a directory"):
        resolve(str(tmp_path / "missing" / "model"))


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no config.json"):
        resolve(str(tmp_path))


def test_an_unsupported_family_is_refused_at_resolve_naming_the_supported_ones(tiny_dir: Path, tmp_path: Path) -> None:
    """Before any slow work: resolving reads config.json only."""
    import shutil

    copy = Path(shutil.copytree(tiny_dir, tmp_path / "gpt2"))
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = "gpt2"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceError, match="model_type 'gpt2' is not supported") as info:
        resolve(str(copy))
    for family in ("bert", "roberta", "distilbert", "electra", "albert", "esm"):
        assert family in str(info.value)


def test_antiberty_resolves_offline_to_the_packaged_checkpoint() -> None:
    source = resolve("antiberty")
    assert source.spec.kind == "builtin" and source.family.name == "bert"
    assert load_tokenizer(source).char_level
    assert [p.name for p in source.weight_files] == ["pytorch_model.bin"]
    model = load_model(source)
    assert not model.training
    assert model.config.num_hidden_layers == 8 and model.config.vocab_size == 25
    # the decoder is tied to the word embeddings, so exporting it once is enough
    assert model.cls.predictions.decoder.weight.data_ptr() == \
        model.bert.embeddings.word_embeddings.weight.data_ptr()


def test_antiberty_tokenizer_is_case_sensitive_and_accepts_unspaced_sequences() -> None:
    tok = load_tokenizer(resolve("antiberty")).tokenizer
    spaced = tok.encode("E V Q L [MASK] E S G G").tokens
    unspaced = tok.encode("EVQL[MASK]ESGG").tokens
    assert spaced == unspaced == ["[CLS]", "E", "V", "Q", "L", "[MASK]", "E", "S", "G", "G", "[SEP]"]
    assert "[UNK]" not in tok.encode("ACDEFGHIKLMNPQRSTVWY").tokens


def test_minilm_tokenizer_has_padding_and_truncation_cleared(minilm_dir: Path) -> None:
    source = resolve(str(minilm_dir))
    tok = load_tokenizer(source).tokenizer
    assert tok.padding is None and tok.truncation is None
    assert len(tok.encode("hello [MASK] " * 100).ids) > 128
