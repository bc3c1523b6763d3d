"""One HTTP/1.1 connection: h11 parses and frames, this shell only reads, awaits the handler and writes.

Requests are answered one at a time, in order: the next one (pipelined or not) is not read
until the current response is written, so h11's buffer never holds more than a head's worth
plus one read. Every refusal of client input is a 4xx and a close, logged at debug level only.

Deadlines use `asyncio.timeout`, never `wait_for`: on Python 3.11 `wait_for` swallows a
cancellation that lands as its inner await completes, and a cancelled stream then runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any, TypeVar

import h11

from metastore_core.server.http.errors import BadRequest, BodyTooLarge, Busy, HeadTooLarge, HttpError
from metastore_core.server.http.limits import BodyBudget, Limits
from metastore_core.server.http.messages import Request, Response
from metastore_core.server.http.router import Handler

log = logging.getLogger("metastore.http")
T = TypeVar("T")

# After a refusal, drop what the client still sends for a moment before closing: closing a
# socket with unread input resets it, and the reset can destroy the 4xx before it is read.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20


Refusal = Callable[[HttpError], Response]  # how a port words a refused request


def peer_name(address: Any) -> str:
    """A socket's peer address the way gRPC names it: "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000"."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
    return f"unix:{address}" if address else ""


def certificate_cn(cert: Any) -> str:
    """The subject CN of a certificate as ssl reports a verified one (getpeercert()), or ""."""
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return ""


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class Connection:
    """Serves the requests of one accepted socket until either side ends it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        limits: Limits,
        refusal: Refusal | None = None,
        budget: BodyBudget | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._limits = limits
        self._refusal: Refusal = refusal or HttpError.response
        self._budget = budget or BodyBudget(0)
        self._held = 0  # body bytes of the current request, counted in the port's budget
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self._served = 0
        self._peer = str(writer.get_extra_info("peername"))
        self._client = {
            "peer": peer_name(writer.get_extra_info("peername")),
            "common_name": certificate_cn(writer.get_extra_info("peercert")),
        }

    async def run(self) -> None:
        """Serve until the peer closes, misbehaves, stalls, or keep-alive ends; never raises for the peer."""
        try:
            await self._serve()
        except HttpError as exc:
            log.debug("HTTP client %s refused with %d: %s", self._peer, exc.status, exc)
            await self._refuse(exc)
        except (TimeoutError, ConnectionError) as exc:
            log.debug("HTTP client %s dropped: %r", self._peer, exc)
        except Exception:
            # Only our own code gets here (a handler's stream, a response h11 cannot frame).
            log.exception("HTTP connection from %s failed", self._peer)
        finally:
            self._release()
            self._writer.close()

    def _release(self) -> None:
        self._budget.give(self._held)
        self._held = 0

    async def _serve(self) -> None:
        while (request := await self._receive()) is not None:
            response = await self._answer(request)
            await self._send(response, head_only=request.method == "HEAD")
            self._release()
            if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
                return  # h11 saw Connection: close, an HTTP/1.0 peer, or an unfinished request
            self._h11.start_next_cycle()
            self._served += 1

    async def _receive(self) -> Request | None:
        """The next request read whole, or None once the peer has closed between requests."""
        buffered, closed = self._h11.trailing_data
        if self._served and not buffered and not closed:
            try:
                async with asyncio.timeout(self._limits.idle_timeout):
                    await self._fill()
            except TimeoutError:
                return None  # kept alive long enough: an ordinary end, not a fault
        async with asyncio.timeout(self._limits.request_timeout):
            head = await self._read_head()
            if head is None:
                return None
            body = await self._read_body(head)
        headers = tuple((name.decode("ascii"), value.decode("latin-1")) for name, value in head.headers)
        # h11 has checked the method and target are visible ASCII.
        return Request.from_target(
            head.method.decode("ascii"), head.target.decode("ascii"), headers, body, **self._client
        )

    async def _read_head(self) -> h11.Request | None:
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                await self._fill()
            elif isinstance(event, h11.Request):
                # h11 caps only a head still arriving; one that came in a single read is checked here.
                size = len(event.method) + len(event.target)
                size += sum(len(name) + len(value) + 4 for name, value in event.headers)
                if size > self._limits.max_header_bytes:
                    raise HeadTooLarge(f"{size} bytes")
                return event
            else:
                return None  # ConnectionClosed: the only other event before a request

    async def _read_body(self, head: h11.Request) -> bytes:
        cap = self._limits.max_body_bytes
        declared = next((int(v) for k, v in head.headers if k == b"content-length"), 0)
        if declared > cap:
            raise BodyTooLarge(f"declared {declared} bytes")
        if self._h11.they_are_waiting_for_100_continue:
            await self._write(self._h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        parts: list[bytes] = []
        size = 0
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                await self._fill()
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > cap:
                    raise BodyTooLarge(f"more than {cap} bytes")  # chunked: no length declared
                if not self._budget.take(len(event.data)):
                    raise Busy(f"{self._budget.held} body bytes held by the port")
                self._held += len(event.data)
                parts.append(event.data)
            else:
                return b"".join(parts)  # EndOfMessage

    def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise (HeadTooLarge if exc.error_status_hint == 431 else BadRequest)(str(exc)) from None

    async def _fill(self) -> None:
        # b"" at EOF tells h11 the peer has closed.
        self._h11.receive_data(await self._reader.read(self._limits.read_size))

    async def _answer(self, request: Request) -> Response:
        """The handler's response; a handler still waiting when the peer goes away is cancelled
        (a lock or a campaign may wait for long, and must not outlive its caller)."""
        return await self._unless_gone(self._handle(request), "while its request was handled")

    async def _handle(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except HttpError as exc:
            return self._refusal(exc)
        except Exception:
            log.exception("HTTP handler failed for %s %s", request.method, request.path)
            return Response.text(500, "internal error\n")

    async def _send(self, response: Response, head_only: bool = False) -> None:
        body = response.body
        headers = list(response.headers)
        if isinstance(body, bytes):
            headers.append(("content-length", str(len(body))))
        head = h11.Response(status_code=response.status, headers=headers, reason=_reason(response.status))
        try:
            await self._write(self._h11.send(head))
        except BaseException:
            if not isinstance(body, bytes):
                await _close_stream(body)  # never started: its watchers must still be freed
            raise
        if isinstance(body, bytes):
            if body and not head_only:  # a HEAD answer has the GET's headers and no body
                await self._write(self._h11.send(h11.Data(data=body)))
            await self._write(self._h11.send(h11.EndOfMessage()))
        elif head_only:
            await _close_stream(body)
            await self._write(self._h11.send(h11.EndOfMessage()))
        else:
            await self._stream(body)

    async def _stream(self, chunks: AsyncIterator[bytes]) -> None:
        """Send chunks as they come; stop if the peer goes away meanwhile (a watch may be quiet for long)."""
        await self._unless_gone(self._pump(chunks), "during a streamed response")

    async def _unless_gone(self, work: Awaitable[T], when: str) -> T:
        """work's result; cancelled, and ConnectionResetError raised, if the peer goes away first."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(self._peer_gone())
        try:
            await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
            gone.cancel()
            await asyncio.gather(task, gone, return_exceptions=True)
        if task.cancelled():
            raise ConnectionResetError(f"peer closed {when}")
        return task.result()

    async def _pump(self, chunks: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in chunks:
                if chunk:  # an empty chunk would read as the end of a chunked body
                    await self._write(self._h11.send(h11.Data(data=chunk)))
            await self._write(self._h11.send(h11.EndOfMessage()))
        finally:
            await _close_stream(chunks)

    async def _peer_gone(self) -> None:
        """Return once the peer has closed or reset its side (as Go's server reads that: client gone)."""
        taken = 0
        while data := await self._reader.read(self._limits.read_size):
            # A pipelined request waits in h11's buffer for its turn; past a head's worth,
            # stop reading so that a client cannot grow the buffer while we stream.
            self._h11.receive_data(data)
            taken += len(data)
            if taken > self._limits.max_header_bytes:
                await asyncio.Event().wait()

    async def _write(self, data: bytes) -> None:
        self._writer.write(data)
        async with asyncio.timeout(self._limits.send_timeout):
            await self._writer.drain()

    async def _refuse(self, exc: HttpError) -> None:
        """Answer a refused request and close: where the next request would start is unknown."""
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # a response is already under way: closing is all that is left
        refusal = self._refusal(exc)
        closing = Response(refusal.status, (*refusal.headers, ("connection", "close")), refusal.body)
        with contextlib.suppress(h11.LocalProtocolError, ConnectionError, TimeoutError):
            await self._send(closing)
            await self._linger()

    async def _linger(self) -> None:
        if self._writer.can_write_eof():
            self._writer.write_eof()
        dropped = 0
        async with asyncio.timeout(LINGER_SECONDS):
            while dropped < LINGER_BYTES and (data := await self._reader.read(self._limits.read_size)):
                dropped += len(data)


async def _close_stream(chunks: AsyncIterator[bytes]) -> None:
    # An async generator left unfinished keeps its resources (a watcher, say) until closed.
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
