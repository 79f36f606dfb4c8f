"""The one exception type whose message is meant for the person or client that sent the request."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: a bad parameter, a missing or unsupported model, out of memory.

    `field` names the request field at fault (A1111's name) when there is one; front ends show the
    message as it is (the UI in a toast, the API as a 4xx JSON body).
    """

    def __init__(self, message: str, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status  # the HTTP status the API answers with

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message
