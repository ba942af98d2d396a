"""Triton model repositories: config.pbtxt parsed with Triton's own protobuf and checked against the
manifest and the ONNX graph itself; refusals leave the repository as it was."""

from __future__ import annotations

import errno
import json
import fcntl
import os
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mlm_export import ArtifactError, InputError, IntegrityError, SignatureError, StorageError
from mlm_export.artifact import file_entries, sha256_file
from mlm_export.manifest import GraphEntry, TensorSpec, Tolerance, read_manifest, write_manifest
from mlm_export.triton import (
    check_model_name,
    config_text,
    default_model_name,
    instance_kind,
    write_triton_repository,
)

TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "bool": "TYPE_BOOL"}
ORT_TYPES = {"TYPE_INT64": "tensor(int64)", "TYPE_FP32": "tensor(float)", "TYPE_BOOL": "tensor(bool)"}


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def _expected_dims(spec: TensorSpec, batched: bool) -> tuple[list[int], bool]:
    """Dims and whether a reshape to a scalar is declared, as Triton must see this TensorSpec."""
    axes = spec.shape[1:] if batched else spec.shape
    dims = [-1 if isinstance(a, str) else a for a in axes]
    return (dims, False) if dims else ([1], True)


def _check_tensors(declared: list, specs: tuple[TensorSpec, ...], onnx_args: list, batched: bool) -> None:
    assert [t.name for t in declared] == [s.name for s in specs]  # the manifest's names, in its order
    assert {t.name for t in declared} == {a.name for a in onnx_args}  # and exactly the graph's own
    onnx_by_name = {a.name: a for a in onnx_args}
    for tensor, spec in zip(declared, specs):
        data_type = model_config_pb2.DataType.Name(tensor.data_type)
        assert data_type == TRITON_TYPES[spec.dtype], spec.name
        dims, scalar = _expected_dims(spec, batched)
        assert list(tensor.dims) == dims, spec.name
        assert tensor.HasField("reshape") == scalar and list(tensor.reshape.shape) == [], spec.name
        arg = onnx_by_name[spec.name]
        assert ORT_TYPES[data_type] == arg.type, spec.name
        onnx_axes = arg.shape[1:] if batched else arg.shape
        if scalar:
            assert onnx_axes == [], spec.name
        else:
            assert len(onnx_axes) == len(dims), spec.name
            for dim, axis in zip(dims, onnx_axes):
                assert dim == -1 or dim == axis, spec.name  # a fixed dim is the graph's own size


