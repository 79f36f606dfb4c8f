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
from ..params import LIMITS, SDXL_SIZES, GenerationParams
from ..prompts import token_chunks
from ..studio import Studio
from .handlers import bind, shows_user_errors

NO_REFINER = "None"
POLL_SECONDS = 0.25
SIZE_CHOICES = [f"{w}x{h}" for w, h in SDXL_SIZES]
CUSTOM_SIZE = "custom"


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

    def inputs(self) -> list:
        return [getattr(self, name) for name in self.__dataclass_fields__]


@dataclass
class Results:
    """What a run shows and keeps, in the order Generate's outputs list them."""

    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    infotexts: gr.State
    last_seed: gr.State

    def outputs(self) -> list:
        return [getattr(self, name) for name in self.__dataclass_fields__]


def values_to_params(values: list) -> GenerationParams:
    """Form values -> the request; Gradio hands numbers as floats, so whole numbers are made ints here."""
    (checkpoint, prompt, negative, sampler, scheduler, steps, width, height, cfg, seed, n_iter, batch,
     refiner, switch) = values

    def whole(value, name):
        if value is None or (isinstance(value, float) and not value.is_integer()):
            raise UserError(f"must be a whole number, got {value!r}", field=name)
        return int(value)

    return GenerationParams(
        prompt=prompt or "", negative_prompt=negative or "", steps=whole(steps, "steps"),
        cfg_scale=float(cfg), width=whole(width, "width"), height=whole(height, "height"),
        sampler_name=sampler, scheduler=scheduler, seed=whole(seed, "seed"), batch_size=whole(batch, "batch_size"),
        n_iter=whole(n_iter, "n_iter"), checkpoint=checkpoint or None,
        refiner_checkpoint=None if refiner in (None, "", NO_REFINER) else refiner,
        refiner_switch_at=float(switch)).check()


def params_to_updates(params: GenerationParams, form: Form) -> dict:
    """Form updates that show a request (from pasted infotext, a preset, or a gallery image)."""
    return {
        form.prompt: params.prompt, form.negative_prompt: params.negative_prompt,
        form.sampler_name: _sampler_choice(params.sampler_name), form.scheduler: _schedule_choice(params),
        form.steps: params.steps, form.width: params.width, form.height: params.height,
        form.cfg_scale: params.cfg_scale, form.seed: params.seed, form.n_iter: params.n_iter,
        form.batch_size: params.batch_size,
        form.refiner_checkpoint: params.refiner_checkpoint or NO_REFINER,
        form.refiner_switch_at: params.refiner_switch_at,
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


def progress_html(job: Job, queued: bool = False) -> str:
    if queued:
        return "<div class='hg-progress'>Waiting for the GPU…</div>"
    percent = round(job.progress * 100)
    eta = job.eta()
    batch = f" · batch {job.job_no + 1}/{job.job_count}" if job.job_count > 1 else ""
    eta_text = f" · ETA {eta:.0f}s" if eta is not None and job.progress > 0 else ""
    text = job.note or f"Step {job.sampling_step}/{job.sampling_steps or '?'}{batch}{eta_text}"
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
                                 elem_id="checkpoint", allow_custom_value=True)
        refresh = gr.Button("↻ Refresh", scale=0, min_width=90)
        preset = gr.Dropdown([""] + list(presets), value=studio.start_preset or "", label="Preset", scale=2,
                             elem_id="preset")
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(defaults.prompt, label="Prompt", lines=3, elem_id="prompt",
                                placeholder="a photo of a cat, (masterpiece:1.2) <lora:name:0.8>")
            prompt_tokens = gr.Markdown(token_chunks(0), elem_id="prompt-tokens")
            negative_prompt = gr.Textbox(defaults.negative_prompt, label="Negative prompt", lines=2,
                                         elem_id="negative-prompt")
            negative_tokens = gr.Markdown(token_chunks(0))
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id="generate", size="lg", interactive=not loading)
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="interrupt", size="sm")
                skip = gr.Button("Skip", elem_id="skip", size="sm")
    with gr.Row():
        with gr.Column(scale=1):
            fields, size, swap, random_seed, reuse_seed = _options_column(studio, defaults, loading)
        with gr.Column(scale=1):
            shown, to_form, pasted, apply_paste, dropped, dropped_info, dropped_to_form = _results_column()
    # The states come after the row, as they always did: the page's blocks keep their order.
    results = Results(*shown, infotexts=gr.State([]), last_seed=gr.State(-1))
    form = Form(checkpoint=checkpoint, prompt=prompt, negative_prompt=negative_prompt, **fields)

    generate.click(bind(run, studio, results), inputs=form.inputs(), outputs=results.outputs(),
                   concurrency_limit=1, concurrency_id="gpu", api_name="txt2img")
    interrupt.click(bind(interrupt_job, studio), None, None, queue=False, api_name="interrupt")
    skip.click(bind(skip_job, studio), None, None, queue=False, api_name="skip")
    results.gallery.select(select_infotext, results.infotexts, results.info, api_name=False)

    form_outputs = form.inputs() + [size]
    fill = bind(fill_form, studio, form, size)
    to_form.click(fill, results.info, form_outputs, api_name=False)
    apply_paste.click(fill, pasted, form_outputs, api_name="paste_parameters")
    dropped.change(read_png_info, dropped, dropped_info, api_name="png_info")
    dropped_to_form.click(fill, dropped_info, form_outputs, api_name=False)
    preset.change(bind(choose_preset, studio, form, size), [preset] + form.inputs(), form_outputs, api_name=False)

    lists = [checkpoint, form.refiner_checkpoint, preset, no_model_box]
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

    return form, {"prompt": prompt, "gallery": results.gallery, "info": results.info, "checkpoint": checkpoint,
                  "preset": preset, "generate": generate, "lists": lists}


