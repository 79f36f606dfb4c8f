"""The txt2img tab's "Hires fix" accordion (A1111's): its controls, the HiresParams they make, and pasting an
infotext's `Hires ...` keys back into them. txt2img.py hooks it in with single lines."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .. import infotext, samplers
from ..hires import DEFAULT_UPSCALER, IMAGE_UPSCALERS, LATENT_MODES, SCALE_RANGE, HiresParams, from_infotext
from .components import form_slider

SAME = "Use same"


@dataclass
class HiresControls:
    enable: gr.Checkbox
    upscaler: gr.Dropdown
    second_pass_steps: gr.Slider
    denoising_strength: gr.Slider
    scale: gr.Slider
    resize_x: gr.Slider
    resize_y: gr.Slider
    sampler_name: gr.Dropdown
    prompt: gr.Textbox
    negative_prompt: gr.Textbox

    def inputs(self) -> list:
        return [getattr(self, name) for name in self.__dataclass_fields__]


def layout(upscalers: list[str] | None = None) -> HiresControls:
    """`upscalers`: the image upscalers there are (the studio's, model files included); None = the built-ins."""
    defaults = HiresParams()
    with gr.Accordion("Hires fix", open=False, elem_id="hires"):
        enable = gr.Checkbox(False, label="Hires fix: a second pass at a larger size", elem_id="hires-enable")
        with gr.Row():
            upscaler = gr.Dropdown(list(LATENT_MODES) + list(upscalers or IMAGE_UPSCALERS), value=DEFAULT_UPSCALER,
                                   label="Upscaler", elem_id="hires-upscaler")
            steps = form_slider(0, 150, value=0, step=1, label="Hires steps (0: same as Steps)", elem_id="hires-steps")
            strength = form_slider(0.0, 1.0, value=defaults.denoising_strength, step=0.01,
                                   label="Denoising strength", elem_id="hires-denoising")
        with gr.Row():
            scale = form_slider(*SCALE_RANGE, value=defaults.scale, step=0.05, label="Upscale by", elem_id="hires-scale")
            resize_x = form_slider(0, 4096, value=0, step=8, label="Resize width to (0: by scale)")
            resize_y = form_slider(0, 4096, value=0, step=8, label="Resize height to")
        sampler = gr.Dropdown([SAME] + [s.name for s in samplers.SAMPLERS], value=SAME, label="Hires sampler")
        prompt = gr.Textbox("", label="Hires prompt (empty: the prompt)", lines=1)
        negative = gr.Textbox("", label="Hires negative prompt (empty: the negative prompt)", lines=1)
    return HiresControls(enable, upscaler, steps, strength, scale, resize_x, resize_y, sampler, prompt, negative)


def with_hires(params, values: list):
    """The request with the accordion's hires fix (or none when it is off); checked by the engine as any field."""
    if not values or not values[0]:
        return params
    _, upscaler, steps, strength, scale, resize_x, resize_y, sampler, prompt, negative = values

    def whole(value):
        return int(value) if isinstance(value, float) and value.is_integer() else value

    spec = HiresParams(scale=float(scale) if isinstance(scale, int) else scale, resize_x=whole(resize_x),
                       resize_y=whole(resize_y), upscaler=upscaler, second_pass_steps=whole(steps),
                       denoising_strength=float(strength) if isinstance(strength, int) else strength,
                       sampler_name=None if sampler in (None, SAME) else sampler, prompt=prompt or "",
                       negative_prompt=negative or "")
    return params.replace(hires=spec)


def filling(fill, controls: HiresControls):
    """`fill` (the form's paste handler) that also fills the accordion from the text's `Hires ...` keys."""
    def fill_with_hires(text, *values):
        updates = fill(text, *values)
        if not text or not updates:
            return updates
        spec, _, _ = from_infotext(infotext.parse(text)[2])
        updates[controls.enable] = spec is not None
        if spec is not None:
            updates.update({controls.upscaler: spec.upscaler, controls.second_pass_steps: spec.second_pass_steps,
                            controls.denoising_strength: spec.denoising_strength, controls.scale: spec.scale,
                            controls.resize_x: spec.resize_x, controls.resize_y: spec.resize_y,
                            controls.sampler_name: spec.sampler_name or SAME, controls.prompt: spec.prompt,
                            controls.negative_prompt: spec.negative_prompt})
        return updates

    return fill_with_hires