def _check_model(model_path: Path, config: model_config_pb2.ModelConfig, graph: GraphEntry, batched: bool) -> None:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    _check_tensors(list(config.input), graph.inputs, session.get_inputs(), batched)
    _check_tensors(list(config.output), graph.outputs, session.get_outputs(), batched)


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_the_default_is_the_fp32_fill_mask_graph_as_declared(tiny_artifact: Path, tmp_path: Path) -> None:
    manifest = read_manifest(tiny_artifact)
    repo = tmp_path / "models" / "repo"  # missing parents are created
    model = write_triton_repository(tiny_artifact, repo)
    graph = manifest.graphs["fp32"]
    assert (model.variant, model.form, model.max_batch_size, model.device, model.instances) == \
        ("fp32", "fill-mask", 0, "cpu", 1)
    assert model.name == default_model_name(manifest.name) and model.directory == repo / model.name
    assert _entries(repo) == [model.name]  # no build directory left beside it
    assert _entries(model.directory) == ["1", "config.pbtxt", "tokenizer.json"]
    assert _entries(model.directory / "1") == ["model.onnx"]
    assert model.tokenizer_path.read_bytes() == (tiny_artifact / manifest.tokenizer.file).read_bytes()  # for clients
    assert model.data_path is None
    assert sha256_file(model.model_path) == manifest.files[graph.file].sha256
    config = _parse(model.config_path)
    assert (config.name, config.backend, config.max_batch_size) == (model.name, "onnxruntime", 0)
    assert not config.HasField("dynamic_batching")
    assert [(model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in config.instance_group] \
        == [("KIND_CPU", 1)]
    _check_model(model.model_path, config, graph, batched=False)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_every_graph_unbatched_matches_its_manifest_and_onnx_file(tiny_artifact: Path, tmp_path: Path,
                                                                   device: str) -> None:
    manifest = read_manifest(tiny_artifact)
    for variant, graph in manifest.graphs.items():
        if device == "gpu" and graph.precision == "int8":
            continue
        model = write_triton_repository(tiny_artifact, tmp_path, variant=variant, name=f"m-{variant}",
                                        instances=3, device=device)
        config = _parse(model.config_path)
        assert sha256_file(model.model_path) == manifest.files[graph.file].sha256
        assert [(model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in config.instance_group] \
            == [(f"KIND_{device.upper()}", 3)]
        _check_model(model.model_path, config, graph, batched=False)


def test_the_logits_graph_batches_dynamically(tiny_artifact: Path, tmp_path: Path) -> None:
    graph = read_manifest(tiny_artifact).graphs["logits"]
    model = write_triton_repository(tiny_artifact, tmp_path, variant="logits", name="logits", max_batch_size=8)
    config = _parse(model.config_path)
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert all(t.shape[0] == "batch" for t in (*graph.inputs, *graph.outputs))
    _check_model(model.model_path, config, graph, batched=True)  # dims without the batch axis


def test_fill_mask_with_server_batching_is_refused_before_writing(tiny_artifact: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(InputError, match="max_batch_size=4 .*split back.*max_batch_size=0"):
        write_triton_repository(tiny_artifact, repo, max_batch_size=4)
    assert not repo.exists()


def test_int8_is_never_placed_on_a_gpu(tiny_artifact: Path, tiny_copy: Path, tmp_path: Path) -> None:
    manifest = read_manifest(tiny_artifact)
    int8 = replace(manifest.graphs["fp32"], precision="int8")
    assert instance_kind(int8, "int8", "cpu") == "KIND_CPU"
    with pytest.raises(InputError, match="fp16 or fp32 on GPU"):
        instance_kind(int8, "int8", "gpu")
    with pytest.raises(InputError, match="fp16 or fp32 on GPU"):
        config_text(int8, "m", "int8", device="gpu")
    # the whole path, with an int8 entry added to a copy's manifest (its graph is the fp32 file)
    write_manifest(tiny_copy, replace(manifest, graphs=manifest.graphs | {"int8": int8}))
    repo = tmp_path / "repo"
    with pytest.raises(InputError, match="int8.*fp16 or fp32 on GPU"):
        write_triton_repository(tiny_copy, repo, variant="int8", device="gpu")
    assert not repo.exists()
    assert write_triton_repository(tiny_copy, repo, variant="int8", device="cpu").variant == "int8"


def test_tensors_are_read_generically_from_the_manifest() -> None:
    """New inputs and outputs (a bool scalar, a targets matrix) need no change here."""
    graph = GraphEntry(
        "g.onnx", "fill-mask", "fp32", "bert",
        (TensorSpec("input_ids", "int64", ("batch", "sequence")), TensorSpec("top_k", "int64", ()),
         TensorSpec("target_ids", "int64", ("target_rows", "targets")), TensorSpec("exclude_special", "bool", ())),
        (TensorSpec("scores", "float32", ("num_masks", "top_k")),
         TensorSpec("target_log_probs", "float32", ("num_masks", "targets"))),
        Tolerance())
    config = text_format.Parse(config_text(graph, "m", "fp32"), model_config_pb2.ModelConfig())
    for declared, specs in ((config.input, graph.inputs), (config.output, graph.outputs)):
        for tensor, spec in zip(declared, specs, strict=True):
            assert tensor.name == spec.name
            assert model_config_pb2.DataType.Name(tensor.data_type) == TRITON_TYPES[spec.dtype]
            dims, scalar = _expected_dims(spec, batched=False)
            assert (list(tensor.dims), tensor.HasField("reshape")) == (dims, scalar)
    # batched: a tensor that is only the batch axis becomes [1] reshaped to a scalar per request
    batch_only = replace(graph, form="logits", inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence")),),
                         outputs=(TensorSpec("score", "float32", ("batch",)),
                                  TensorSpec("logits", "float32", ("batch", "sequence", 7))))
    config = text_format.Parse(config_text(batch_only, "m", "logits", max_batch_size=2), model_config_pb2.ModelConfig())
    assert [(list(t.dims), t.HasField("reshape")) for t in config.output] == [([1], True), ([-1, 7], False)]
    with pytest.raises(InputError, match="top_k \\(a scalar\\).*target_ids \\(first axis 'target_rows'\\)"):
        config_text(graph, "m", "fp32", max_batch_size=1)


def test_an_unknown_variant_lists_the_available_ones(tiny_artifact: Path, tmp_path: Path) -> None:
    available = ", ".join(sorted(read_manifest(tiny_artifact).graphs))
    with pytest.raises(ArtifactError, match=f"'int4' is not in .* it has {available}$"):
        write_triton_repository(tiny_artifact, tmp_path / "repo", variant="int4")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"instances": 0}, "instances must be an integer >= 1"),
    ({"instances": True}, "instances must be an integer >= 1"),
    ({"max_batch_size": -1}, "max_batch_size must be an integer >= 0"),
    ({"device": "tpu"}, "device must be one of cpu, gpu"),
    ({"name": "a/b"}, "path separator"),
    ({"name": ".hidden"}, "starts with '.'"),
    ({"name": ".."}, "starts with '.'"),
    ({"name": ""}, "non-empty"),
    ({"name": "a b"}, "letters, digits"),
])
def test_bad_settings_are_refused_before_writing(tiny_artifact: Path, tmp_path: Path, kwargs: dict,
                                                 match: str) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(InputError, match=match):
        write_triton_repository(tiny_artifact, repo, **kwargs)
    assert not repo.exists()


