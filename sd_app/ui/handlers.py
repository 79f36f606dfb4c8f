"""What every tab's event handlers share: user errors shown on the page, and handlers bound to the studio.

Gradio reads a handler's signature to decide what to pass it: a `gr.Request` or `gr.SelectData` parameter
by its annotation, a `gr.Progress` one by its default, and a generator function streams its updates. Both
helpers here keep all of that visible to Gradio.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import gradio as gr

from ..errors import UserError


def shows_user_errors(handler: Callable) -> Callable:
    """The handler, with a `UserError` shown on the page as `gr.Error` (its message, not Gradio's bare "Error")."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def showing(*args, **kwargs):
            try:
                return (yield from handler(*args, **kwargs))
            except UserError as err:
                raise gr.Error(str(err)) from None
    else:
        @functools.wraps(handler)
        def showing(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except UserError as err:
                raise gr.Error(str(err)) from None
    return showing


def bind(handler: Callable, *first) -> Callable:
    """The handler with its first arguments given (the studio, the form), as Gradio would read the handler.

    `functools.partial` alone is not enough: Gradio reads type hints only from plain functions, so a partial
    would get no `gr.Request` or `gr.SelectData`. This is a plain function with the partial's signature, the
    handler's annotations and globals (through `__wrapped__`), and a generator when the handler is one.
    """
    bound = functools.partial(handler, *first)
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def call(*args, **kwargs):
            return (yield from bound(*args, **kwargs))
    else:
        @functools.wraps(handler)
        def call(*args, **kwargs):
            return bound(*args, **kwargs)
    call.__signature__ = inspect.signature(bound)
    return call
