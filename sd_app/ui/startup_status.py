"""The start-up note at the top of the page: "Loading model…" while the model stack imports behind the page,
then the checkpoint lists filled and Generate enabled, or the reason no model could be loaded.

The page is built once, while loading, so a page opened later starts in that state too: the same handler
runs when a page opens and every second until loading is over, and brings that page up to date.
"""

from __future__ import annotations

import html
import logging
import time

import gradio as gr

from ..startup import Startup
from ..studio import Studio
from . import txt2img

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


def build(studio: Studio, startup: Startup, blocks: gr.Blocks, status: gr.Markdown, parts: dict) -> None:
    """Wire the note `status`, every Generate button (`parts["generate_buttons"]`: txt2img's, img2img's) and
    txt2img's lists to the start-up state."""
    timer = gr.Timer(TICK_SECONDS, active=not startup.done)
    checkpoint, refiner = parts["lists"][:2]
    buttons = parts["generate_buttons"]
    outputs = [status, *buttons, *parts["lists"], timer]

    def show(checkpoint_name, refiner_name):
        note_update, generate, *rest = show_state(studio, startup, checkpoint_name, refiner_name)
        return note_update, *[generate] * len(buttons), *rest
    blocks.load(show, [checkpoint, refiner], outputs, api_name=False)
    timer.tick(show, [checkpoint, refiner], outputs, api_name=False)


def note(startup: Startup) -> str:
    """The note's text: empty once a model is loaded."""
    if not startup.done:
        return (f"⏳ **Loading model…** ({time.perf_counter() - startup.began:.0f} s) The page works meanwhile; "
                "Generate turns on when the model is ready.")
    if startup.problem and startup.model is None:
        return "⚠️ " + html.escape(startup.problem, quote=False)
    return ""


def show_state(studio: Studio, startup: Startup, checkpoint, refiner):
    """(note, Generate, checkpoint / refiner / preset lists, no-checkpoint box, timer) for the state now."""
    text = note(startup)
    shown = gr.update(value=text, visible=bool(text))
    if not startup.done:
        return shown, gr.update(interactive=False), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
    try:
        lists = list(txt2img.refresh_lists(studio, checkpoint))
        refiners = txt2img.refiner_dropdown_names(studio)
    except Exception as err:  # a file that cannot be listed must not leave the page stuck in "loading"
        log.exception("listing the checkpoints failed")
        problem = f"⚠️ The checkpoint folder could not be listed: {html.escape(str(err), quote=False)}"
        return (gr.update(value="\n\n".join(filter(None, [text, problem])), visible=True),
                gr.update(interactive=True), gr.update(), gr.update(), gr.update(), gr.update(), gr.Timer(active=False))
    # The page was built before the refiners were listed: the start preset's refiner is chosen now.
    wanted = refiner if refiner in refiners and refiner != txt2img.NO_REFINER else \
        txt2img.start_defaults(studio).refiner_checkpoint
    lists[1] = gr.update(choices=refiners, value=wanted if wanted in refiners else txt2img.NO_REFINER)
    return shown, gr.update(interactive=True), *lists, gr.Timer(active=False)
