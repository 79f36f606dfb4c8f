"""The embeddings folder: SDXL textual inversions listed with their vectors and hashes, SD 1.x and damaged files
marked, A1111's `/sdapi/v1/embeddings` shape."""

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from sd_app.demo import embedding_state
from sd_app.embedding_library import EmbeddingLibrary, ti_hashes
from sd_app.errors import UserError
from sd_app.models import HashCache


@pytest.fixture
def folder(demo_root):
    return demo_root / "models" / "embeddings"


def library(path, tmp_path):
    return EmbeddingLibrary(path, HashCache(tmp_path / "hashes.json"))


def test_the_demo_embeddings_are_listed_with_kind_vectors_and_widths(folder, tmp_path):
    found = {info.name: info for info in library(folder, tmp_path).list()}
    sdxl, sd1 = found["demo-negative"], found["demo-sd1"]
    assert (sdxl.kind, sdxl.vectors, sdxl.widths, sdxl.problem) == ("sdxl", 2, {"clip_l": 32, "clip_g": 64}, None)
    assert sdxl.shape == 96  # A1111's shape: both widths added
    assert sd1.kind == "sd1" and sd1.vectors == 3 and "SD 1.x" in sd1.problem


def test_vectors_are_the_files(folder, tmp_path):
    lib = library(folder, tmp_path)
    vectors = lib.vectors(lib.get("demo-negative"))
    expected = {k: v.half().float() for k, v in embedding_state("demo-negative").items()}  # the file is fp16
    assert set(vectors) == {"clip_l", "clip_g"}
    assert all(torch.equal(vectors[k], expected[k]) for k in expected)
    with pytest.raises(UserError, match="SD 1.x"):
        lib.vectors(lib.get("demo-sd1"))


def test_the_hash_is_a1111s_sha256_of_the_file(folder, tmp_path):
    lib = library(folder, tmp_path)
    info = lib.get("demo-negative")
    assert lib.short_hash(info) == hashlib.sha256(info.path.read_bytes()).hexdigest()[:12]


def test_ti_hashes_as_a1111_writes_them():
    assert ti_hashes([("easy,neg", "aaa"), ("b:x", "bbb"), ("easy,neg", "aaa")]) == "easyneg: aaa, bx: bbb"
    assert ti_hashes([]) is None


def test_pt_files_load_weights_only_and_damaged_files_are_marked(tmp_path):
    emb = tmp_path / "embeddings"
    (emb / "sub").mkdir(parents=True)
    torch.save({"clip_l": torch.ones(3, 32), "clip_g": torch.ones(3, 64)}, emb / "sub" / "xl-pt.pt")
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.ones(4, 768)}, "name": "old",
                "step": 1500, "sd_checkpoint": "abc", "sd_checkpoint_name": "sd15"}, emb / "old.pt")
    torch.save({"clip_l": torch.ones(1, 32), "clip_g": torch.ones(1, 64), "code": UserError("x")}, emb / "evil.bin")
    (emb / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    (emb / "empty.safetensors").write_bytes(b"")
    save_file({"a": torch.ones(2, 2), "b": torch.ones(2)}, emb / "lora-like.safetensors")
    save_file({"clip_l": torch.ones(80, 32), "clip_g": torch.ones(80, 64)}, emb / "huge.safetensors")
    found = {info.name: info for info in library(emb, tmp_path).list()}
    assert "empty" not in found  # A1111 skips empty files
    assert found["xl-pt"].kind == "sdxl" and found["xl-pt"].problem is None and found["xl-pt"].vectors == 3
    old = found["old"]
    assert (old.kind, old.vectors, old.step, old.sd_checkpoint_name) == ("sd1", 4, 1500, "sd15") and old.problem
    assert "weights only" in found["evil"].problem  # a pickle with an object in it is never unpickled
    assert found["broken"].problem and found["lora-like"].problem and "75" in found["huge"].problem
    lib = library(emb, tmp_path)
    assert torch.equal(lib.vectors(lib.get("xl-pt"))["clip_g"], torch.ones(3, 64))


def test_studio_lists_embeddings_in_a1111s_shape(ckpt_dir, tmp_path):
    from conftest import make_studio

    studio = make_studio(ckpt_dir, tmp_path, save_images=False)
    listing = studio.embeddings()
    assert listing.loaded == {"demo-negative": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                                   "shape": 96, "vectors": 2}}
    assert listing.skipped["demo-sd1"]["shape"] == 768 and listing.skipped["demo-sd1"]["vectors"] == 3
    from fastapi.testclient import TestClient

    from sd_app.api.routes import build_api

    with TestClient(build_api(studio)) as client:
        answer = client.get("/embeddings").json()  # mounted under /sdapi/v1 by app.py
    assert answer == {"loaded": listing.loaded, "skipped": listing.skipped}
