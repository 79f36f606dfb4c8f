"""The txt2img tab: the form, Generate / Interrupt / Skip, live progress, the gallery and parameter paste.

`build` lays the tab out and wires its events; the handlers below it are plain functions of the studio (and
of the components they fill), bound with `handlers.bind`.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import gradio as gr

from .. import infotext, samplers
from ..errors import UserError
from ..jobs import Job
from ..params import LIMITS, SDXL_SIZES, GenerationParams, Limits
from ..preview import enlarged
from ..prompts import token_chunks
from ..studio import Studio
from . import embedding_cards
from . import hires as hires_ui
from . import xyz_panel
from .components import form_slider
from .handlers import bind, refused, shows_user_errors
from .lora_cards import card_grid, list_cards
from .paste_report import report_markdown

NO_REFINER = "None"
POLL_SECONDS = 0.25
SIZE_CHOICES = [f"{w}x{h}" for w, h in SDXL_SIZES]
CUSTOM_SIZE = "custom"
UNDO_DEPTH = 20  # presets the Undo button can take back, most recent first


# The Form's last fields, after styles, in this order: optional, so a shorter list of values keeps the defaults.
EXTRA_FIELDS = ("clip_skip", "sdxl_clip_l_skip", "tiling", "subseed", "subseed_strength", "seed_resize_from_w",
                "seed_resize_from_h")


@dataclass
class Form:
    """The components that make a GenerationParams, in the order `values_to_params` reads them."""

    checkpoint: gr.Dropdown
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler_name: gr.Dropdown
    scheduler: gr.Dropdown
    steps: gr.Slider
    width: gr.Slider
    height: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    n_iter: gr.Slider
    batch_size: gr.Slider
    refiner_checkpoint: gr.Dropdown
    refiner_switch_at: gr.Slider
    styles: gr.Dropdown
    clip_skip: gr.Number | None = None  # last ones (EXTRA_FIELDS): values_to_params reads them when the form has them
    sdxl_clip_l_skip: gr.Checkbox | None = None
    tiling: gr.Checkbox | None = None
    subseed: gr.Number | None = None  # A1111's "Extra" seed options: variation seed and seed resize
    subseed_strength: gr.Slider | None = None
    seed_resize_from_w: gr.Slider | None = None
    seed_resize_from_h: gr.Slider | None = None

    def inputs(self) -> list:
        return [getattr(self, name) for name in self.__dataclass_fields__ if getattr(self, name) is not None]


@dataclass
class Results:
    """What a run shows and keeps, in the order Generate's outputs list them."""

    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    infotexts: gr.State
    last_seed: gr.State
    error: gr.HTML  # beside the form: why the request was refused; the results above stay as they were

    def outputs(self) -> list:
        return [getattr(self, name) for name in self.__dataclass_fields__]


@dataclass
class PresetControls:
    """The preset picker, its Undo button, the chosen preset's description and the undo stack (a list of
    {"values": the form's values before, "after": its values after, "chosen": the preset, "before": the preset
    shown before})."""

    preset: gr.Dropdown
    undo: gr.Button
    about: gr.Markdown
    stack: gr.State

    def outputs(self) -> list:
        return [self.preset, self.undo, self.about, self.stack]


def values_to_params(values: list, limits: Limits | None = None) -> GenerationParams:
    """Form values -> the request, checked against `limits` (Settings → Limits). Gradio may hand whole numbers as
    floats (30.0): those become ints; any other value goes to the check as it came, which refuses it with the
    message that names the field."""
    (checkpoint, prompt, negative, sampler, scheduler, steps, width, height, cfg, seed, n_iter, batch,
     refiner, switch, styles, *more) = values

    def whole(value):
        return int(value) if isinstance(value, float) and value.is_integer() else value

    def number(value):
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    extra = dict(zip(EXTRA_FIELDS, more))  # missing ones keep GenerationParams' defaults
    for name in ("clip_skip", "subseed", "seed_resize_from_w", "seed_resize_from_h"):
        if name in extra:
            extra[name] = whole(extra[name])
    if "subseed_strength" in extra:
        extra["subseed_strength"] = number(extra["subseed_strength"])

    return GenerationParams(
        prompt=prompt or "", negative_prompt=negative or "", steps=whole(steps),
        cfg_scale=number(cfg), width=whole(width), height=whole(height),
        sampler_name=sampler, scheduler=scheduler, seed=whole(seed), batch_size=whole(batch),
        n_iter=whole(n_iter), checkpoint=checkpoint or None,
        refiner_checkpoint=None if refiner in (None, "", NO_REFINER) else refiner,
        refiner_switch_at=number(switch), styles=tuple(styles or ()), **extra).check(limits)


