"""The Colab/Vast.ai notebook runs top to bottom in its test mode: demo models, no share link, a probe."""

import os

import pytest

from server import ROOT, free_port

NOTEBOOK = ROOT / "colab" / "homegrown.ipynb"
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_notebook_is_valid_and_has_form_fields():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for field in ("use_google_drive", "download_refiner", "loras", "password", "share"):
        assert f"{field} = " in source and "#@param" in source
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


def test_notebook_runs_in_test_mode(tmp_path, demo_root, monkeypatch):
    import shutil

    shutil.copytree(demo_root, tmp_path / "data" / "demo")  # the models made once for this test run
    monkeypatch.setenv("HOMEGROWN_NOTEBOOK_TEST", "1")
    monkeypatch.setenv("HOMEGROWN_REPO_DIR", str(ROOT))
    monkeypatch.setenv("HOMEGROWN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOMEGROWN_PORT", str(free_port()))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "test mode" in outputs
    assert "memory mode 'none'" in outputs  # no GPU here
    assert "probe: got 1 image" in outputs and "Seed: 1," in outputs
    assert os.path.exists(tmp_path / "data" / "settings.json")
