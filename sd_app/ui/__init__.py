"""The Gradio app: three tabs on one Studio. Each tab lives in its own module."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..startup import Startup
from ..studio import Studio
from . import extras_tab, history_tab, img2img_tab, lora_tab, settings_tab, startup_status, train_tab, txt2img

CSS = """
.hg-progress {position: relative; min-height: 1.8em; border-radius: 6px; background: var(--block-background-fill);
              border: 1px solid var(--border-color-primary); overflow: hidden;}
.hg-progress .hg-bar {position: absolute; inset: 0 auto 0 0; background: var(--color-accent-soft);}
.hg-progress span {position: relative; display: block; padding: .3em .6em; line-height: 1.2em;}
#no-checkpoint {border-left: 4px solid var(--color-accent); padding-left: 1em;}
.hg-error {color: var(--error-text-color); border-left: 4px solid var(--error-border-color, currentColor);
           padding: .3em .6em; overflow-wrap: anywhere;}
/* The message beside the form says what went wrong: Gradio's "Error" badge would only cover it. */
#error [data-testid="status-tracker"]:has(.error) {display: none;}
#startup-status {border-left: 4px solid var(--color-accent); padding-left: 1em;}
"""
JS = (Path(__file__).parent / "page.js").read_text(encoding="utf-8")  # launch(js=JS) runs it on page load
LOADED_JS = "() => { document.body.dataset.hgLoaded = 'true'; }"


def build(studio: Studio, startup: Startup | None = None) -> gr.Blocks:
    """The page; with `startup` (loading behind the page) it says so and turns Generate on when it ends."""
    loading = startup is not None and not startup.done
    with gr.Blocks(title="Homegrown", analytics_enabled=False) as blocks:
        banner = "Homegrown · SDXL studio"
        if studio.demo:
            banner += " · **demo models: random weights, the images are noise**"
        gr.Markdown(banner)
        status = gr.Markdown(startup_status.note(startup) if startup else "", visible=loading, elem_id="startup-status")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img") as txt2img_tab:
                form, parts = txt2img.build(studio, loading)
            with gr.Tab("img2img", id="img2img") as img2img_tab_item:
                img2img_form, img2img_sub_tabs = img2img_tab.build(studio, loading, parts)
            with txt2img_tab:  # "Send to img2img / inpaint" at the foot of the txt2img tab
                img2img_tab.wire_send(parts["gallery"], parts["info"], parts["dropped"], parts["dropped_info"],
                                      img2img_form, img2img_sub_tabs, tabs)
            with gr.Tab("LoRA", id="lora") as lora_tab_item:
                listing, search, lora_outputs = lora_tab.build(studio, parts["prompt"])
            with gr.Tab("History", id="history") as history_tab_item:
                saved, saved_search, saved_outputs = history_tab.build(studio, form, parts["size"], tabs, parts)
            with gr.Tab("Extras", id=extras_tab.TAB_ID):
                parts["extras"] = extras_tab.build(studio)  # "Send to extras" targets parts["extras"].image
            with txt2img_tab:  # "Send to extras" under the txt2img results and PNG Info, the img2img results, History
                with gr.Row():
                    extras_tab.wire_send(parts["extras"], tabs, gallery=parts["gallery"])
                    extras_tab.wire_send(parts["extras"], tabs, image=parts["dropped"], elem_id="png-info-to-extras",
                                         label="PNG Info → extras")
            with img2img_tab_item:
                extras_tab.wire_send(parts["extras"], tabs, gallery=parts["img2img_gallery"],
                                     elem_id="img2img-to-extras")
            sends = parts["history_sends"]
            extras_tab.wire_send(parts["extras"], tabs, image=parts["history_image"], button=sends["extras"])
            img2img_tab.wire_image_send(parts["history_image"], parts["history_info"], img2img_form, img2img_sub_tabs,
                                        tabs, {target: sends[target] for target in img2img_tab.MODES})
            with gr.Tab("Train", id="train"):
                train_tab.build(studio)
            with gr.Tab("Settings", id="settings"):
                settings_loader, settings_outputs = settings_tab.build(studio)
        lora_tab_item.select(listing, search, lora_outputs, api_name=False)
        history_tab_item.select(saved, saved_search, saved_outputs, api_name=False)  # new images since
        blocks.load(listing, search, lora_outputs, api_name=False)
        # A built component keeps the value it was built with: each page load shows the values of now. Then the
        # page is marked loaded (<body data-hg-loaded>), for scripts and tests that must not type before that.
        blocks.load(settings_loader, None, settings_outputs, api_name=False).then(
            *parts["load"], api_name=False).then(None, js=LOADED_JS, api_name=False)
        if startup is not None:
            startup_status.build(studio, startup, blocks, status, parts)
    return blocks