def params_to_updates(params: GenerationParams, form: Form) -> dict:
    """Form updates that show a request (from pasted infotext, a preset, or a gallery image)."""
    return {
        form.prompt: params.prompt, form.negative_prompt: params.negative_prompt,
        form.sampler_name: _sampler_choice(params.sampler_name), form.scheduler: _schedule_choice(params),
        form.steps: params.steps, form.width: params.width, form.height: params.height,
        form.cfg_scale: params.cfg_scale, form.seed: params.seed, form.n_iter: params.n_iter,
        form.batch_size: params.batch_size,
        form.refiner_checkpoint: params.refiner_checkpoint or NO_REFINER,
        form.refiner_switch_at: params.refiner_switch_at, form.styles: list(params.styles),
        **{getattr(form, name): getattr(params, name) for name in EXTRA_FIELDS if getattr(form, name) is not None},
    }


def _sampler_choice(name: str) -> str:
    try:
        return samplers.resolve(name, "Automatic")[0].name
    except UserError:
        return "DPM++ 2M"


def _schedule_choice(params: GenerationParams) -> str:
    try:
        sampler, schedule = samplers.resolve(params.sampler_name, params.scheduler)
    except UserError:
        return "Automatic"
    return schedule.name if params.scheduler != "Automatic" or sampler.name != params.sampler_name else "Automatic"


def progress_html(job: Job, queued: bool = False, ahead: int = 0) -> str:
    """The progress bar: the place in the queue, what the job does before its first step (loading, encoding,
    compiling), then the steps with the ETA."""
    if queued:
        place = f": {ahead} job{'s' if ahead != 1 else ''} ahead" if ahead else "…"
        return f"<div class='hg-progress'><span>Waiting for the GPU{place}</span></div>"
    percent = round(job.progress * 100)
    eta = job.eta()
    batch = f" · batch {job.job_no + 1}/{job.job_count}" if job.job_count > 1 else ""
    batch += f" · cell {job.part_no + 1}/{job.part_count}" if job.part_count > 1 else ""
    eta_text = f" · ETA {eta:.0f}s" if eta is not None and job.progress > 0 else ""
    if job.note:
        text = html.escape(job.note)  # notes name checkpoints: file names are not markup
    elif not job.sampling_steps:
        text = "Starting…"
    else:
        text = f"Step {job.sampling_step}/{job.sampling_steps}{batch}{eta_text}"
    return f"<div class='hg-progress'><div class='hg-bar' style='width:{percent}%'></div><span>{text}</span></div>"


# ---- layout -------------------------------------------------------------------------------------------


