"""Without Ray installed Homegrown starts as before; asking for a pool says what to install."""

from __future__ import annotations

import sys

import pytest

from sd_app import pool
from sd_app.errors import UserError


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    for name in [name for name in sys.modules if name.startswith("sd_app.pool.")]:
        monkeypatch.delitem(sys.modules, name)


def test_asking_for_workers_without_ray_names_what_to_install(no_ray):
    with pytest.raises(UserError, match=r"needs Ray.*pip install -r requirements-cluster.txt") as err:
        pool.backend("2", None)
    assert err.value.field == "--workers"
    with pytest.raises(UserError, match="needs Ray") as err:
        pool.backend(None, "ray://head:10001")
    assert err.value.field == "--ray-address"
    assert pool.backend(None, None) is None


def test_the_app_starts_as_before_without_ray(no_ray, tmp_path, capsys):
    import app

    studio, _, _ = app.build(app.parse_args(["--data-dir", str(tmp_path), "--offline"]))
    assert studio.backend is None and studio.workers() == []
    assert "sd_app.pool.pool" not in sys.modules and "sd_app.pool.worker" not in sys.modules
    assert app.main(["--workers", "2", "--data-dir", str(tmp_path), "--offline"]) == 2
    assert "--workers: a pool of workers needs Ray" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "257", ""])
def test_the_number_of_workers_is_checked(value):
    with pytest.raises(UserError, match="'auto' or a number of workers from 1 to 256") as err:
        pool.parse_workers(value)
    assert err.value.field == "--workers"
    assert pool.parse_workers(" Auto ") == "auto" and pool.parse_workers("4") == 4