def test_default_names_are_sanitized() -> None:
    assert default_model_name("org/My model@v2") == "org_My_model_v2"
    assert default_model_name("..hidden") == "hidden"
    assert default_model_name("...") == "model"
    for name in ("org/My model@v2", "..hidden", "...", "bert-base.uncased_1"):
        assert check_model_name(default_model_name(name)) == default_model_name(name)


def test_an_existing_model_is_refused_and_left_untouched(tiny_artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "tiny" / "1").mkdir(parents=True)
    (tmp_path / "tiny" / "config.pbtxt").write_text("mine")
    (tmp_path / "other").write_text("also mine")
    with pytest.raises(ArtifactError, match="already exists.*--name.*remove it"):
        write_triton_repository(tiny_artifact, tmp_path, name="tiny")
    assert (tmp_path / "tiny" / "config.pbtxt").read_text() == "mine"
    assert _entries(tmp_path) == ["other", "tiny"] and _entries(tmp_path / "tiny") == ["1", "config.pbtxt"]


def test_a_tampered_graph_leaves_nothing_behind(tiny_copy: Path, tmp_path: Path) -> None:
    graph_file = tiny_copy / read_manifest(tiny_copy).graphs["fp32"].file
    graph_file.write_bytes(graph_file.read_bytes() + b"\0")
    new_repo = tmp_path / "new" / "repo"
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        write_triton_repository(tiny_copy, new_repo)
    assert not (tmp_path / "new").exists()  # the directories it made are removed again
    old_repo = tmp_path / "old"
    old_repo.mkdir()
    with pytest.raises(IntegrityError):
        write_triton_repository(tiny_copy, old_repo)
    assert old_repo.is_dir() and _entries(old_repo) == []  # the repository it found is kept, empty