def build(studio: Studio, loading: bool = False) -> tuple[Form, dict]:
    """The tab. While `loading` (the model stack importing at start) the checkpoint lists start empty and
    Generate is off; `ui.startup_status` fills and enables them when loading ends."""
    defaults = start_defaults(studio)
    base_names = [] if loading else studio.checkpoint_names("sdxl-base")
    presets, _ = studio.presets.load()

    no_model_box, get_base, get_refiner, download_status = _no_model_box(studio, visible=not (loading or base_names))
    with gr.Row():
        # Custom values: the lists change after the page is built (start-up loading, downloads, new files), and
        # Gradio would check API clients' names against the lists of that moment; the studio checks names.
        checkpoint = gr.Dropdown(base_names, value=studio.current_checkpoint(), label="Checkpoint", scale=4,
                                 elem_id="checkpoint", info=checkpoint_note(studio), allow_custom_value=True)
        refresh = gr.Button("↻ Refresh", scale=0, min_width=90)
        preset = gr.Dropdown([""] + list(presets), value=studio.start_preset or "", label="Preset", scale=2,
                             elem_id="preset")
        undo = gr.Button("↶ Undo preset", scale=0, min_width=110, interactive=False, elem_id="undo-preset")
    controls = PresetControls(preset, undo, gr.Markdown(preset_about(studio, studio.start_preset),
                                                        elem_id="preset-about"), gr.State([]))
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(defaults.prompt, label="Prompt", lines=3, elem_id="prompt",
                                placeholder="a photo of a cat, (masterpiece:1.2) <lora:name:0.8>")
            prompt_tokens = gr.Markdown(token_chunks(0), elem_id="prompt-tokens")
            negative_prompt = gr.Textbox(defaults.negative_prompt, label="Negative prompt", lines=2,
                                         elem_id="negative-prompt")
            negative_tokens = gr.Markdown(token_chunks(0))
            styles = _styles_picker(studio, defaults)
            _extra_networks(studio, prompt)
            embedding_cards.extra_networks(studio, prompt, negative_prompt)
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id="generate", size="lg", interactive=not loading)
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="interrupt", size="lg", variant="stop")
                skip = gr.Button("Skip", elem_id="skip", size="lg")
            error = gr.HTML("", elem_id="error")
    with gr.Row():
        with gr.Column(scale=1):
            fields, size, swap, random_seed, reuse_seed = _options_column(studio, defaults, loading)
            hires = hires_ui.layout(studio.upscaler_names())
            grid_controls = xyz_panel.layout(studio)
        with gr.Column(scale=1):
            (shown, to_form, pasted, apply_paste, dropped, dropped_info, dropped_to_form, report,
             paste_box) = _results_column()
    # The states come after the row, as they always did: the page's blocks keep their order.
    results = Results(*shown, infotexts=gr.State([]), last_seed=gr.State(-1), error=error)
    form = Form(checkpoint=checkpoint, prompt=prompt, negative_prompt=negative_prompt, **fields, styles=styles)

    # No Gradio concurrency limit: jobs wait on the studio's board, whose progress bar tells each user their
    # place ("2 jobs ahead"), for page and API jobs alike; Gradio's queue would only show a clipped "queue: 1/1".
    # Gradio's own status ("Error") goes beside the form, not over the last results.
    generate.click(bind(run, studio, results), inputs=form.inputs() + hires.inputs(), outputs=results.outputs(),
                   concurrency_limit=None, api_name="txt2img", show_progress_on=[results.error])
    xyz_panel.wire(grid_controls, studio, form, hires, results)  # "Generate grid": the same form and results
    interrupt.click(bind(interrupt_job, studio), None, None, queue=False, api_name="interrupt")
    skip.click(bind(skip_job, studio), None, None, queue=False, api_name="skip")
    results.gallery.select(select_infotext, results.infotexts, results.info, api_name=False)

    form_outputs = form.inputs() + [size]
    fill = hires_ui.filling(bind(fill_form, studio, form, size, report, paste_box), hires)
    filled = form_outputs + [report, paste_box] + hires.inputs()
    to_form.click(fill, [results.info] + form.inputs(), filled, api_name=False)
    apply_paste.click(fill, [pasted] + form.inputs(), filled, api_name="paste_parameters")
    dropped.change(read_png_info, dropped, dropped_info, api_name="png_info")
    dropped_to_form.click(fill, [dropped_info] + form.inputs(), filled, api_name=False)
    # `select` (a person's choice, once), not `change`: Undo shows the earlier preset without applying it again.
    preset.select(bind(choose_preset, studio, form, size, controls), [preset, controls.stack] + form.inputs(),
                  form_outputs + controls.outputs(), api_name=False)
    undo.click(bind(undo_preset, studio, form, size, controls), [controls.stack] + form.inputs(),
               form_outputs + controls.outputs(), api_name=False)

    lists = [checkpoint, form.refiner_checkpoint, preset, no_model_box, styles]
    refresh.click(bind(refresh_lists, studio), checkpoint, lists, api_name=False)
    checkpoint.input(bind(change_checkpoint, studio), checkpoint, checkpoint, concurrency_limit=1,
                     concurrency_id="gpu", api_name=False)

    tokens = bind(show_token_count, studio)
    prompt.change(tokens, prompt, prompt_tokens, queue=False, api_name=False)
    negative_prompt.change(tokens, negative_prompt, negative_tokens, queue=False, api_name=False)
    size.input(_size_values, size, [form.width, form.height], queue=False, api_name=False)
    swap.click(swap_size, [form.width, form.height], [form.width, form.height, size], queue=False, api_name=False)
    random_seed.click(lambda: -1, None, form.seed, queue=False, api_name=False)
    reuse_seed.click(lambda s: s, results.last_seed, form.seed, queue=False, api_name=False)
    if not studio.offline:
        get_base.click(bind(fetch_sdxl, studio), get_refiner, [download_status] + lists, api_name=False)

    on_load = (bind(current_form, studio, form, size, no_model_box), None, form.inputs() + [size, no_model_box])
    return form, {"prompt": prompt, "gallery": results.gallery, "info": results.info, "checkpoint": checkpoint,
                  "preset": preset, "load": on_load, "size": size, "generate": generate,
                  "generate_buttons": [generate], "lists": lists, "dropped": dropped, "dropped_info": dropped_info,
                  "results": results}


