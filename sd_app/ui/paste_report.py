"""What a paste of generation parameters did, said on the page: what was applied and what not, and why."""

from __future__ import annotations

import html

from ..infotext import Pasted

NOT_INFOTEXT = ("**Not an A1111 infotext**: it has no parameters line (such as `Steps: 30, Sampler: DPM++ 2M, "
                "CFG scale: 7, Seed: 1, Size: 1024x1024`). The form was left as it was; to use the text as a "
                "prompt, type or paste it into the prompt box.")


def _code(text: str) -> str:
    """Shown as typed: `<lora:x:1>` would otherwise be read as an HTML tag and vanish."""
    return "`" + text.replace("`", "'") + "`"


def report_markdown(pasted: Pasted) -> str:
    if not pasted.is_infotext:
        return NOT_INFOTEXT
    applied = "**Applied:** " + (", ".join(_code(item) for item in pasted.applied) or "nothing")
    if not pasted.not_applied:
        return applied + "\n\nEverything in the text was applied."
    missed = "\n".join(f"- {_code(what)}: {html.escape(why)}" for what, why in pasted.not_applied)
    return f"{applied}\n\n**Not applied:**\n\n{missed}"
