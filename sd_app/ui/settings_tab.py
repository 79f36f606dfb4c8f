"""The Settings tab, built from the settings table: one control per setting, one Save button.

The controls show the settings of the moment the page is loaded (`current_values`, on each page load), not those
of the moment the app was built. Save writes only what this page changed since it loaded or last saved, so a
page open since before another page's save does not write old values back over the new ones.
"""

from __future__ import annotations

import gradio as gr

from ..settings import SECTIONS, SETTINGS, Setting
from ..studio import Studio
from . import workers_panel
from .handlers import shows_user_errors


def control(setting: Setting, value, studio: Studio):
    label = setting.label + (" ⟳" if setting.applies == "reload" else "")
    shown = dict(value=value, label=label, elem_id=f"setting-{setting.name}")
    if setting.name == "vae":  # its choices are the files in the VAE folder
        return gr.Dropdown(studio.vae_names(), info=setting.help, allow_custom_value=True, **shown)
    if setting.name == "default_checkpoint":  # the SDXL bases in the checkpoint folder
        return gr.Dropdown(checkpoint_choices(studio, value), info=setting.help or None, **shown)
    if isinstance(setting.default, bool):
        return gr.Checkbox(info=setting.help or None, **shown)
    if setting.choices:
        return gr.Dropdown(list(setting.choices), info=setting.help or None, **shown)
    if isinstance(setting.default, (int, float)):
        # The range goes in the hint, not in Gradio's own check, and no precision (Gradio would round 1.5 to 2):
        # settings.check_value names the setting when a value is off.
        hint = " ".join(filter(None, [setting.help, f"{setting.limits[0]} to {setting.limits[1]}"
                                      if setting.limits else ""]))
        return gr.Number(info=hint or None, **shown)
    return gr.Textbox(info=setting.help or None, **shown)


def checkpoint_choices(studio: Studio, current: str) -> list[str]:
    """Empty (the first base found), the SDXL bases, and the saved name even if its file is gone (so it shows)."""
    names = ["", *studio.checkpoint_names("sdxl-base")]
    return names if current in names else [*names, current]


def current_values(studio: Studio) -> list:
    """Updates that show each control the setting's value now, with today's VAE and checkpoint lists, then this
    page's record of those values (what Save compares against)."""
    store = studio.settings
    updates = []
    for setting in SETTINGS:
        value = store.get(setting.name)
        if setting.name == "vae":
            updates.append(gr.update(choices=studio.vae_names(), value=value))
        elif setting.name == "default_checkpoint":
            updates.append(gr.update(choices=checkpoint_choices(studio, value), value=value))
        else:
            updates.append(gr.update(value=value))
    return [*updates, store.all()]


def changes_made(shown: dict | None, values) -> dict:
    """The settings whose control differs from what the page was shown. Without a record (an API client, which
    loads no page) every value sent counts, as the client chose them all."""
    # A dropdown left empty comes back as None: for a text setting that is its empty value.
    sent = {setting.name: "" if value is None and isinstance(setting.default, str) else value
            for setting, value in zip(SETTINGS, values)}
    if shown is None:
        return sent
    return {name: value for name, value in sent.items() if name not in shown or value != shown[name]}


def build(studio: Studio):
    """Build the tab; return (the page-load handler, its outputs) for the app to run on each page load."""
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
    workers_panel.build(studio)  # the pool's workers, when there is a pool
    save = gr.Button("Save settings", variant="primary", elem_id="save-settings")
    status = gr.Markdown(elem_id="settings-status")
    shown = gr.State(None)  # the values this page shows as saved: set on page load and on each save

    @shows_user_errors
    def save_settings(seen, *values):
        # settings.check_value turns Gradio's whole floats (21.0) into ints and refuses the rest.
        message = studio.apply_settings(changes_made(seen, values))
        return message, store.all()

    save.click(save_settings, [shown, *controls], [status, shown], concurrency_limit=1, concurrency_id="gpu",
               api_name="save_settings")
    return (lambda: current_values(studio)), [*controls, shown]