def start_defaults(studio: Studio) -> GenerationParams:
    """What the form shows first: the settings' defaults, with the --preset preset on top."""
    defaults = studio.settings.generation_defaults()
    if studio.start_preset:
        defaults = studio.presets.get(studio.start_preset).apply(defaults)
    return defaults


def _styles_picker(studio: Studio, defaults: GenerationParams) -> gr.Dropdown:
    """Styles as chips: applied to the prompts when an image is made, never written into the prompt box."""
    names = studio.styles.names()
    return gr.Dropdown(names, value=[n for n in defaults.styles if n in names], multiselect=True, label="Styles",
                       info="Prompt templates added when you press Generate; your prompt stays as you wrote it",
                       elem_id="styles")


def _extra_networks(studio: Studio, prompt: gr.Textbox) -> None:
    """A1111's Extra Networks under the prompt: the LoRA cards, listed when the accordion opens."""
    with gr.Accordion("Extra networks: LoRA", open=False, elem_id="extra-networks") as box:
        grid = card_grid(studio, prompt, "txt2img-lora", columns=6, height=280)
    box.expand(bind(list_cards, studio), grid.search, grid.outputs(), api_name=False)


def preset_about(studio: Studio, name: str | None) -> str:
    """The preset's description and what it sets; then the problems of preset and style files, if any."""
    lines = []
    if name:
        try:
            preset = studio.presets.get(name)
            sets = _preset_summary(preset.parameters)
            lines.append(f"**{html.escape(preset.name)}**: {html.escape(preset.description)}" + (
                f" <small>(sets {html.escape(sets)})</small>" if sets else ""))
        except UserError as err:
            lines.append(f"⚠ {html.escape(str(err))}")
    lines += [f"⚠ {html.escape(p)}" for p in studio.presets.load()[1] + studio.styles.load()[1]]
    return "\n\n".join(lines)


def _preset_summary(parameters: dict) -> str:
    """What a preset sets, in the form's words: "256x256, Euler a, 12 steps, CFG 7, styles Photo"."""
    parts = []
    if "width" in parameters or "height" in parameters:
        parts.append(f"{parameters.get('width', '…')}x{parameters.get('height', '…')}")
    if "sampler_name" in parameters:
        schedule = parameters.get("scheduler", "Automatic")
        parts.append(parameters["sampler_name"] + (f" {schedule}" if schedule != "Automatic" else ""))
    words = {"steps": "{} steps", "cfg_scale": "CFG {:g}", "seed": "seed {}", "n_iter": "batch count {}",
             "batch_size": "batch size {}"}
    parts += [words[key].format(parameters[key]) for key in words if key in parameters]
    if parameters.get("styles"):
        parts.append("styles " + ", ".join(parameters["styles"]))
    return ", ".join(parts)


def current_form(studio: Studio, form: Form, size: gr.Dropdown, no_model_box: gr.Column) -> dict:
    """The form as a page load shows it: the defaults saved in Settings now and the models found now (the page
    as built holds those of the app's start)."""
    defaults = start_defaults(studio)
    updates = params_to_updates(defaults, form)
    bases, refiners = studio.checkpoint_names("sdxl-base"), refiner_dropdown_names(studio)
    updates[form.checkpoint] = gr.update(choices=bases, value=studio.current_checkpoint())
    refiner = defaults.refiner_checkpoint if defaults.refiner_checkpoint in refiners else NO_REFINER
    updates[form.refiner_checkpoint] = gr.update(choices=refiners, value=refiner)
    updates[size] = _size_choice(defaults.width, defaults.height)
    updates[no_model_box] = gr.update(visible=not bases)
    return updates


