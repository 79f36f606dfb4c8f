"""Settings → Workers: the pool's workers, their device, loaded model, current job and state (with --workers)."""

from __future__ import annotations

import gradio as gr

from ..studio import Studio


def table(studio: Studio) -> str:
    workers = studio.workers()
    if not workers:
        return "The workers are starting…" if studio.backend is not None else ""
    rows = ["| worker | state | device | host | model | job | restarts |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for w in workers:
        cells = [w.number, w.state, w.device, w.host, w.model, w.job, w.restarts]
        rows.append("| " + " | ".join("—" if c is None else str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def build(studio: Studio) -> None:
    """Only with a pool (app.py --workers / --ray-address); one process has no workers to show."""
    if studio.backend is None:
        return
    with gr.Accordion("Workers", open=True):
        shown = gr.Markdown(table(studio), elem_id="workers-status")
        refresh = gr.Button("Refresh", size="sm", elem_id="workers-refresh")
    refresh.click(lambda: table(studio), None, shown, api_name=False)
