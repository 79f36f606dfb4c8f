"""X/Y/Z plot: value syntax, plans, the grid image and its infotext (pure), and plots run by the studio."""

import shutil
import threading

import pytest
from PIL import Image

from sd_app import infotext, pipelines, xyz
from sd_app.errors import UserError
from sd_app.jobs import GenerationResult
from sd_app.params import GenerationParams

from conftest import BASE, REFINER, make_studio

AXIS = xyz.BY_LABEL


def base(**changes) -> GenerationParams:
    return GenerationParams(prompt="a cat <lora:demo-style:0.8>", negative_prompt="blurry", steps=4, width=64,
                            height=64, seed=1234).replace(**changes)


# ---- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("label, text, values", [
    ("Steps", "1-5", [1, 2, 3, 4, 5]),
    ("Steps", "10-30 (+5)", [10, 15, 20, 25, 30]),
    ("Steps", "1-10 [4]", [1, 4, 7, 10]),
    ("Steps", "5-1", [5, 4, 3, 2, 1]),
    ("Steps", "8, 2-3, 20", [8, 2, 3, 20]),
    ("CFG Scale", "1-2 (+0.25)", [1.0, 1.25, 1.5, 1.75, 2.0]),
    ("CFG Scale", "5-7 [5]", [5.0, 5.5, 6.0, 6.5, 7.0]),
    ("CFG Scale", "3.5, 7", [3.5, 7.0]),
    ("Seed", "-1, 3", [-1, 3]),
    ("Sampler", 'Euler a, "DPM++ 2M" ,', ["Euler a", "DPM++ 2M"]),
    ("Prompt S/R", 'cat, "dog, wet", ', ["cat", "dog, wet", ""]),  # an empty replacement removes the text
])
def test_a1111_value_syntax(label, text, values):
    assert xyz.parse_values(AXIS[label.lower()], text) == values


@pytest.mark.parametrize("axes, field, words", [
    ([("Steps", "10, abc")], "x_values", ["Steps", "'abc'", "whole number"]),
    ([("Steps", "1-5 (-1)")], "x_values", ["Steps", "never gets from 1 to 5"]),
    ([("Nothing", ""), ("CFG Scale", "5, 99")], "y_values", ["CFG Scale", "99", "out of range"]),
    ([("Nothing", ""), ("Nothing", ""), ("Sampler", "Euler a, Eulr")], "z_values", ["Sampler", "'Eulr'"]),
    ([("Schedule type", "Karras, Quadratic")], "x_values", ["Schedule type", "'Quadratic'"]),
    ([("Checkpoint name", "nope")], "x_values", ["Checkpoint name", "'nope'", BASE]),
    ([("Size", "512x512, 1024")], "x_values", ["Size", "'1024'", "WIDTHxHEIGHT"]),
    ([("Prompt S/R", "dog, cat")], "x_values", ["Prompt S/R", "'dog'"]),
    ([("Steps", "")], "x_values", ["Steps", "no values"]),
    ([("Var. seed", "1, 2")], "x_type", ["'Var. seed'", "Steps"]),
    ([("Hires steps", "1, 2")], "x_values", ["Hires steps", "turn the hires fix on"]),
    ([("Nothing", "")], "x_type", ["choose what to vary"]),
])
def test_bad_values_are_refused_naming_the_axis_and_the_value(axes, field, words):
    with pytest.raises(UserError) as err:
        xyz.make_plan(base(), axes, [BASE])
    assert err.value.field == field
    for word in words:
        assert word in str(err.value)


# ---- plans ----------------------------------------------------------------------------------------


def test_hires_axes_vary_the_second_pass_with_the_upscalers_there_are():
    import dataclasses

    from sd_app.hires import HiresParams

    hires = HiresParams(scale=2, upscaler="4x-Demo")
    names = ["None", "Lanczos", "Nearest", "4x-Demo"]
    with pytest.raises(UserError, match="4x-Demo"):
        xyz.make_plan(base(hires=hires), [("Hires steps", "1, 2")])  # the built-in upscalers only
    plan = xyz.make_plan(base(hires=hires), [("Hires steps", "1, 2"), ("Denoising", "0.3, 0.6"),
                                             ("Hires upscaler", "Lanczos, 4x-Demo")], upscalers=names)
    assert plan.shape == (2, 2, 2)
    last = next(cell for cell in plan.cells if (cell.ix, cell.iy, cell.iz) == (1, 1, 1))
    assert last.params.hires == dataclasses.replace(hires, second_pass_steps=2, denoising_strength=0.6,
                                                    upscaler="4x-Demo")
    with pytest.raises(UserError, match="4x-Nope"):
        xyz.make_plan(base(hires=hires), [("Hires upscaler", "Lanczos, 4x-Nope")], upscalers=names)