def test_a_full_disk_is_a_storage_error_and_leaves_nothing(tiny_artifact: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mlm_export.triton.shutil.copyfile", full)
    (tmp_path / "repo").mkdir()
    with pytest.raises(StorageError, match="No space left.*Nothing was left"):
        write_triton_repository(tiny_artifact, tmp_path / "repo")
    assert _entries(tmp_path / "repo") == []


def test_external_data_is_copied_beside_the_graph(tiny_copy: Path, tmp_path: Path) -> None:
    import onnx

    manifest = read_manifest(tiny_copy)
    graph = manifest.graphs["fp32"]
    data_file = graph.file + ".data"
    onnx.save_model(onnx.load(str(tiny_copy / graph.file)), str(tiny_copy / graph.file), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=data_file, size_threshold=0)
    write_manifest(tiny_copy, replace(manifest.with_graph("fp32", data_file=data_file), files=file_entries(tiny_copy)))
    model = write_triton_repository(tiny_copy, tmp_path)
    assert model.data_path == model.model_path.parent / data_file
    assert _entries(model.model_path.parent) == sorted(["model.onnx", data_file])
    assert sha256_file(model.data_path) == read_manifest(tiny_copy).files[data_file].sha256
    _check_model(model.model_path, _parse(model.config_path), graph, batched=False)  # loads its data by name


def test_a_signed_artifact_is_checked_with_its_key(tiny_copy: Path, tmp_path: Path) -> None:
    from mlm_export import generate_key, sign_artifact

    private, public = generate_key(tmp_path / "key")
    with pytest.raises(SignatureError):
        write_triton_repository(tiny_copy, tmp_path / "repo", public_key=public)
    sign_artifact(tiny_copy, private)
    assert write_triton_repository(tiny_copy, tmp_path / "repo", public_key=public).model_path.is_file()


def test_a_killed_build_is_removed_and_a_running_one_kept(tiny_artifact: Path, tmp_path: Path) -> None:
    stale = tmp_path / ".tiny.mlm-export-triton-tmp-99999999-0123abcd"
    running = tmp_path / ".tiny.mlm-export-triton-tmp-1-89abcdef"
    foreign = tmp_path / ".tiny.mlm-export-triton-tmp-2-deadbeef"  # no marker: not known to be ours
    for build in (stale, running, foreign):
        (build / "1").mkdir(parents=True)
    (stale / ".mlm-export-build").write_text("99999999")
    (running / ".mlm-export-build").write_text("1")
    with open(running / ".mlm-export-build") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        write_triton_repository(tiny_artifact, tmp_path, name="tiny")
    assert _entries(tmp_path) == sorted([foreign.name, running.name, "tiny"])


def test_the_config_is_deterministic(tiny_artifact: Path, tmp_path: Path) -> None:
    first = write_triton_repository(tiny_artifact, tmp_path, name="a").config_path.read_text()
    second = write_triton_repository(tiny_artifact, tmp_path, name="b").config_path.read_text()
    assert first.replace('name: "a"', "") == second.replace('name: "b"', "")


def test_cli_writes_the_repository_and_reports_it(tiny_artifact: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mlm_export.cli import main

    result = CliRunner().invoke(main, ["triton", str(tiny_artifact), "--repo", str(tmp_path / "repo"),
                                       "--name", "fill", "--instances", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["name"] == "fill" and report["variant"] == "fp32" and report["max_batch_size"] == 0
    config = text_format.Parse(Path(report["config"]).read_text(), model_config_pb2.ModelConfig())
    assert config.instance_group[0].count == 2
    again = CliRunner().invoke(main, ["triton", str(tiny_artifact), "--repo", str(tmp_path / "repo"),
                                      "--name", "fill", "--max-batch-size", "4"])
    assert again.exit_code == 1 and again.stderr.startswith("Error: ")


def test_a_repository_that_is_a_symlink_is_refused_and_nothing_is_written_through_it(
        tiny_artifact: Path, tmp_path: Path) -> None:
    """`--repo LINK` pointing elsewhere (to /etc, say) would create folders at the link's target: refused,
    exit 1, the target untouched. The real directory, named as itself, is fine."""
    from click.testing import CliRunner

    from mlm_export.cli import main

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "repo"
    link.symlink_to(elsewhere)
    result = CliRunner().invoke(main, ["triton", str(tiny_artifact), "--repo", str(link)])
    assert result.exit_code == 1 and "is a symbolic link" in result.stderr and str(elsewhere) in result.stderr
    assert list(elsewhere.iterdir()) == []
    assert write_triton_repository(tiny_artifact, elsewhere).model_path.is_file()