def start_defaults(studio: Studio) -> GenerationParams:
    """What the form shows first: the settings' defaults, with the --preset preset on top."""
    defaults = studio.settings.generation_defaults()
    if studio.start_preset:
        defaults = studio.presets.get(studio.start_preset).apply(defaults)
    return defaults


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
    steps = gr.Slider(*LIMITS["steps"], value=defaults.steps, step=1, label="Steps", elem_id="steps")
    with gr.Row():
        size = gr.Dropdown(SIZE_CHOICES + [CUSTOM_SIZE], label="SDXL size",
                           value=_size_choice(defaults.width, defaults.height), scale=2)
        swap = gr.Button("⇅ swap", scale=0, min_width=70)
    with gr.Row():
        width = gr.Slider(64, 2048, value=defaults.width, step=8, label="Width", elem_id="width")
        height = gr.Slider(64, 2048, value=defaults.height, step=8, label="Height", elem_id="height")
    cfg_scale = gr.Slider(*LIMITS["cfg_scale"], value=defaults.cfg_scale, step=0.5, label="CFG scale")
    with gr.Row():
        seed = gr.Number(defaults.seed, label="Seed (-1: random)", precision=0, elem_id="seed", scale=3)
        random_seed = gr.Button("Random", scale=0, min_width=70)
        reuse_seed = gr.Button("Reuse last", scale=0, min_width=90)
    with gr.Row():
        n_iter = gr.Slider(1, LIMITS["n_iter"][1], value=defaults.n_iter, step=1, label="Batch count")
        batch_size = gr.Slider(1, LIMITS["batch_size"][1], value=defaults.batch_size, step=1, label="Batch size")
    refiner_names = [] if loading else studio.checkpoint_names("sdxl-refiner")
    start_refiner = defaults.refiner_checkpoint if defaults.refiner_checkpoint in refiner_names else NO_REFINER
    with gr.Accordion("Refiner", open=start_refiner != NO_REFINER):
        refiner_checkpoint = gr.Dropdown([NO_REFINER] + refiner_names, value=start_refiner, label="Refiner",
                                         elem_id="refiner", allow_custom_value=True)
        refiner_switch_at = gr.Slider(0.01, 1.0, value=defaults.refiner_switch_at, step=0.01,
                                      label="Switch at (fraction of steps on the base)")
    fields = dict(sampler_name=sampler_name, scheduler=scheduler, steps=steps, width=width, height=height,
                  cfg_scale=cfg_scale, seed=seed, n_iter=n_iter, batch_size=batch_size,
                  refiner_checkpoint=refiner_checkpoint, refiner_switch_at=refiner_switch_at)
    return fields, size, swap, random_seed, reuse_seed