def test_cells_apply_each_axis_and_share_one_seed():
    plan = xyz.make_plan(base(seed=-1), [("Steps", "2, 3"), ("CFG Scale", "5, 9"), ("Prompt S/R", "cat, dog")])
    assert plan.shape == (2, 2, 2) and len(plan.cells) == 8
    seed = plan.base.seed
    assert seed != -1 and {cell.params.seed for cell in plan.cells} == {seed}  # -1 drawn once, as A1111
    by_index = {cell.index: cell.params for cell in plan.cells}
    assert (by_index[0].steps, by_index[0].cfg_scale, by_index[0].prompt) == (2, 5.0, "a cat <lora:demo-style:0.8>")
    assert (by_index[1].steps, by_index[2].cfg_scale) == (3, 9.0)  # x fastest, then y
    assert by_index[7].prompt == "a dog <lora:demo-style:0.8>" and by_index[7].steps == 3
    assert all(cell.params.batch_size == 1 and cell.params.n_iter == 1 for cell in plan.cells)


def test_seeds_as_a1111_seed_axis_keep_minus_one_and_vary():
    plan = xyz.make_plan(base(seed=-1), [("Seed", "-1, 7, -1")])
    seeds = [cell.params.seed for cell in sorted(plan.cells, key=lambda c: c.index)]
    assert seeds[1] == 7 and -1 not in seeds and plan.axes[0].values[1] == 7
    assert "Fixed X Values" in plan.grid_fields("XYZ")
    kept = xyz.make_plan(base(seed=-1), [("Steps", "2, 3")], no_fixed_seeds=True)
    assert {cell.params.seed for cell in kept.cells} == {-1}  # "Keep -1 for seeds": each cell its own
    varied = xyz.make_plan(base(seed=100), [("Steps", "2, 3"), ("CFG Scale", "5, 6")], vary_seeds=(True, True, False))
    assert sorted(cell.params.seed for cell in varied.cells) == [100, 101, 102, 103]


def test_checkpoints_change_as_rarely_as_possible():
    plan = xyz.make_plan(base(), [("Steps", "2, 3"), ("Checkpoint name", f"{BASE}, other.safetensors [0123abcd]")],
                         [BASE, "sub/other"])
    run = [cell.params.checkpoint for cell in plan.cells]
    assert run == [BASE, BASE, "sub/other", "sub/other"]  # the checkpoint axis is the outer loop
    assert plan.axes[1].labels == [BASE, "other"]  # labelled by file name


def test_size_lora_weight_refiner_and_batch_axes():
    plan = xyz.make_plan(base(n_iter=3), [("Size", "64x128, 96 x 64"), ("LoRA weight", "0, 0.5"),
                                          ("Refiner checkpoint", f"None, {REFINER}")], [BASE, REFINER])
    cells = {cell.index: cell.params for cell in plan.cells}
    assert (cells[1].width, cells[1].height) == (96, 64) and cells[2].prompt == "a cat <lora:demo-style:0.5>"
    assert cells[0].refiner_checkpoint is None and cells[4].refiner_checkpoint == REFINER
    assert plan.axes[0].labels == ["Size: 64x128", "Size: 96x64"] and plan.axes[2].labels == ["None", REFINER]
    assert plan.warnings and "one image per cell" in plan.warnings[0]
    with pytest.raises(UserError, match="no <lora:name:weight> tag"):
        xyz.make_plan(base(prompt="a cat"), [("LoRA weight", "0, 1")])


def test_too_many_cells_and_bad_cells_are_refused_before_anything_runs():
    with pytest.raises(UserError, match="65 cells is too many; at most 64"):
        xyz.make_plan(base(), [("Steps", "1-13"), ("CFG Scale", "1-5")])
    with pytest.raises(UserError, match="1-1000.* makes 1000 values"):
        xyz.make_plan(base(), [("Steps", "1-1000")])
    with pytest.raises(UserError) as err:
        xyz.make_plan(base(), [("Size", "64x64, 100x64")])
    assert "Size: 100x64" in str(err.value) and err.value.field == "width"  # the cell and the field at fault


# ---- the grid -------------------------------------------------------------------------------------


