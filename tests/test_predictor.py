"""OnnxMaskFiller: the transformers fill-mask shape, batching, errors, providers, threads."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlm_export import ArtifactError, InputError, OnnxMaskFiller, ProviderError


@pytest.fixture(scope="module")
def filler(tiny_artifact: Path) -> OnnxMaskFiller:
    return OnnxMaskFiller.from_pretrained(tiny_artifact, providers="cpu")


def test_single_mask_gives_ranked_candidates(filler: OnnxMaskFiller) -> None:
    result = filler("the cat [MASK] on the mat .", top_k=4)
    assert len(result) == 4
    assert set(result[0]) == {"score", "token", "token_str", "sequence"}
    scores = [c["score"] for c in result]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    for c in result:
        assert c["token_str"].lstrip("#") in c["sequence"]
        assert "[MASK]" not in c["sequence"] and c["sequence"].startswith("the cat")


def test_several_masks_give_one_list_per_mask(filler: OnnxMaskFiller) -> None:
    result = filler("the [MASK] sat on the [MASK] .", top_k=3)
    assert len(result) == 2 and all(len(r) == 3 for r in result)
    # the other mask stays visible in each candidate sequence, with [CLS]/[SEP], as in transformers
    assert all(c["sequence"].count("[MASK]") == 1 for r in result for c in r)
    assert result[0][0]["sequence"].startswith("[CLS] the " + result[0][0]["token_str"])
    assert result[0][0]["sequence"].endswith(". [SEP]")


def test_list_input_matches_single_calls_despite_padding_and_sorting(filler: OnnxMaskFiller) -> None:
    texts = ["a [MASK] .", "the big red dog ran to the small blue [MASK] and the cat sat .",
             "[MASK]", "the [MASK] is on the [MASK] ."]
    batched = filler(texts, top_k=5)
    for text, got in zip(texts, batched):
        alone = filler(text, top_k=5)
        flat_got = got if isinstance(got[0], dict) else [c for r in got for c in r]
        flat_alone = alone if isinstance(alone[0], dict) else [c for r in alone for c in r]
        assert [c["token"] for c in flat_got] == [c["token"] for c in flat_alone]
        for a, b in zip(flat_got, flat_alone):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_small_batch_size_gives_same_answers(tiny_artifact: Path, filler: OnnxMaskFiller) -> None:
    small = OnnxMaskFiller.from_pretrained(tiny_artifact, providers="cpu", batch_size=1)
    texts = ["a [MASK] .", "the cat [MASK] .", "[MASK] dog"]
    assert [[c["token"] for c in r] for r in small(texts)] == \
        [[c["token"] for c in r] for r in filler(texts)]


def test_threads_share_one_filler(filler: OnnxMaskFiller) -> None:
    texts = [f"the {w} [MASK] on the mat ." for w in ("cat", "dog", "tree", "house")] * 8
    expected = [filler(t, top_k=3) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda t: filler(t, top_k=3), texts))
    assert [[c["token"] for c in r] for r in got] == [[c["token"] for c in r] for r in expected]


@pytest.mark.parametrize("bad,match", [
    ([], "no input texts"),
    ("", "is empty"),
    ("   ", "is empty"),
    ("the cat sat", r"has no \[MASK\]"),
    (["a [MASK]", 3], "not a string"),
])
def test_bad_inputs_are_refused(filler: OnnxMaskFiller, bad: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        filler(bad)  # type: ignore[arg-type]


def test_over_long_input_is_refused_with_the_limit(filler: OnnxMaskFiller) -> None:
    with pytest.raises(InputError, match="at most 64"):
        filler("the " * 70 + "[MASK]")
    assert len(filler("the " * 61 + "[MASK]")) == 5  # 61 + mask + [CLS] + [SEP] = 64 fits


@pytest.mark.parametrize("top_k", [0, -1, 2.5, True])
def test_bad_top_k(filler: OnnxMaskFiller, top_k: object) -> None:
    with pytest.raises(InputError, match="top_k"):
        filler("a [MASK]", top_k=top_k)  # type: ignore[arg-type]


def test_input_error_is_a_value_error(filler: OnnxMaskFiller) -> None:
    with pytest.raises(ValueError):
        filler("no mask here")


def test_unknown_variant_names_the_present_ones(tiny_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="has fp32"):
        OnnxMaskFiller.from_pretrained(tiny_artifact, variant="int4")


def test_auto_on_cpu_machine_picks_cpu(tiny_artifact: Path) -> None:
    import onnxruntime as ort

    filler = OnnxMaskFiller.from_pretrained(tiny_artifact, providers="auto")
    expected = ("CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers()
                else "CPUExecutionProvider")
    assert filler.provider == expected and filler.variant == "fp32"


def test_cuda_request_without_cuda_is_an_error(tiny_artifact: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the error path needs a CPU-only build")
    with pytest.raises(ProviderError, match="no CUDA provider"):
        OnnxMaskFiller.from_pretrained(tiny_artifact, providers="cuda")
    with pytest.raises(ProviderError, match="not available"):
        OnnxMaskFiller.from_pretrained(tiny_artifact, providers=["CUDAExecutionProvider"])


def test_unknown_provider_string(tiny_artifact: Path) -> None:
    with pytest.raises(ProviderError, match="unknown providers value"):
        OnnxMaskFiller.from_pretrained(tiny_artifact, providers="tpu")


def test_both_onnxruntime_wheels_are_named_in_the_error(tiny_artifact: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mlm_export.runtime import ort as ort_backend

    monkeypatch.setattr(ort_backend, "installed_wheels", lambda: ["onnxruntime", "onnxruntime-gpu"])
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("needs a CPU-only onnxruntime")
    with pytest.raises(ProviderError, match="pip uninstall -y onnxruntime onnxruntime-gpu"):
        OnnxMaskFiller.from_pretrained(tiny_artifact, providers="cuda")


def test_threads_option_is_applied(tiny_artifact: Path) -> None:
    filler = OnnxMaskFiller.from_pretrained(tiny_artifact, providers="cpu", threads=1)
    assert filler("a [MASK]")
    with pytest.raises(InputError, match="threads must be between 1 and"):
        OnnxMaskFiller.from_pretrained(tiny_artifact, providers="cpu", threads=0)


def test_the_threads_environment_variable_is_the_default_and_an_argument_wins(
        tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlm_export.runtime.backends import create_session

    graph = str(tiny_artifact / "fill_mask.fp32.onnx")
    monkeypatch.setenv("MLM_EXPORT_THREADS", "1")
    assert create_session(graph, "cpu").get_session_options().intra_op_num_threads == 1
    assert create_session(graph, "cpu", threads=2).get_session_options().intra_op_num_threads == 2
    for bad, says in (("two", "must be a whole number"), ("0", "threads must be between 1 and")):
        monkeypatch.setenv("MLM_EXPORT_THREADS", bad)
        with pytest.raises(InputError, match=f"MLM_EXPORT_THREADS.*{says}"):
            OnnxMaskFiller.from_pretrained(tiny_artifact, providers="cpu")
    monkeypatch.setenv("MLM_EXPORT_THREADS", " ")  # blank: ONNX Runtime's own choice
    assert create_session(graph, "cpu").get_session_options().intra_op_num_threads == 0


def test_predictor_never_imports_torch_or_transformers(tiny_artifact: Path) -> None:
    code = (
        "import sys, json\n"
        "from mlm_export import OnnxMaskFiller\n"
        f"f = OnnxMaskFiller.from_pretrained({str(tiny_artifact)!r})\n"
        "r = f(['the [MASK] sat .', 'a [MASK] and a [MASK]'], top_k=2)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules)\n"
        "print(json.dumps({'n': len(r), 'heavy': heavy}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data == {"n": 2, "heavy": []}


def test_a_graph_whose_io_differs_from_the_manifest_is_refused(tiny_copy: Path) -> None:
    """The manifest is the contract: a graph file that does not honour it (hash updated) is not served."""
    import onnx

    from mlm_export.artifact import sha256_file

    path = tiny_copy / "fill_mask.fp32.onnx"
    model = onnx.load(str(path))
    # an output under another name than the manifest's
    model.graph.node.append(onnx.helper.make_node("Identity", ["logits"], ["top_logits"], name="renamed"))
    model.graph.output[4].name = "top_logits"
    onnx.save(model, str(path))
    manifest = json.loads((tiny_copy / "manifest.json").read_text())
    manifest["files"][path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    (tiny_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="but the manifest declares"):
        OnnxMaskFiller.from_pretrained(tiny_copy, variant="fp32", providers="cpu")


def test_a_call_time_batch_size_changes_nothing_but_the_runs(filler: OnnxMaskFiller) -> None:
    texts = ["a [MASK] .", "the [MASK] is on the [MASK] .", "[MASK]", "the big [MASK] ran"]
    def flat(results: list) -> list:  # type: ignore[type-arg]
        return [c for r in results for m in (r if isinstance(r[0], list) else [r]) for c in m]

    one, default = flat(filler(texts, top_k=3, batch_size=1)), flat(filler(texts, top_k=3))
    assert [c["token"] for c in one] == [c["token"] for c in default]
    assert [c["score"] for c in one] == pytest.approx([c["score"] for c in default], abs=1e-6)
    with pytest.raises(InputError, match="batch_size"):
        filler(texts, batch_size=0)