def _no_model_box(studio: Studio, visible: bool):
    """How to get a checkpoint, shown while there is none; its download controls are None when offline."""
    get_base = get_refiner = download_status = None
    with gr.Column(visible=visible) as box:
        gr.Markdown(no_checkpoint_text(studio), elem_id="no-checkpoint")
        if not studio.offline:
            with gr.Row():
                get_base = gr.Button("Download SDXL base 1.0 (6.9 GB)", variant="primary")
                get_refiner = gr.Checkbox(label="also the refiner (6.1 GB)", value=False)
            download_status = gr.Markdown()
    return box, get_base, get_refiner, download_status


def _options_column(studio: Studio, defaults: GenerationParams, loading: bool = False):
    """The sampling options: (the Form's fields from sampler_name on, by name), size, swap and the seed buttons."""
    with gr.Row():
        sampler_name = gr.Dropdown([s.name for s in samplers.SAMPLERS], value=_sampler_choice(defaults.sampler_name),
                                   label="Sampler", elem_id="sampler")
        scheduler = gr.Dropdown([s.name for s in samplers.SCHEDULES], value=defaults.scheduler,
                                label="Schedule type")
    # Sliders from form_slider: a typed value the engine cannot use is refused with its message, not changed to fit.
    steps = form_slider(*LIMITS["steps"], value=defaults.steps, step=1, label="Steps", elem_id="steps")
    with gr.Row():
        size = gr.Dropdown(SIZE_CHOICES + [CUSTOM_SIZE], label="SDXL size",
                           value=_size_choice(defaults.width, defaults.height), scale=2)
        swap = gr.Button("⇅ swap", scale=0, min_width=70)
    with gr.Row():
        width = form_slider(*LIMITS["width"], value=defaults.width, step=8, label="Width", elem_id="width")
        height = form_slider(*LIMITS["height"], value=defaults.height, step=8, label="Height", elem_id="height")
    cfg_scale = form_slider(*LIMITS["cfg_scale"], value=defaults.cfg_scale, step=0.5, label="CFG scale",
                            elem_id="cfg-scale")
    tiling = gr.Checkbox(value=defaults.tiling, label="Tiling (seamless: the picture repeats without seams)",
                         elem_id="tiling")
    with gr.Row():
        seed = gr.Number(defaults.seed, label="Seed (-1: random)", elem_id="seed", scale=3)  # no rounding of 1.5
        random_seed = gr.Button("Random", scale=0, min_width=70)
        reuse_seed = gr.Button("Reuse last", scale=0, min_width=90)
    with gr.Accordion("Variation seed (A1111's Extra)", open=False, elem_id="variation"):
        with gr.Row():
            subseed = gr.Number(defaults.subseed, label="Variation seed (-1: random)", elem_id="subseed")
            subseed_strength = form_slider(*LIMITS["subseed_strength"], value=defaults.subseed_strength, step=0.01,
                                           label="Variation strength", elem_id="subseed-strength")
        with gr.Row():  # A1111's sliders start at 0 (off); its API sends -1 for off, accepted as well
            resize_w = form_slider(0, 2048, value=max(0, defaults.seed_resize_from_w), step=8,
                                   label="Resize seed from width (0: off)", elem_id="seed-resize-w")
            resize_h = form_slider(0, 2048, value=max(0, defaults.seed_resize_from_h), step=8,
                                   label="Resize seed from height (0: off)", elem_id="seed-resize-h")
    with gr.Row():
        n_iter = form_slider(*LIMITS["n_iter"], value=defaults.n_iter, step=1, label="Batch count")
        batch_size = form_slider(*LIMITS["batch_size"], value=defaults.batch_size, step=1, label="Batch size")
    refiner_names = [] if loading else studio.checkpoint_names("sdxl-refiner")
    start_refiner = defaults.refiner_checkpoint if defaults.refiner_checkpoint in refiner_names else NO_REFINER
    with gr.Accordion("Refiner", open=start_refiner != NO_REFINER):
        refiner_checkpoint = gr.Dropdown([NO_REFINER] + refiner_names, value=start_refiner, label="Refiner",
                                         elem_id="refiner", allow_custom_value=True)
        refiner_switch_at = form_slider(*LIMITS["refiner_switch_at"], value=defaults.refiner_switch_at, step=0.01,
                                        label="Switch at (fraction of steps on the base)")
    with gr.Row():  # A1111's "Clip skip": on SDXL it acts only with "Clip skip SDXL", on CLIP-L, as in A1111
        clip_skip = gr.Number(defaults.clip_skip, label="Clip skip", elem_id="clip-skip", precision=None)
        sdxl_clip_l_skip = gr.Checkbox(defaults.sdxl_clip_l_skip, label="Clip skip SDXL (CLIP-L only, as A1111)",
                                       elem_id="sdxl-clip-l-skip")
    fields = dict(sampler_name=sampler_name, scheduler=scheduler, steps=steps, width=width, height=height,
                  cfg_scale=cfg_scale, seed=seed, n_iter=n_iter, batch_size=batch_size,
                  refiner_checkpoint=refiner_checkpoint, refiner_switch_at=refiner_switch_at, clip_skip=clip_skip,
                  sdxl_clip_l_skip=sdxl_clip_l_skip, tiling=tiling, subseed=subseed, subseed_strength=subseed_strength,
                  seed_resize_from_w=resize_w, seed_resize_from_h=resize_h)
    return fields, size, swap, random_seed, reuse_seed