def _results_column():
    """Progress, preview, gallery and infotext (the shown Results), then parameter paste and PNG Info."""
    progress = gr.HTML("", elem_id="progress")
    preview = gr.Image(label="Preview", visible=False, format="png", interactive=False, height=160)
    gallery = gr.Gallery(label="Results", format="png", columns=2, height=420, elem_id="gallery",
                         interactive=False)
    info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="infotext",
                      buttons=["copy"])
    to_form = gr.Button("↙ Use these parameters")
    with gr.Accordion("Paste parameters (A1111 infotext)", open=False):
        pasted = gr.Textbox(label="Infotext", lines=4, elem_id="paste-box")
        apply_paste = gr.Button("Fill the form")
    with gr.Accordion("PNG Info", open=False):
        dropped = gr.Image(type="pil", label="Drop an image", sources=["upload", "clipboard"],
                           format="png", elem_id="png-info")
        dropped_info = gr.Textbox(label="Parameters in the image", lines=4, interactive=False)
        dropped_to_form = gr.Button("Send to the form")
    return (progress, preview, gallery, info), to_form, pasted, apply_paste, dropped, dropped_info, dropped_to_form


# ---- handlers -----------------------------------------------------------------------------------------


def session_owner(request: gr.Request | None) -> str:
    """The owner of this browser session's jobs."""
    return request.session_hash if request else "local"


@shows_user_errors
def run(studio: Studio, results: Results, request: gr.Request, *values):
    """Generate: start this session's job and show its progress and preview until it ends, then its images."""
    params = values_to_params(list(values))
    job = studio.start(params, owner=session_owner(request))
    while not job.done:
        job.wait(POLL_SECONDS)
        shown = job.preview
        yield {results.progress: progress_html(job, queued=job.started is None),
               results.preview: gr.update(value=shown, visible=shown is not None)}
    if job.error is not None:
        yield {results.progress: "", results.preview: gr.update(visible=False)}
        raise gr.Error(job.error)
    result = job.result
    note = " (interrupted)" if result.interrupted else ""
    for warning in result.warnings:
        gr.Warning(warning)
    done = (f"<div class='hg-progress'>Done{note}: {len(result.images)} image(s) in "
            f"{time.time() - job.started:.1f}s</div>")
    yield {results.progress: done, results.preview: gr.update(visible=False),
           results.gallery: [(img, f"seed {s}") for img, s in zip(result.images, result.seeds)],
           results.info: result.infotexts[0] if result.infotexts else "", results.infotexts: result.infotexts,
           results.last_seed: result.seeds[0] if result.seeds else -1}


def interrupt_job(studio: Studio, request: gr.Request):
    """Stop this browser session's job after the current step; other users' jobs go on."""
    studio.interrupt(session_owner(request))


def skip_job(studio: Studio, request: gr.Request):
    studio.skip(session_owner(request))


def select_infotext(texts, evt: gr.SelectData):
    return texts[evt.index] if 0 <= evt.index < len(texts) else ""


def refiner_dropdown_names(studio: Studio) -> list[str]:
    return [NO_REFINER] + studio.checkpoint_names("sdxl-refiner")


def fill_form(studio: Studio, form: Form, size: gr.Dropdown, text):
    """Fill the form from an infotext (the result's, a pasted one, or a dropped image's)."""
    if not text or not text.strip():
        raise gr.Error("there are no parameters to use")
    params = infotext.to_params(text, studio.settings.generation_defaults(), loras=studio.loras)
    updates = params_to_updates(params, form)
    if params.checkpoint and params.checkpoint in studio.checkpoint_names("sdxl-base"):
        updates[form.checkpoint] = params.checkpoint
    if params.refiner_checkpoint not in refiner_dropdown_names(studio):
        updates[form.refiner_checkpoint] = NO_REFINER
    updates[size] = _size_choice(params.width, params.height)
    return updates


def read_png_info(image):
    return (infotext.read_image(image) or "(no parameters in this image)") if image else ""


@shows_user_errors
def choose_preset(studio: Studio, form: Form, size: gr.Dropdown, name, *values):
    """Apply a preset over the form as it is now."""
    if not name:
        return {}
    chosen = studio.presets.get(name, loras=studio.loras)
    params = chosen.apply(values_to_params(list(values)))
    updates = params_to_updates(params, form)
    if params.refiner_checkpoint and params.refiner_checkpoint not in refiner_dropdown_names(studio):
        gr.Warning(f"preset refiner {params.refiner_checkpoint!r} is not in your checkpoint folder")
        updates[form.refiner_checkpoint] = NO_REFINER
    updates[size] = _size_choice(params.width, params.height)
    return updates


def refresh_lists(studio: Studio, current):
    """Read the folders again: (checkpoint, refiner and preset dropdowns, the no-checkpoint note)."""
    bases = studio.checkpoint_names("sdxl-base")
    names, _ = studio.presets.load()
    return (gr.update(choices=bases, value=current if current in bases else studio.current_checkpoint()),
            gr.update(choices=refiner_dropdown_names(studio)), gr.update(choices=[""] + list(names)),
            gr.update(visible=not bases))


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
