"""What every tab's event handlers share: user errors shown on the page, and handlers bound to the studio.

Gradio reads a handler's signature to decide what to pass it: a `gr.Request` or `gr.SelectData` parameter
by its annotation, a `gr.Progress` one by its default, and a generator function streams its updates. Both
helpers here keep all of that visible to Gradio.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable

import gradio as gr

from ..errors import UserError
from ..logs import user_error

log = logging.getLogger(__name__)


def shows_user_errors(handler: Callable) -> Callable:
    """The handler, with a `UserError` shown on the page as `gr.Error` (its message, not Gradio's bare "Error")
    and logged as one line (not Gradio's traceback: a user's mistake is not a crash)."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def showing(*args, **kwargs):
            try:
                return (yield from handler(*args, **kwargs))
            except UserError as err:
                raise refused(handler.__name__, err) from None
    else:
        @functools.wraps(handler)
        def showing(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except UserError as err:
                raise refused(handler.__name__, err) from None
    return showing


def refused(where: str, err: UserError | str, toast: bool = True) -> gr.Error:
    """The `gr.Error` to raise for a user's mistake, logged as one line. Gradio prints no traceback for it; with
    `toast=False` the page shows no pop-up either (the page shows the message itself), while API clients
    still get it as their error."""
    user_error(log, where, err)
    return gr.Error(str(err), visible=toast, print_exception=False)


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