def _results_column():
    """Progress, preview, gallery and infotext (the shown Results), then parameter paste and PNG Info."""
    progress = gr.HTML("", elem_id="progress")
    preview = gr.Image(label="Preview", visible=False, format="png", interactive=False, height=320,
                       elem_id="preview")
    gallery = gr.Gallery(label="Results", format="png", columns=2, height=420, elem_id="gallery",
                         interactive=False)
    info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="infotext",
                      buttons=["copy"])
    to_form = gr.Button("↙ Use these parameters", elem_id="use-parameters")
    with gr.Accordion("Paste parameters (A1111 infotext)", open=False, elem_id="paste") as paste_box:
        pasted = gr.Textbox(label="Infotext", lines=4, elem_id="paste-box")
        apply_paste = gr.Button("Fill the form", elem_id="paste-apply")
        report = gr.Markdown(elem_id="paste-report")
    with gr.Accordion("PNG Info", open=False):
        dropped = gr.Image(type="pil", label="Drop an image", sources=["upload", "clipboard"],
                           format="png", elem_id="png-info")
        dropped_info = gr.Textbox(label="Parameters in the image", lines=4, interactive=False)
        dropped_to_form = gr.Button("Send to the form")
    return ((progress, preview, gallery, info), to_form, pasted, apply_paste, dropped, dropped_info, dropped_to_form,
            report, paste_box)


# ---- handlers -----------------------------------------------------------------------------------------


def session_owner(request: gr.Request | None) -> str:
    """The owner of this browser session's jobs."""
    return request.session_hash if request else "local"


@shows_user_errors
def run(studio: Studio, results: Results, request: gr.Request, *values):
    """Generate: start this session's job and show its progress and preview until it ends, then its images.
    If the page goes away first (the tab closed), Gradio closes this generator and the job is interrupted.
    A refused request shows why beside the form and leaves the last images, parameters and progress line as they
    were; API clients (gradio_client) still get the message as an error."""
    try:
        form_size = len(Form.__dataclass_fields__)  # then the hires fix accordion's values
        params = values_to_params(list(values[:form_size]), studio.limits())
        params = hires_ui.with_hires(params, values[form_size:]).check(studio.limits(), studio.upscaler_names())
    except UserError as err:
        yield {results.error: error_html(str(err))}
        raise refused("txt2img", err, toast=False) from None
    job = studio.start(params, owner=session_owner(request))
    yield {results.error: ""}
    result = yield from follow_job(studio, job, results, params, "txt2img")
    yield {results.progress: done_html(job), results.preview: gr.update(visible=False),
           results.gallery: [(img, f"seed {s}") for img, s in zip(result.images, result.seeds)],
           results.info: result.infotexts[0] if result.infotexts else "", results.infotexts: result.infotexts,
           results.last_seed: result.seeds[0] if result.seeds else -1}


