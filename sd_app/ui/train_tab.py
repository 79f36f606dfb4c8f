"""The Train tab: train a LoRA on a folder of your images, watch its loss and samples, pause, stop.

The run is the studio's (`Studio.start_training`): it trains in the GPU queue, one step at a time, and lets
waiting generation jobs go first, so the txt2img tab keeps working while a LoRA trains. The finished LoRA
lands in the LoRA folder with a sample as its preview, and its settings beside it (`<name>.train.json`,
which `python -m sd_app.train` takes too).
"""

from __future__ import annotations

import dataclasses

import gradio as gr
import pandas as pd

from ..errors import UserError
from ..studio import Studio
from ..training.config import LR_SCHEDULES, OPTIMIZERS, PRECISIONS, TrainConfig
from .handlers import bind, shows_user_errors

DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
NUMBERS = ("resolution", "rank", "alpha", "max_steps", "learning_rate", "text_encoder_lr", "warmup_steps",
           "batch_size", "min_snr_gamma", "noise_offset", "seed", "save_every", "sample_every", "sample_steps")
WHOLE = {"resolution", "rank", "max_steps", "warmup_steps", "batch_size", "seed", "save_every", "sample_every",
         "sample_steps"}


def build(studio: Studio):
    gr.Markdown("Train a LoRA on your own pictures: a folder of images with optional same-name `.txt` captions "
                "(kohya's `10_name` subfolders repeat their images 10 times). Images without a caption get the "
                "caption template with the trigger word. Generation keeps working meanwhile: it goes first, "
                "between training steps.")
    fields: dict[str, gr.components.Component] = {}
    with gr.Row():
        fields["dataset_dir"] = gr.Textbox(label="Image folder", placeholder="/path/to/my_images")
        fields["output_name"] = gr.Textbox(label="LoRA name", placeholder="my_style_v1")
        fields["checkpoint"] = gr.Dropdown(label="Base checkpoint", choices=_bases(studio), allow_custom_value=True)
    with gr.Row():
        fields["trigger_word"] = gr.Textbox(label="Trigger word", placeholder="sks")
        fields["caption_template"] = gr.Textbox(label="Caption template (images without .txt)",
                                                value=DEFAULTS["caption_template"])
    with gr.Row():
        fields["resolution"] = gr.Dropdown(label="Resolution", choices=[512, 768, 1024], value=1024,
                                           allow_custom_value=True)
        fields["max_steps"] = gr.Number(label="Steps", value=DEFAULTS["max_steps"], precision=0)
        fields["rank"] = gr.Number(label="Rank (dim)", value=DEFAULTS["rank"], precision=0)
        fields["alpha"] = gr.Number(label="Alpha", value=DEFAULTS["alpha"])
        fields["batch_size"] = gr.Number(label="Batch size", value=DEFAULTS["batch_size"], precision=0)
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            fields["learning_rate"] = gr.Number(label="Learning rate", value=DEFAULTS["learning_rate"])
            fields["lr_schedule"] = gr.Dropdown(label="Schedule", choices=list(LR_SCHEDULES), value="constant")
            fields["warmup_steps"] = gr.Number(label="Warmup steps", value=0, precision=0)
            fields["optimizer"] = gr.Dropdown(label="Optimizer", choices=list(OPTIMIZERS), value="adamw")
            fields["mixed_precision"] = gr.Dropdown(label="Mixed precision", choices=list(PRECISIONS), value="auto")
        with gr.Row():
            fields["train_feed_forward"] = gr.Checkbox(label="Feed-forward layers", value=False)
            fields["train_conv"] = gr.Checkbox(label="Convolutions", value=False)
            fields["train_text_encoder"] = gr.Checkbox(label="Text encoders", value=False)
            fields["text_encoder_lr"] = gr.Number(label="Text encoder learning rate", value=DEFAULTS["text_encoder_lr"])
            fields["gradient_checkpointing"] = gr.Checkbox(label="Gradient checkpointing", value=True)
        with gr.Row():
            fields["min_snr_gamma"] = gr.Number(label="Min-SNR γ (0: off)", value=DEFAULTS["min_snr_gamma"])
            fields["noise_offset"] = gr.Number(label="Noise offset", value=0.0)
            fields["seed"] = gr.Number(label="Seed", value=DEFAULTS["seed"], precision=0)
            fields["save_every"] = gr.Number(label="Save every N steps (0: at the end)", value=0, precision=0)
            fields["resume"] = gr.Textbox(label="Resume from (a saved state, or latest)", value="")
        with gr.Row():
            fields["sample_prompts"] = gr.Textbox(label="Sample prompts (one a line)", lines=2)
            fields["sample_every"] = gr.Number(label="Sample every N steps", value=0, precision=0)
            fields["sample_steps"] = gr.Number(label="Sample steps", value=DEFAULTS["sample_steps"], precision=0)
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        pause = gr.Button("Pause")
        go_on = gr.Button("Go on")
        stop = gr.Button("Stop and save", variant="stop")
    status = gr.Markdown(elem_id="train-status")
    with gr.Row():
        plot = gr.LinePlot(x="step", y="loss", title="Loss", value=_points(None), height=260)
        samples = gr.Gallery(label="Samples", columns=4, height=260, format="png")
    messages = gr.Markdown()
    outputs = [status, plot, samples, messages]
    names = list(fields)

    start.click(bind(start_run, studio, names), list(fields.values()), outputs, api_name=False)
    pause.click(bind(control, studio, "pause"), None, outputs, api_name=False)
    go_on.click(bind(control, studio, "go_on"), None, outputs, api_name=False)
    stop.click(bind(control, studio, "stop"), None, outputs, api_name=False)
    gr.Timer(1.0).tick(bind(show, studio), None, outputs, api_name=False)


def _bases(studio: Studio) -> list[str]:
    return studio.checkpoint_names("sdxl-base")


def config_from_form(names: list[str], values: tuple) -> TrainConfig:
    """The form's values as a run's settings; a number that is not one is refused naming its field."""
    data = dict(zip(names, values))
    for name in NUMBERS:
        value = data[name]
        if value is None or value == "":
            raise UserError("needs a value", field=name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"must be a number, got {value!r}", field=name) from None
        if name in WHOLE:
            if number != int(number):
                raise UserError(f"must be a whole number, got {value}", field=name)
            data[name] = int(number)
        else:
            data[name] = number
    data["sample_prompts"] = [line.strip() for line in (data["sample_prompts"] or "").splitlines() if line.strip()]
    for name in ("dataset_dir", "output_name", "checkpoint", "trigger_word", "resume"):
        data[name] = (data[name] or "").strip()
    return TrainConfig(**data).check()


@shows_user_errors
def start_run(studio: Studio, names: list[str], *values):
    studio.start_training(config_from_form(names, values))
    return show(studio)


def control(studio: Studio, action: str):
    run = studio.training
    if run is not None and not run.done:
        getattr(run, action)()
    return show(studio)


def _points(run) -> pd.DataFrame:
    points = run.loss_points() if run is not None else []
    return pd.DataFrame(points, columns=["step", "loss"])


def show(studio: Studio):
    """The run's line, loss plot, latest samples and messages (the page polls it every second)."""
    run = studio.training
    if run is None:
        return "No LoRA is training.", _points(None), [], ""
    latest = run.latest_samples()
    gallery = [(image, f"step {latest[0]}") for image in latest[1]] if latest else []
    lines = "\n".join(f"- {message}" for message in run.messages[-12:])
    return f"**{run.config.output_name}**: {run.status()}", _points(run), gallery, lines
