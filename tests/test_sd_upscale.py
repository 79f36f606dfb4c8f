"""A1111's SD upscale script (sd_app/sd_upscale.py): its tiles, their blend, its arguments."""

import numpy as np
import pytest
from PIL import Image

from sd_app import sd_upscale
from sd_app.errors import UserError
from sd_app.sd_upscale import SdUpscale


def test_tiles_cover_the_image_and_combine_back_unchanged():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    grid = sd_upscale.split_grid(image, 128, 128, 32)
    xs = [x for x, _, _ in grid.tiles[0][2]]
    ys = [y for y, _, _ in grid.tiles]
    assert xs[0] == 0 and xs[-1] == 300 - 128 and ys[0] == 0 and ys[-1] == 200 - 128
    assert all(tile.size == (128, 128) for tile in grid.all_tiles())
    # Untouched tiles blend back into the very same picture.
    assert np.array_equal(np.asarray(sd_upscale.combine_grid(grid)), np.asarray(image))


def test_overlap_is_blended_linearly():
    grid = sd_upscale.split_grid(Image.new("RGB", (96, 64)), 64, 64, 32)
    grid.replace_tiles([Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (255, 255, 255))])
    row = np.asarray(sd_upscale.combine_grid(grid))[10, :, 0]
    assert row[31] == 0 and row[-1] == 255 and 100 < row[48] < 160  # the middle of the overlap: half and half


def test_script_args_as_a1111_sends_them():
    assert sd_upscale.from_script_args(["", 64, 1, 2.0]) == SdUpscale(64, "Lanczos", 2.0)
    assert sd_upscale.from_script_args([None, 8, "Nearest", 1.5]) == SdUpscale(8, "Nearest", 1.5)
    # an index counts in GET /upscalers' list, model files included
    names = ["None", "Lanczos", "Nearest", "4x-Demo"]
    assert sd_upscale.from_script_args(["", 32, 3, 2.0], names) == SdUpscale(32, "4x-Demo", 2.0)
    with pytest.raises(UserError, match="0 to 3"):
        sd_upscale.from_script_args(["", 32, 4, 2.0], names)
    with pytest.raises(UserError):
        sd_upscale.from_script_args(["", 64, 9, 2])


@pytest.mark.parametrize("script, field", [
    (SdUpscale(64, "4x-Nope", 2), "script_args"), (SdUpscale(64, "Lanczos", 8), "script_args"),
    (SdUpscale(64, "Lanczos", 1), "script_args"),  # 64 px tiles of a 64 px image: overlap 64 is not below the tile
    (SdUpscale(8, "Lanczos", 4), "width"),  # 1024x1024 in 32 px tiles: too many
])
def test_checks(script, field):
    with pytest.raises(UserError) as err:
        script.check(64 if script.scale != 4 else 32, 64 if script.scale != 4 else 32, Image.new("RGB", (256, 256) if
                     script.scale == 4 else (64, 64)), 4096 * 4096)
    assert err.value.field == field


def test_model_upscaler_by_its_listed_name(ckpt_dir):
    """A model file in models/ESRGAN is the script's upscaler by the name /sdapi/v1/upscalers lists; other names
    are refused listing what there is."""
    from pathlib import Path

    from sd_app.demo import UPSCALER_FILE
    from sd_app.upscaler_library import UpscalerLibrary
    from sd_app.upscalers import Upscalers

    upscalers = Upscalers(UpscalerLibrary(ckpt_dir.parent))
    name = Path(UPSCALER_FILE).stem
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    script = SdUpscale(16, name, 2).check(64, 64, image, 4096 * 4096, upscalers.names())
    model = script.upscale(image, upscalers)
    lanczos = SdUpscale(16, "Lanczos", 2).upscale(image, upscalers)
    assert model.size == lanczos.size == (80, 96)
    assert not np.array_equal(np.asarray(model), np.asarray(lanczos))
    with pytest.raises(UserError) as err:
        SdUpscale(16, "4x-Nope", 2).check(64, 64, image, 4096 * 4096, upscalers.names())
    assert err.value.field == "script_args" and name in err.value.message