def follow_job(studio: Studio, job, results, params: GenerationParams, what: str):
    """Yield `job`'s progress bar and each new preview into `results` (any with progress, preview and error) until
    it ends, then show its warnings; return its result. If the page goes away first (Gradio closes the generator)
    the job is interrupted. A failed job clears the bar, shows why beside the form and raises for `what`."""
    shown = None
    try:
        while not job.done:
            job.wait(POLL_SECONDS)
            queued = job.started is None
            update = {results.progress: progress_html(job, queued, studio.queue_position(job) if queued else 0)}
            if job.preview is not None and job.preview is not shown:  # a new preview only: each one is sent as PNG
                shown = job.preview
                update[results.preview] = gr.update(value=enlarged(shown, params.width, params.height), visible=True)
            yield update
    finally:
        if not job.done:
            job.interrupt()  # closed (GeneratorExit) or failed: nobody will see the rest
    if job.error is not None:
        yield {results.progress: "", results.preview: gr.update(visible=False), results.error: error_html(job.error)}
        raise refused(what, job.error, toast=False)
    for warning in job.result.warnings:
        gr.Warning(warning)
    return job.result


def done_html(job) -> str:
    note = " (interrupted)" if job.result.interrupted else ""
    return (f"<div class='hg-progress'><span>Done{note}: {len(job.result.images)} image(s) in "
            f"{time.time() - job.started:.1f}s</span></div>")


def error_html(message: str) -> str:
    return f"<div class='hg-error'>⚠ {html.escape(message)}</div>"


def interrupt_job(studio: Studio, request: gr.Request):
    """Stop this browser session's job after the current step; other users' jobs go on."""
    studio.interrupt(session_owner(request))


def skip_job(studio: Studio, request: gr.Request):
    studio.skip(session_owner(request))


def select_infotext(texts, evt: gr.SelectData):
    return texts[evt.index] if 0 <= evt.index < len(texts) else ""


def refiner_dropdown_names(studio: Studio) -> list[str]:
    return [NO_REFINER] + studio.checkpoint_names("sdxl-refiner")


@shows_user_errors
def fill_form(studio: Studio, form: Form, size: gr.Dropdown, report: gr.Markdown, paste_box: gr.Accordion, text,
              *values):
    """Fill the form from an infotext (the result's, a pasted one, or a dropped image's) over the form as it is,
    and say what of it was applied and what not, and why. A text that is not an infotext leaves the form alone."""
    if not text or not text.strip():
        raise UserError("there are no parameters to use")
    try:
        base = values_to_params(list(values)) if values else studio.settings.generation_defaults()
    except UserError:
        base = studio.settings.generation_defaults()
    models = studio.checkpoints()
    bases, refiners = studio.checkpoint_names("sdxl-base"), studio.checkpoint_names("sdxl-refiner")
    pasted = infotext.read_params(text, base, loras=studio.loras, styles=studio.styles,
                                  checkpoints=[m for m in models if m.name in bases],
                                  refiners=[m for m in models if m.name in refiners],
                                  upscalers=studio.upscaler_names())
    if not pasted.is_infotext:
        return {report: report_markdown(pasted), paste_box: gr.update(open=True)} if report is not None else {}
    params = pasted.params
    updates = params_to_updates(params, form)
    if params.checkpoint in bases:
        updates[form.checkpoint] = params.checkpoint
    updates[size] = _size_choice(params.width, params.height)
    if report is not None:  # None: a caller with no paste box (the History tab)
        updates[report] = report_markdown(pasted)
        if pasted.not_applied:
            updates[paste_box] = gr.update(open=True)  # the report is in there
    return updates


def read_png_info(image):
    return (infotext.read_image(image) or "(no parameters in this image)") if image else ""


@shows_user_errors
def choose_preset(studio: Studio, form: Form, size: gr.Dropdown, controls: PresetControls, name, stack, *values):
    """Apply a preset over the form as it is now, keeping the form as it was for Undo."""
    if not name:
        return {}
    chosen = studio.presets.get(name, loras=studio.loras, styles=studio.styles)
    params = chosen.apply(values_to_params(list(values), studio.limits()))
    updates = params_to_updates(params, form)
    if params.refiner_checkpoint and params.refiner_checkpoint not in refiner_dropdown_names(studio):
        gr.Warning(f"preset refiner {params.refiner_checkpoint!r} is not in your checkpoint folder")
        updates[form.refiner_checkpoint] = NO_REFINER
    updates[size] = _size_choice(params.width, params.height)
    before = stack[-1]["chosen"] if stack else (studio.start_preset or "")
    after = [updates.get(component, value) for component, value in zip(form.inputs(), values)]
    entry = {"values": list(values), "after": after, "chosen": name, "before": before}
    updates[controls.stack] = (list(stack) + [entry])[-UNDO_DEPTH:]
    updates[controls.undo] = gr.update(interactive=True)
    updates[controls.about] = preset_about(studio, name)
    return updates


