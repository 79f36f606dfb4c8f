"""The LoRA tab: the LoRA cards (`lora_cards.py`) at full size, and downloads from Hugging Face."""

from __future__ import annotations

import gradio as gr

from ..studio import Studio
from .handlers import bind, shows_user_errors
from .lora_cards import card_grid, list_cards


def build(studio: Studio, prompt: gr.Textbox):
    """Build the tab; return (listing function, its input, its outputs) so the app can fill it on load."""
    gr.Markdown("Click a card to put `<lora:name:weight>` and its trigger words into the txt2img prompt. LoRAs made "
                "for SD 1.x/2.x are marked and cannot be used with SDXL.")
    grid = card_grid(studio, prompt, "lora", refresh_api="refresh_loras")

    with gr.Accordion("Download from Hugging Face", open=False, visible=not studio.offline):
        with gr.Row():
            repo_id = gr.Textbox(label="Repository", placeholder="owner/name", elem_id="hf-repo")
            filename = gr.Textbox(label="File", placeholder="my_lora.safetensors", elem_id="hf-file")
            revision = gr.Textbox(label="Revision (optional)", placeholder="main")
        overwrite = gr.Checkbox(label="Replace a file of the same name", value=False)
        fetch = gr.Button("Download", variant="primary")
        status = gr.Markdown(elem_id="hf-status")

        @shows_user_errors
        def download(repo, name, rev, replace, query, progress=gr.Progress()):
            def report(done, total):
                progress((done, total) if total else None, desc=f"Downloading {name}", unit="bytes")
            path = studio.download("lora", repo, name, rev, replace, report)
            return (f"Saved `{path.name}` into the LoRA folder.", *list_cards(studio, query))

        fetch.click(download, [repo_id, filename, revision, overwrite, grid.search], [status] + grid.outputs(),
                    api_name=False)

    return bind(list_cards, studio), grid.search, grid.outputs()
