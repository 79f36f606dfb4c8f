"""Gradio components as the page needs them: values reach the engine as the user typed them.

Gradio's slider changes what was typed: its number box is clamped into the slider's range when it loses focus
(steps 0 becomes 1, width 13 becomes 64) and the server refuses out-of-range values with its own message. The
page should instead refuse a value it cannot use, with the engine's message that names the field and what it
allows (`GenerationParams.check`). `form_slider` makes a slider that hands the handler the typed value;
`sd_app/ui/page.js` stops the clamping in the browser for sliders marked with `UNCLAMPED`.
"""

from __future__ import annotations

import gradio as gr

UNCLAMPED = "hg-unclamped"  # the CSS class page.js looks for


def form_slider(minimum: float, maximum: float, **options) -> gr.Slider:
    """A slider whose typed value reaches the handler unchanged, for the engine's check to accept or refuse.

    Gradio's own slider, with its server-side range check and rounding taken off this one instance. Not a
    subclass: Gradio writes a type stub (.pyi) beside every module that defines a component class.
    """
    slider = gr.Slider(minimum, maximum, elem_classes=[UNCLAMPED], **options)
    slider.preprocess = _as_typed
    return slider


def _as_typed(payload):
    return payload  # no range check and no rounding: GenerationParams.check says what is wrong
