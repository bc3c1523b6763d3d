"""Requests the server refuses, each class carrying its wire status and plain-text message."""

from __future__ import annotations

from metastore_core.server.http.messages import Response


class HttpError(Exception):
    """A refused request; `status` is the HTTP status sent, `message` the body."""

    status = 400
    message = "bad request"

    def response(self) -> Response:
        """The plain-text answer for this refusal."""
        return Response.text(self.status, self.message + "\n")


class BadRequest(HttpError):
    """Input that is not HTTP/1.1 as h11 reads it."""


class BodyTooLarge(HttpError):
    """A request body above the configured cap."""

    status = 413
    message = "request body too large"


class HeadTooLarge(HttpError):
    """A request line plus headers above the configured cap."""

    status = 431
    message = "request header fields too large"


class Busy(HttpError):
    """Too many request bytes held at once by the port as a whole; the client may retry."""

    status = 503
    message = "too many request bodies in flight; retry"
