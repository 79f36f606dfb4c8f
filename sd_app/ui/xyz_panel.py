"""The X/Y/Z plot accordion of the txt2img tab: three axes, *Generate grid*, results in the tab's gallery.

`layout` places the panel (inside the txt2img options column); `wire` binds its events once the tab's form
and results exist. The plan and the grid are `sd_app/xyz.py`'s; the page only collects the axes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from .. import xyz
from ..errors import UserError
from ..studio import Studio
from . import hires as hires_ui
from . import txt2img  # the tab this panel sits in: its form, progress bar and session owner
from .handlers import bind, shows_user_errors

SYNTAX = ("Values are comma-separated (quotes keep a comma inside a value). Numbers also take ranges: `1-5`, "
          "`10-30 (+5)` (a step), `1-10 [4]` (a count). *Prompt S/R* replaces its first value in the prompt "
          "with each value; *LoRA weight* sets the weight of every `<lora:…>` tag. Seed -1 is drawn once: "
          "every cell gets the same noise unless the Seed axis varies it. At most "
          f"{xyz.MAX_CELLS} cells. *Fill* writes in the choices of a list axis (samplers, schedule types, "
          "checkpoints).")


@dataclass
class Panel:
    """The panel's inputs, in the order `run_grid` reads them after the form's."""

    x_type: gr.Dropdown
    x_values: gr.Textbox
    y_type: gr.Dropdown
    y_values: gr.Textbox
    z_type: gr.Dropdown
    z_values: gr.Textbox
    draw_legend: gr.Checkbox
    no_fixed_seeds: gr.Checkbox
    margin: gr.Slider

    def inputs(self) -> list:
        return [getattr(self, name) for name in self.__dataclass_fields__]


@dataclass
class Controls:
    panel: Panel
    generate: gr.Button
    fills: list  # (Fill button, type dropdown, values box) per axis
    swap: gr.Button


def layout(studio: Studio) -> Controls:
    labels = [axis.label for axis in xyz.AXES]
    rows = []
    with gr.Accordion("X/Y/Z plot", open=False, elem_id="xyz"):
        for letter, start in zip("XYZ", ("Seed", "Nothing", "Nothing")):
            with gr.Row(equal_height=True):
                kind = gr.Dropdown(labels, value=start, label=f"{letter} type", scale=2,
                                   elem_id=f"xyz-{letter.lower()}-type")
                values = gr.Textbox(label=f"{letter} values", scale=4, elem_id=f"xyz-{letter.lower()}-values",
                                    placeholder="1-5, 10-30 (+5), 1-10 [4], a, \"b, c\"")
                fill = gr.Button("Fill", scale=0, min_width=60)
            rows.append((fill, kind, values))
        with gr.Row():
            draw_legend = gr.Checkbox(True, label="Draw legend")
            no_fixed_seeds = gr.Checkbox(False, label="Keep -1 for seeds")
            swap = gr.Button("Swap X/Y axes", size="sm")
        margin = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)")
        gr.Markdown(SYNTAX)
        generate = gr.Button("Generate grid", variant="primary", elem_id="xyz-generate")
    (_, x_type, x_values), (_, y_type, y_values), (_, z_type, z_values) = rows
    panel = Panel(x_type, x_values, y_type, y_values, z_type, z_values, draw_legend, no_fixed_seeds, margin)
    return Controls(panel, generate, rows, swap)


def wire(controls: Controls, studio: Studio, form, hires: hires_ui.HiresControls, results) -> None:
    """Bind the panel: *Generate grid* runs the form's request (with its hires fix) with the axes into the tab's
    results."""
    sizes = (len(form.inputs()), len(hires.inputs()))
    controls.generate.click(bind(run_grid, studio, results, sizes),
                            inputs=form.inputs() + hires.inputs() + controls.panel.inputs(), outputs=results.outputs(),
                            concurrency_limit=1, concurrency_id="gpu", api_name="xyz_plot")
    for fill, kind, values in controls.fills:
        fill.click(bind(fill_values, studio), kind, values, queue=False, api_name=False)
    panel = controls.panel
    pair = [panel.x_type, panel.x_values, panel.y_type, panel.y_values]
    controls.swap.click(lambda a, b, c, d: (c, d, a, b), pair, pair, queue=False, api_name=False)


def plan_from_page(studio: Studio, form_values: list, hires_values: list, panel_values: list) -> xyz.GridPlan:
    """The form's request, its hires fix and the panel's axes -> a checked plan."""
    x_type, x_values, y_type, y_values, z_type, z_values, draw_legend, no_fixed_seeds, margin = panel_values
    axes = [(x_type, x_values), (y_type, y_values), (z_type, z_values)]
    params = hires_ui.with_hires(txt2img.values_to_params(form_values, studio.limits()), hires_values)
    return xyz.make_plan(params, axes, studio.checkpoint_names(), draw_legend=bool(draw_legend),
                         no_fixed_seeds=bool(no_fixed_seeds), margin=int(margin or 0),
                         upscalers=studio.upscaler_names())


@shows_user_errors
def run_grid(studio: Studio, results, sizes: tuple[int, int], request: gr.Request, *values):
    """Generate grid: one job for every cell; the progress spans the cells; then the grid, then each image.
    `sizes`: how many of `values` are the form's, then the hires fix's (the panel's follow)."""
    form_size, hires_size = sizes
    plan = plan_from_page(studio, list(values[:form_size]), list(values[form_size:form_size + hires_size]),
                          list(values[form_size + hires_size:]))
    job = studio.start_grid(plan, owner=txt2img.session_owner(request))
    yield {results.error: ""}
    result = yield from txt2img.follow_job(studio, job, results, plan.base, "xyz_plot")  # previews at a cell's size
    note = " (interrupted)" if result.interrupted else ""
    done = (f"<div class='hg-progress'>Done{note}: a grid of {len(result.images) - 1} image(s) in "
            f"{time.time() - job.started:.1f}s</div>")
    captions = ["X/Y/Z plot"] + [f"seed {s}" for s in result.seeds[1:]]
    yield {results.progress: done, results.preview: gr.update(visible=False),
           results.gallery: list(zip(result.images, captions)), results.info: result.infotexts[0],
           results.infotexts: result.infotexts, results.last_seed: result.seeds[0]}


def fill_values(studio: Studio, label):
    """Fill (A1111's 📒): the choices of a list axis (samplers, schedule types, checkpoints) as its values text."""
    try:
        axis = xyz.find_axis(label)
    except UserError as err:
        raise gr.Error(str(err)) from None
    if axis.choices is None:
        gr.Info(f"{axis.label} has no list to fill in: type its values")
        return gr.update()
    return xyz.join_values(axis.choices(studio.checkpoint_names()))
