"""The Gradio app: three tabs on one Studio. Each tab lives in its own module."""

from __future__ import annotations

import gradio as gr

from ..startup import Startup
from ..studio import Studio
from . import lora_tab, settings_tab, startup_status, txt2img

CSS = """
.hg-progress {position: relative; height: 1.8em; border-radius: 6px; background: var(--block-background-fill);
              border: 1px solid var(--border-color-primary); overflow: hidden;}
.hg-progress .hg-bar {position: absolute; inset: 0 auto 0 0; background: var(--color-accent-soft);}
.hg-progress span {position: relative; padding-left: .6em; line-height: 1.8em;}
#no-checkpoint {border-left: 4px solid var(--color-accent); padding-left: 1em;}
#startup-status {border-left: 4px solid var(--color-accent); padding-left: 1em;}
"""


def build(studio: Studio, startup: Startup | None = None) -> gr.Blocks:
    """The page; with `startup` (loading behind the page) it says so and turns Generate on when it ends."""
    loading = startup is not None and not startup.done
    with gr.Blocks(title="Homegrown", analytics_enabled=False) as blocks:
        banner = "Homegrown · SDXL studio"
        if studio.demo:
            banner += " · **demo models: random weights, the images are noise**"
        gr.Markdown(banner)
        status = gr.Markdown(startup_status.note(startup) if startup else "", visible=loading, elem_id="startup-status")
        with gr.Tabs():
            with gr.Tab("txt2img", id="txt2img"):
                form, parts = txt2img.build(studio, loading)
            with gr.Tab("LoRA", id="lora") as lora_tab_item:
                listing, search, lora_outputs = lora_tab.build(studio, parts["prompt"])
            with gr.Tab("Settings", id="settings"):
                settings_tab.build(studio)
        lora_tab_item.select(listing, search, lora_outputs, api_name=False)
        blocks.load(listing, search, lora_outputs, api_name=False)
        if startup is not None:
            startup_status.build(studio, startup, blocks, status, parts)
    return blocks