def undo_preset(studio: Studio, form: Form, size: gr.Dropdown, controls: PresetControls, stack, *values):
    """Take back what the last preset changed (a field changed by hand since keeps its new value), and show
    the preset chosen before it."""
    if not stack:
        return {controls.undo: gr.update(interactive=False)}
    entry = stack[-1]
    restored = [before if before != after and now == after else now
                for before, after, now in zip(entry["values"], entry["after"], values)]
    updates = dict(zip(form.inputs(), restored))
    named = dict(zip(form.__dataclass_fields__, restored))
    updates[size] = _size_choice(int(named["width"]), int(named["height"]))
    updates[controls.preset] = entry["before"]
    updates[controls.stack] = stack[:-1]
    updates[controls.undo] = gr.update(interactive=len(stack) > 1)
    updates[controls.about] = preset_about(studio, entry["before"])
    return updates


def refresh_lists(studio: Studio, current):
    """Read the folders again: (checkpoint, refiner and preset dropdowns, the no-checkpoint note, the styles)."""
    bases = studio.checkpoint_names("sdxl-base")
    names, _ = studio.presets.load()
    return (gr.update(choices=bases, value=current if current in bases else studio.current_checkpoint(),
                      info=checkpoint_note(studio)),
            gr.update(choices=refiner_dropdown_names(studio)), gr.update(choices=[""] + list(names)),
            gr.update(visible=not bases), gr.update(choices=studio.styles.names()))


def checkpoint_note(studio: Studio) -> str | None:
    """The damaged checkpoint files, under the dropdown that leaves them out (None: there are none)."""
    problems = studio.checkpoint_problems()
    return "\n".join(f"⚠ {problem}" for problem in problems) if problems else None


def change_checkpoint(studio: Studio, name):
    """Load the chosen checkpoint; if it fails, say why and show the one still loaded."""
    if not name or name == studio.current_checkpoint():
        return gr.update()
    try:
        studio.load_checkpoint(name)
    except UserError as err:
        gr.Warning(str(err))
        return gr.update(value=studio.current_checkpoint())
    gr.Info(f"Loaded {name}")
    return gr.update()


def show_token_count(studio: Studio, text):
    return token_chunks(studio.count_tokens(text))


def swap_size(width, height):
    return height, width, _size_choice(height, width)


@shows_user_errors
def fetch_sdxl(studio: Studio, with_refiner, progress=gr.Progress()):
    """Download SDXL base (and the refiner if asked), load it and refresh the lists."""
    from ..downloads import SDXL_BASE, SDXL_REFINER

    wanted = [SDXL_BASE] + ([SDXL_REFINER] if with_refiner else [])
    for repo_id, filename in wanted:
        def report(done, total, name=filename):
            progress((done, total) if total else None, desc=f"Downloading {name}", unit="bytes")
        studio.download("checkpoint", repo_id, filename, progress=report)
    loaded = studio.load_startup_checkpoint()
    return f"Downloaded and loaded {loaded}.", *refresh_lists(studio, loaded)


def _size_choice(width: int, height: int) -> str:
    text = f"{width}x{height}"
    return text if text in SIZE_CHOICES else CUSTOM_SIZE


def _size_values(choice: str):
    if choice not in SIZE_CHOICES:
        return gr.update(), gr.update()
    width, height = (int(v) for v in choice.split("x"))
    return width, height


def no_checkpoint_text(studio: Studio) -> str:
    folder = html.escape(str(studio.settings.folder("ckpt").resolve()))
    text = (f"### No SDXL checkpoint yet\nPut an SDXL `.safetensors` file (for example "
            f"`sd_xl_base_1.0.safetensors`) into `{folder}` and press ↻ Refresh.")
    if not studio.offline:
        text += " Or download Stability's SDXL base 1.0 here:"
    return text
