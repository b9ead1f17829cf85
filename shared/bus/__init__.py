"""The NATS bus: request/reply with explicit timeouts, one error mapping, queue-group services.

Durable pull consumers: ``shared.bus.pull``; the upload store: ``shared.bus.blobs``; video jobs:
``shared.bus.video_jobs``; streams and their replicas: ``shared.bus.streams``; heartbeats, silence and
retries of requests: ``shared.bus.requester``.

Errors cross the wire as headers (``Kashf-Error-Status``, ``Kashf-Error-Code``) with the detail as
body, so a service's ``KashfError`` reaches the gateway's client unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError

from shared import subjects
from shared.bus.requester import ACK, HEARTBEAT, HEARTBEAT_S, PROGRESS, Requester
from shared.bus.streams import ensure_streams
from shared.errors import (
    Internal,
    InvalidInput,
    KashfError,
    Overloaded,
    TooLarge,
    Unavailable,
    from_wire,
)
from shared.logging import CORRELATION_HEADER, bind_correlation_id, current_correlation_id
from shared.natsauth import inbox_prefix, server_urls

log = structlog.get_logger(__name__)

ERROR_STATUS = "Kashf-Error-Status"
ERROR_CODE = "Kashf-Error-Code"

Req = TypeVar("Req", bound=BaseModel)
Rep = TypeVar("Rep", bound=BaseModel)
# Every reply says that its responder sends heartbeats (shared.bus.requester).
_REPLY_HEADERS = {HEARTBEAT: "1"}
_PROGRESS_HEADERS = {PROGRESS: "1"}

__all__ = ["Bus", "connect", "ensure_streams", "synced"]


# A server going away (a cluster node, a restart) is an event the link recovers from, not a fault.
_LINK_LOST = (OSError, nats.errors.StaleConnectionError, nats.errors.UnexpectedEOF, nats.errors.NoServersError)


async def _nats_error(exc: Exception) -> None:
    """nats-py's asynchronous errors, logged in one line (its default logs each with a traceback, at error level)."""
    if isinstance(exc, _LINK_LOST):
        log.warning("nats_link_lost", error=f"{type(exc).__name__}: {exc}")
    else:  # a refusal by the server (permissions, protocol): an operator must look
        log.error("nats_error", error=f"{type(exc).__name__}: {exc}")


