"""Ed25519 signatures: what sha256 alone misses (a manifest rewritten along with a graph) is caught."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mlm_export import ConfigError, IntegrityError, OnnxMaskFiller, SignatureError
from mlm_export.artifact import sha256_file
from mlm_export.cli import main
from mlm_export import generate_key, sign_artifact


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_key(tmp_path / "signer")


def _swap_graph_and_rehash(artifact: Path) -> None:
    """The attack sha256 cannot see: replace a graph (same inputs and outputs, other weights) and
    rewrite its hash in the manifest."""
    import onnx
    from onnx import numpy_helper

    graph = artifact / "fill_mask.fp32.onnx"
    model = onnx.load(str(graph))
    bias = max(model.graph.initializer, key=lambda t: len(t.dims) == 1 and t.dims[0])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias)[::-1].copy(), bias.name))
    onnx.save(model, str(graph))
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["files"][graph.name] = {"sha256": sha256_file(graph), "size": graph.stat().st_size}
    (artifact / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    with pytest.raises(ConfigError, match="never overwrites"):
        generate_key(private)
    result = CliRunner().invoke(main, ["keygen", str(private)])
    assert result.exit_code == 2 and "already exists" in result.stderr


def test_signed_artifact_loads_and_a_rehashed_swap_is_refused(tiny_copy: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    info = sign_artifact(tiny_copy, private)
    assert info.path.name == "manifest.sig"
    assert OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu", public_key=public)("a [MASK]")
    _swap_graph_and_rehash(tiny_copy)
    OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu")  # sha256 alone cannot tell
    with pytest.raises(SignatureError, match="manifest was edited after it was signed"):
        OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu", public_key=public)


def test_unsigned_artifact_and_wrong_key_are_refused(tiny_copy: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    with pytest.raises(SignatureError, match="is not signed"):
        OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu", public_key=public)
    sign_artifact(tiny_copy, private)
    _, other_public = generate_key(tmp_path / "other")
    with pytest.raises(SignatureError, match="does not verify with the key given"):
        OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu", public_key=other_public)
    # the private key file works as a verification key too (its public half is derived)
    assert OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu", public_key=private)


def test_a_tampered_artifact_is_never_signed(tiny_copy: Path, keys: tuple[Path, Path]) -> None:
    graph = tiny_copy / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="model.onnx does not match"):
        sign_artifact(tiny_copy, keys[0])
    assert not (tiny_copy / "manifest.sig").exists()


def test_cli_sign_then_verify_with_key(tiny_copy: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    runner = CliRunner()
    signed = runner.invoke(main, ["sign", str(tiny_copy), "--key", str(private), "--json"])
    assert signed.exit_code == 0, signed.output
    fingerprint = json.loads(signed.stdout)["fingerprint"]
    info = runner.invoke(main, ["info", str(tiny_copy)])
    assert f"signed, key fingerprint {fingerprint}" in info.stdout
    ok = runner.invoke(main, ["verify", str(tiny_copy), "--key", str(public), "-q"])
    assert ok.exit_code == 0, ok.output
    _swap_graph_and_rehash(tiny_copy)
    bad = runner.invoke(main, ["verify", str(tiny_copy), "--key", str(public), "--json", "-q"])
    assert bad.exit_code == 1
    assert json.loads(bad.stdout)["error"]["type"] == "SignatureError"
    predict = runner.invoke(main, ["predict", str(tiny_copy), "a [MASK]", "--key", str(public)])
    assert predict.exit_code == 1 and "signature" in predict.stderr


def _pem(key: object, private: bool) -> bytes:
    if private:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                                 serialization.BestAvailableEncryption(b"secret"))
    return key.public_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def test_unusable_keys_are_named(tiny_copy: Path, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(_pem(ed25519.Ed25519PrivateKey.generate(), private=True))
    with pytest.raises(ConfigError, match="is encrypted"):
        sign_artifact(tiny_copy, encrypted)
    ecdsa = tmp_path / "ec.pub"
    ecdsa.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1()).public_key(), private=False))
    with pytest.raises(ConfigError, match="Ed25519"):
        OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu", public_key=ecdsa)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    result = CliRunner().invoke(main, ["verify", str(tiny_copy), "--key", str(garbage)])
    assert result.exit_code == 2 and "not a public key" in result.stderr
    assert not (tiny_copy / "manifest.sig").exists()


def test_a_serving_install_without_cryptography_names_the_extra(tiny_artifact: Path, keys: tuple[Path, Path]) -> None:
    """`mlm-export[cpu]` alone has no cryptography: asking for a signature check says what to install."""
    code = (
        "import sys\n"
        "sys.modules['cryptography'] = None  # as if not installed\n"
        "from mlm_export import OnnxMaskFiller, ConfigError\n"
        "try:\n"
        f"    OnnxMaskFiller.from_pretrained({str(tiny_artifact)!r}, providers='cpu', public_key={str(keys[1])!r})\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pip install 'mlm-export[sign]'" in result.stdout


@pytest.mark.parametrize("key,match", [
    ("/dev/zero", "not a regular file"), (123, "a key must be a file path"),
])
def test_key_arguments_that_are_no_key_files(tiny_copy: Path, key: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        OnnxMaskFiller.from_pretrained(tiny_copy, providers="cpu", public_key=key)


def test_oversized_key_file_and_empty_keygen_path(tiny_copy: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * 100_000)
    with pytest.raises(ConfigError, match="over 64 KB"):
        sign_artifact(tiny_copy, big)
    with pytest.raises(ConfigError, match="not a file name for a key"):
        generate_key(Path(""))
