import pytest

from sd_app import downloads
from sd_app.errors import UserError

from hf_standin import HubStandIn


@pytest.fixture
def hub(demo_root, monkeypatch):
    lora = (demo_root / "models" / "Lora" / "demo-style.safetensors").read_bytes()
    repos = {"someone/cool-lora": {"cool.safetensors": lora, "sub/deep.safetensors": lora, "evil.ckpt": b"x"}}
    with HubStandIn(repos) as standin:
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", standin.url)
        monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE",
                            standin.url + "/{repo_id}/resolve/{revision}/{filename}")
        yield standin, lora


def test_download_into_the_lora_folder_with_progress(hub, tmp_path):
    standin, data = hub
    seen = []
    path = downloads.download("someone/cool-lora", "cool.safetensors", tmp_path / "Lora",
                              progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "Lora" / "cool.safetensors" and path.read_bytes() == data
    assert seen and seen[-1] == (len(data), len(data))
    assert not [p for p in (tmp_path / "Lora").iterdir() if p.name.startswith(".download")]
    nested = downloads.download("someone/cool-lora", "sub/deep.safetensors", tmp_path / "Lora", revision="main")
    assert nested == tmp_path / "Lora" / "deep.safetensors"
    assert any("/resolve/main/cool.safetensors" in r for r in standin.requests)


def test_existing_file_is_never_overwritten_without_asking(hub, tmp_path):
    folder = tmp_path / "Lora"
    folder.mkdir()
    (folder / "cool.safetensors").write_bytes(b"mine")
    with pytest.raises(UserError) as err:
        downloads.download("someone/cool-lora", "cool.safetensors", folder)
    assert err.value.status == 409 and "overwrite" in err.value.message
    assert (folder / "cool.safetensors").read_bytes() == b"mine"
    downloads.download("someone/cool-lora", "cool.safetensors", folder, overwrite=True)
    assert (folder / "cool.safetensors").read_bytes() == hub[1]


@pytest.mark.parametrize("repo, name, field, words", [
    ("someone/cool-lora", "evil.ckpt", "filename", "only .safetensors"),
    ("someone/cool-lora", "../x.safetensors", "filename", "'..'"),
    ("not a repo", "a.safetensors", "repo_id", "owner/name"),
    ("someone/cool-lora", "", "filename", "name the file"),
    ("someone/missing", "a.safetensors", "repo_id", "no repository"),
    ("someone/cool-lora", "missing.safetensors", "filename", "has no file"),
])
def test_bad_requests(hub, tmp_path, repo, name, field, words):
    with pytest.raises(UserError) as err:
        downloads.download(repo, name, tmp_path)
    assert err.value.field == field and words in err.value.message
    assert not list(tmp_path.glob("*.safetensors"))


def test_no_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None)  # skip the retry back-off
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(UserError) as err:
        downloads.download("someone/cool-lora", "cool.safetensors", tmp_path)
    assert "could not reach Hugging Face" in err.value.message
