"""The Settings tab, built from the settings table: one control per setting, one Save button."""

from __future__ import annotations

import gradio as gr

from ..settings import SECTIONS, SETTINGS, Setting
from ..studio import Studio
from .handlers import shows_user_errors


def control(setting: Setting, value, studio: Studio):
    label = setting.label + (" ⟳" if setting.applies == "reload" else "")
    if setting.name == "vae":  # its choices are the files in the VAE folder
        return gr.Dropdown(studio.vae_names(), value=value, label=label, info=setting.help, allow_custom_value=True)
    if isinstance(setting.default, bool):
        return gr.Checkbox(value=value, label=label, info=setting.help or None)
    if setting.choices:
        return gr.Dropdown(list(setting.choices), value=value, label=label, info=setting.help or None)
    if isinstance(setting.default, (int, float)):
        # The range goes in the hint, not in Gradio's own check: ours names the setting when a value is off.
        hint = " ".join(filter(None, [setting.help, f"{setting.limits[0]} to {setting.limits[1]}"
                                      if setting.limits else ""]))
        return gr.Number(value=value, label=label, info=hint or None,
                         precision=0 if isinstance(setting.default, int) else None)
    return gr.Textbox(value=value, label=label, info=setting.help or None)


def build(studio: Studio) -> None:
    store = studio.settings
    if store.problems:
        gr.Markdown("⚠️ " + "\n\n⚠️ ".join(store.problems), elem_id="settings-problems")
    where = f"`{store.path}`" if store.path else "memory only (no settings file)"
    gr.Markdown(f"Saved to {where}. ⟳ marks settings that reload the checkpoint when changed.")
    controls = []
    for section in SECTIONS:
        with gr.Accordion(section, open=section in ("Defaults", "Device and memory")):
            for setting in (s for s in SETTINGS if s.section == section):
                controls.append(control(setting, store.get(setting.name), studio))
    save = gr.Button("Save settings", variant="primary", elem_id="save-settings")
    status = gr.Markdown(elem_id="settings-status")

    @shows_user_errors
    def apply(*values):
        # settings.check_value turns Gradio's whole floats (21.0) into ints and refuses the rest.
        changes = {setting.name: value for setting, value in zip(SETTINGS, values)}
        return studio.apply_settings(changes)

    save.click(apply, controls, status, concurrency_limit=1, concurrency_id="gpu", api_name="save_settings")