async def connect(url: str, name: str, *, connect_timeout: float = 5.0,
                  disconnected: Callable[[], Awaitable[None]] | None = None) -> NATS:
    """Connect, retrying forever on later disconnects; ``disconnected`` is called each time the link drops.

    ``url`` may name several servers separated by commas (a cluster's seeds): the first that answers is used,
    and the link moves to another (a named one or one the cluster announced) when its server goes away."""
    urls = server_urls(url)
    try:
        # With unlimited reconnects nats-py also retries the *first* connect forever: bound it.
        return await asyncio.wait_for(
            nats.connect(
                servers=urls,
                name=name,
                connect_timeout=connect_timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                # With NATS users (shared.natsauth) each may only read inboxes under its own name.
                inbox_prefix=inbox_prefix(user) if (user := urlsplit(urls[0]).username) else "_INBOX",
                disconnected_cb=disconnected,
                error_cb=_nats_error,
                # A server that vanished without closing the link (host or network down) is noticed after
                # about three intervals (nats-py's default of 2 minutes would mean 4 to 6 minutes).
                ping_interval=5,
                max_outstanding_pings=2,
            ),
            timeout=connect_timeout * 2,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise Unavailable("message bus unreachable") from exc


async def synced(nc: NATS) -> None:
    """Return once the server has processed everything this connection sent so far (a new subscription too).

    nats-py writes flush()'s PING ahead of commands still in its buffer: the first PONG can come back before the
    server saw a SUB just made (under load, 1 request in 10 then finds no responders); the second cannot."""
    await nc.flush()
    await nc.flush()


class Bus:
    """Typed request/reply over one NATS connection."""

    def __init__(self, nc: NATS, requests: Requester | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        # Without the connection's disconnected callback (see connect), requests still fail at once while it is
        # down, but those in flight when it drops wait for silence or their timeout.
        self._requests = requests or Requester()
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._working: dict[str, float] = {}  # reply subject -> when taken, of requests that asked for heartbeats
        self._heartbeats: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, name: str) -> Bus:
        requests = Requester()
        return cls(await connect(url, name, disconnected=requests.connection_lost), requests)

    async def request(
        self,
        subject: subjects.Subject,
        message: BaseModel,
        reply_type: type[Rep],
        *,
        timeout_s: float | None = None,
        idempotent: bool = False,
    ) -> Rep:
        """Send one request and parse the reply, mapping every failure to a ``KashfError``.

        ``idempotent``: asking twice does no harm, so a request a dead replica held is sent again (not 503)."""
        headers = {}
        cid = current_correlation_id()
        if cid:
            headers[CORRELATION_HEADER] = cid
        timeout = timeout_s if timeout_s is not None else subject.timeout_s
        msg = await self._requests.request(self.nc, subject, message.model_dump_json().encode(), headers, timeout,
                                           idempotent=idempotent)
        if msg.headers and ERROR_STATUS in msg.headers:
            raise from_wire(int(msg.headers[ERROR_STATUS]), msg.headers.get(ERROR_CODE, "internal"),
                            msg.data.decode(errors="replace"))
        return reply_type.model_validate_json(msg.data)

    async def serve(
        self,
        subject: subjects.Subject,
        request_type: type[Req],
        handler: Callable[[Req], Awaitable[BaseModel]],
        *,
        concurrency: int,
    ) -> None:
        """Answer ``subject`` in its queue group; at most ``concurrency`` handlers run at once.

        nats-py awaits one subscription's callbacks in turn, so the callback only takes a slot and
        starts a task; past the slots the request is answered "overloaded" at once.
        """
        slots = asyncio.Semaphore(concurrency)
        if self._heartbeats is None:
            self._heartbeats = asyncio.create_task(self._send_heartbeats(), name="bus-heartbeats")

        async def on_msg(msg: Msg) -> None:
            if slots.locked():
                await self._reply_error(msg, Overloaded(f"{subject.queue} is at its concurrency limit"))
                return
            await slots.acquire()
            if msg.reply and msg.headers and HEARTBEAT in msg.headers:
                self._working[msg.reply] = time.monotonic()
                if msg.headers[HEARTBEAT] == ACK:  # a requester new to this subject: say at once that we beat
                    with contextlib.suppress(nats.errors.Error, OSError):
                        await self.nc.publish(msg.reply, b"", headers=_PROGRESS_HEADERS)
            task = asyncio.create_task(self._handle(msg, request_type, handler, slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._subs.append(await self.nc.subscribe(subject.name, queue=subject.queue, cb=on_msg))
        # The server knows the subscription once this returns: a service is not ready before a request
        # can reach it (without it, a request right after start-up could find "no responders").
        await synced(self.nc)

    async def _handle(
        self,
        msg: Msg,
        request_type: type[Req],
        handler: Callable[[Req], Awaitable[BaseModel]],
        slots: asyncio.Semaphore,
    ) -> None:
        error: KashfError | None = None
        try:
            bind_correlation_id((msg.headers or {}).get(CORRELATION_HEADER))
            try:
                request = request_type.model_validate_json(msg.data)
                reply = await handler(request)
            except ValidationError as exc:
                error = InvalidInput(f"bad request message: {exc.error_count()} errors")
            except KashfError as exc:
                error = exc
            except Exception:
                log.exception("handler_failed", subject=msg.subject)
                error = Internal("internal error in model service")
            self._working.pop(msg.reply, None)  # no heartbeat after the reply
            if error is not None:
                await self._reply_error(msg, error)
            elif msg.reply:
                try:
                    await self.nc.publish(msg.reply, reply.model_dump_json().encode(), headers=_REPLY_HEADERS)
                except nats.errors.MaxPayloadError:
                    await self._reply_error(msg, TooLarge("reply over the message bus payload limit; "
                                                          "send fewer items per request"))
        finally:
            self._working.pop(msg.reply, None)
            slots.release()

    async def _reply_error(self, msg: Msg, exc: KashfError) -> None:
        if not msg.reply:
            return
        headers = {ERROR_STATUS: str(exc.status), ERROR_CODE: exc.error_code, **_REPLY_HEADERS}
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(msg.reply, exc.detail.encode(), headers=headers)

    async def _send_heartbeats(self) -> None:
        """Tell each requester still waiting, about once a second, that its request is being worked on."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            # Requests taken in the last half interval get their first heartbeat at the next round.
            due = time.monotonic() - HEARTBEAT_S / 2
            for reply, taken in list(self._working.items()):
                if taken <= due:
                    with contextlib.suppress(nats.errors.Error, OSError):
                        await self.nc.publish(reply, b"", headers=_PROGRESS_HEADERS)

    async def publish_event(self, subject: str, message: BaseModel, *, msg_id: str) -> None:
        """Publish to JetStream with a dedup id; raises Unavailable when the stream does not ack."""
        try:
            await self.js.publish(
                subject, message.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id}, timeout=5.0
            )
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise Unavailable("event stream unavailable") from exc

    async def broadcast(self, subject: str, message: BaseModel) -> None:
        """Publish on core NATS to every listener; best effort (a lost message is not an error here)."""
        try:
            await self.nc.publish(subject, message.model_dump_json().encode())
        except (nats.errors.Error, OSError) as exc:
            log.warning("broadcast_failed", subject=subject, error=repr(exc))

    async def listen(self, subject: str, message_type: type[Req], handler: Callable[[Req], None]) -> None:
        """Call ``handler`` with every message on ``subject`` (no queue group); malformed ones are logged."""

        async def on_msg(msg: Msg) -> None:
            try:
                message = message_type.model_validate_json(msg.data)
            except ValidationError as exc:
                log.warning("bad_broadcast", subject=msg.subject, errors=exc.error_count())
                return
            handler(message)

        self._subs.append(await self.nc.subscribe(subject, cb=on_msg))
        await synced(self.nc)

    async def close(self, drain_timeout_s: float = 20.0) -> None:
        """Stop taking requests, let running handlers finish, then drain the connection."""
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.drain()  # type: ignore[no-untyped-call]
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=drain_timeout_s)
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        if not self.nc.is_closed:
            # nats-py cannot drain a connection holding a pull subscription (it waits for its whole
            # drain timeout), and by now our handlers are done: bound the wait, then close.
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await asyncio.wait_for(self.nc.drain(), timeout=5.0)
            if not self.nc.is_closed:
                # Closing flushes what is buffered: with the server gone, to a dead socket.
                with contextlib.suppress(nats.errors.Error, OSError):
                    await self.nc.close()