def fake_results(plan, skip=()):
    out = {}
    for cell in plan.cells:
        if cell.index in skip:
            continue
        colour = (cell.index * 30 % 256, 200, 50)
        text = f"{cell.params.prompt}\nSteps: {cell.params.steps}, CFG scale: {cell.params.cfg_scale}, Seed: 1"
        out[cell.index] = GenerationResult([Image.new("RGB", (cell.params.width, cell.params.height), colour)],
                                           [text], [cell.params.seed], cell.params)
    return out


def test_grid_layout_labels_and_blank_slots():
    plan = xyz.make_plan(base(), [("Steps", "2, 3, 4"), ("CFG Scale", "5, 9")])
    grid = xyz.assemble(plan, fake_results(plan, skip={4})).grid
    assert grid.width > 3 * 64 and grid.height > 2 * 64  # room for the labels on top and on the left
    left, top = grid.width - 3 * 64, grid.height - 2 * 64
    assert grid.getpixel((left + 64 + 32, top + 32)) == (30, 200, 50)  # cell 1: x=1, y=0
    assert grid.getpixel((left + 64 + 32, top + 64 + 32)) == (32, 32, 32)  # cell 4 did not run: a blank slot
    band = grid.crop((left, 0, grid.width, top)).convert("L")
    assert band.getextrema()[0] < 100  # column labels are drawn (dark text on white)
    bare = xyz.make_plan(base(), [("Steps", "2, 3, 4"), ("CFG Scale", "5, 9")], draw_legend=False, margin=4)
    assert xyz.assemble(bare, fake_results(bare)).grid.size == (3 * 64 + 2 * 4, 2 * 64 + 4)


def test_z_grids_side_by_side_and_mixed_sizes_centred():
    plan = xyz.make_plan(base(), [("Size", "64x64, 64x128"), ("Nothing", ""), ("CFG Scale", "5, 9")],
                         draw_legend=False)
    result = xyz.assemble(plan, fake_results(plan))
    assert [g.size for g in result.sub_grids] == [(128, 128), (128, 128)]  # slots as big as the largest cell
    assert result.grid.size == (256, 128)
    assert result.sub_grids[0].getpixel((32, 5)) == (255, 255, 255)  # the 64x64 image is centred in its slot


def test_grid_infotext_is_the_first_cells_with_a1111s_script_fields():
    plan = xyz.make_plan(base(), [("Steps", "2,3"), ("Sampler", '"Euler a", DPM++ 2M'), ("CFG Scale", "5, 9")])
    result = xyz.assemble(plan, fake_results(plan))
    prompt, negative, fields = infotext.parse(result.infotext)
    assert prompt == "a cat <lora:demo-style:0.8>" and fields["Steps"] == "2"
    assert (fields["Script"], fields["X Type"], fields["X Values"]) == ("X/Y/Z plot", "Steps", "2,3")
    assert (fields["Y Type"], fields["Y Values"]) == ("Sampler", '"Euler a", DPM++ 2M')
    assert (fields["Z Type"], fields["Z Values"]) == ("CFG Scale", "5, 9")
    assert "Z Type" not in infotext.parse(result.sub_infotexts[1])[2]  # a sub-grid names its X and Y only
    assert result.grid.info["parameters"] == result.infotext
    answer = result.as_result(singles=True)
    assert answer.images[0] is result.grid and len(answer.images) == 9
    assert answer.infotexts[1] == result.cells[0].infotexts[0] and answer.infotexts[2] == result.cells[1].infotexts[0]
    assert len(result.as_result(singles=False, sub_grids=True).images) == 3  # the grid, then one per Z value


# ---- run by the studio ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def studio(ckpt_dir, tmp_path_factory):
    made = make_studio(ckpt_dir, tmp_path_factory.mktemp("xyz"), preview_every=0)
    made.load_checkpoint(BASE)
    return made


def test_a_plot_is_one_job_with_progress_over_all_cells_saved_grid_first(studio, monkeypatch):
    plan = xyz.make_plan(base(prompt="a cat", steps=2), [("Steps", "2, 3"), ("CFG Scale", "5, 9")])
    seen = []
    real = studio.generate

    def watching(params, owner, job, save, output_format):
        seen.append((job.part_no, round(job.progress, 3), studio.job_of("tab-x") is job))
        return real(params, owner, job, save, output_format)

    monkeypatch.setattr(studio, "generate", watching)
    result = studio.generate_grid(plan, owner="tab-x", save=True)
    assert seen == [(0, 0.0, True), (1, 0.25, True), (2, 0.5, True), (3, 0.75, True)]
    assert len(studio.jobs) == 0
    answer = result.as_result()
    assert len(answer.images) == 5 and answer.images[0].size == result.grid.size
    assert "Steps: 3, Sampler" in answer.infotexts[2] and "CFG scale: 9" in answer.infotexts[3]
    assert result.path.parent.parent.name == "txt2img-grids" and result.path.name.endswith("-xyz_grid.png")
    assert infotext.read_image(result.path) == result.infotext and "Script: X/Y/Z plot" in result.infotext
    assert [p.parent.parent.name for p in answer.paths[1:]] == ["txt2img-images"] * 4
    assert Image.open(answer.paths[1]).info["parameters"] == answer.infotexts[1]


def test_interrupt_stops_the_plot_and_keeps_what_is_done(studio):
    plan = xyz.make_plan(base(prompt="a cat", steps=30), [("Seed", "1-4")])
    job = studio.start_grid(plan, owner="tab-i")

    def stop_in_second_cell():
        while not job.done:
            if job.part_no == 1 and job.sampling_step >= 2:
                studio.interrupt("tab-i")
                return
            threading.Event().wait(0.005)

    threading.Thread(target=stop_in_second_cell).start()
    assert job.wait(300) and job.error is None
    result = job.result
    assert result.interrupted and len(result.images) == 3  # the grid, the first cell, the interrupted second
    grid = result.images[0]
    assert grid.width == 4 * 64 and grid.height > 64  # the whole row of 4 labelled cells, blank where none ran
    assert grid.getpixel((3 * 64 + 32, grid.height - 32)) == (32, 32, 32)
    assert studio.job_of("tab-i") is None


def test_a_failing_cell_leaves_a_blank_slot_and_a_warning(studio):
    plan = xyz.make_plan(base(prompt="a cat", steps=2), [("Checkpoint name", f"{BASE}, {REFINER}")],
                         studio.checkpoint_names())
    result = studio.generate_grid(plan, save=False)
    assert sorted(result.cells) == [0] and REFINER in result.warnings[0]
    assert studio.current_checkpoint() == BASE
    with pytest.raises(UserError):
        studio.generate_grid(xyz.make_plan(base(), [("Checkpoint name", REFINER)], [REFINER]), save=False)


def test_checkpoint_axis_loads_each_once_and_loads_the_first_back(ckpt_dir, tmp_path, monkeypatch):
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    for name in ("alpha", "beta"):
        shutil.copy(ckpt_dir / f"{BASE}.safetensors", folder / f"{name}.safetensors")
    own = make_studio(folder, tmp_path, lora_dir=ckpt_dir.parent / "Lora", save_images=False, preview_every=0)
    own.load_checkpoint("beta")
    loads = []
    real = pipelines.load_base
    monkeypatch.setattr(pipelines, "load_base", lambda checkpoint, dtype, *more: loads.append(checkpoint.name) or
                        real(checkpoint, dtype, *more))
    plan = xyz.make_plan(base(prompt="a cat", steps=2), [("Checkpoint name", "alpha, beta"), ("Steps", "2, 3")],
                         own.checkpoint_names())
    result = own.generate_grid(plan)
    assert loads == ["alpha", "beta"]  # beta's cells first (it was loaded), alpha once, beta back at the end
    assert own.current_checkpoint() == "beta"
    assert "Model: alpha" in result.cells[0].infotexts[0] and "Model: beta" in result.cells[3].infotexts[0]


def test_the_page_panel_builds_the_plan_and_fills_list_axes(studio):
    from sd_app.ui import xyz_panel

    form = [BASE, "a cat", "", "Euler a", "Automatic", 4.0, 64.0, 64.0, 7.0, -1.0, 2.0, 1.0, "None", 0.8, []]
    plan = xyz_panel.plan_from_page(studio, form, [False], ["Steps", "2, 3", "Nothing", "", "Nothing", "", False,
                                                            False, 6.0])
    assert plan.shape == (2, 1, 1) and plan.base.seed != -1 and plan.margin == 6 and not plan.draw_legend
    assert plan.warnings  # batch count 2 became 1 per cell
    assert xyz_panel.fill_values(studio, "Sampler").startswith("DPM++ 2M,DPM++ SDE,")
    assert xyz_panel.fill_values(studio, "Checkpoint name") == f"{BASE},homegrown-demo-inpaint,{REFINER}"
    with pytest.raises(UserError, match="choose what to vary"):
        xyz_panel.plan_from_page(studio, form, [False], ["Nothing", "", "Nothing", "", "Nothing", "", True, False, 0])
