"""The asking side of request/reply: one reply inbox per connection, a dead responder noticed in seconds.

A responder (``Bus.serve``) that was asked for them sends heartbeats (``Kashf-Progress``) about once a second
while it works on a request, and marks its replies ``Kashf-Heartbeat``. Once a subject's responders are known
to do so, a request that hears nothing for ``SILENCE_S`` is taken as held by a dead replica: an idempotent one
is sent again (the queue group picks a replica), others fail with 503. Slow but live work is never cut short:
only the subject's timeout (504) ends it. While the connection is down, requests fail at once (503).

Until a subject is known, its requests ask for a heartbeat at once on receipt (``Kashf-Heartbeat: ack``): the
first word from any of its responders makes it known, and from then on every request of it in flight is watched
too, so even the first requests after a start are noticed when the replica holding them dies. A responder of
an older release never says it, and is waited for. A request no responder ever says a word about while none of
that subject ever has (the only replica hung from the start) still waits for the subject's timeout.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.nuid import NUID

from shared.errors import InvalidInput, Timeout, Unavailable
from shared.subjects import Subject

log = structlog.get_logger(__name__)

HEARTBEAT = "Kashf-Heartbeat"  # on a request: send heartbeats; on a reply: this responder sends them
PROGRESS = "Kashf-Progress"  # a heartbeat: the responder still works on the request
ACK = "ack"  # HEARTBEAT's value asking for a first heartbeat at once (the subject is not known yet)
HEARTBEAT_S = 1.0
# Four heartbeat intervals: a busy event loop at either end may delay one or two of them.
SILENCE_S = 4.0
# Pauses before asking again when no replica was subscribed (one may be restarting).
NO_RESPONDERS_PAUSES_S = (0.1, 0.3)
_STATUS = "Status"  # nats-server's status header; "503" on a reply: no responders


class _Ended(enum.Enum):
    SILENT = "silent"
    NO_RESPONDERS = "no_responders"
    TIMED_OUT = "timed_out"


class _ConnectionLost(Exception):
    pass


@dataclass(eq=False)
class _Call:
    subject: str
    reply: asyncio.Future[Msg]
    deadline: float  # loop time
    watch: bool  # end the call after SILENCE_S without a word
    scope: asyncio.Timeout | None = None

    def heard(self, now: float) -> None:
        if self.watch and self.scope is not None:
            self.scope.reschedule(min(self.deadline, now + SILENCE_S))


class Requester:
    """Requests in flight on one connection, each with its own reply subject under one wildcard inbox."""

    def __init__(self) -> None:
        self._calls: dict[str, _Call] = {}
        self._prefix: str | None = None
        self._subscribing = asyncio.Lock()
        self._nuid = NUID()
        # Subjects whose responders were seen to send heartbeats: only those calls are ended by silence, so a
        # responder of an older release (no heartbeats) is never taken for dead while it works.
        self._heartbeating: set[str] = set()

    async def connection_lost(self) -> None:
        """The client's disconnected callback: no reply can come any more to what is in flight."""
        for call in self._calls.values():
            if not call.reply.done():
                call.reply.set_exception(_ConnectionLost())

    async def request(self, nc: NATS, subject: Subject, data: bytes, headers: dict[str, str], timeout_s: float, *,
                      idempotent: bool) -> Msg:
        """The reply to ``data`` on ``subject`` (error replies included); failures raise ``KashfError``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pauses = iter(NO_RESPONDERS_PAUSES_S)
        while True:
            beat = "1" if subject.name in self._heartbeating else ACK
            ended = await self._attempt(nc, subject, data, {**headers, HEARTBEAT: beat}, deadline)
            if isinstance(ended, Msg):
                return ended
            left = deadline - loop.time()
            if ended is _Ended.SILENT:
                if idempotent and left > 0:
                    log.warning("request_retried", subject=subject.name, silent_s=SILENCE_S)
                    continue
                raise Unavailable(f"{subject.queue} stopped answering")
            if ended is _Ended.NO_RESPONDERS:
                pause = next(pauses, None)
                if idempotent and pause is not None and left > pause:
                    await asyncio.sleep(pause)
                    continue
                raise Unavailable(f"{subject.queue} is not running")
            raise Timeout(f"{subject.queue} did not answer within {timeout_s:g} s")

    async def _attempt(self, nc: NATS, subject: Subject, data: bytes, headers: dict[str, str],
                       deadline: float) -> Msg | _Ended:
        if not nc.is_connected:
            # nats-py would buffer the request until it reconnects, and the caller would wait its whole timeout.
            raise Unavailable("message bus unavailable")
        prefix = await self._inbox(nc)
        loop = asyncio.get_running_loop()
        token = self._nuid.next().decode()
        call = _Call(subject.name, loop.create_future(), deadline, watch=subject.name in self._heartbeating)
        self._calls[token] = call
        try:
            async with asyncio.timeout_at(deadline) as scope:
                call.scope = scope
                await nc.publish(subject.name, data, reply=prefix + token, headers=headers)
                call.heard(loop.time())
                msg = await call.reply
        except TimeoutError:
            if not scope.expired():
                raise Unavailable("message bus unavailable") from None
            when = scope.when()
            return _Ended.SILENT if when is not None and when < deadline else _Ended.TIMED_OUT
        except _ConnectionLost:
            raise Unavailable("message bus connection lost") from None
        except nats.errors.MaxPayloadError as exc:
            raise InvalidInput("request too large for the message bus") from exc
        except (nats.errors.Error, OSError) as exc:
            raise Unavailable("message bus unavailable") from exc
        finally:
            self._calls.pop(token, None)
        if not msg.data and msg.headers and msg.headers.get(_STATUS) == "503":
            return _Ended.NO_RESPONDERS
        return msg

    async def _inbox(self, nc: NATS) -> str:
        if self._prefix is None:
            async with self._subscribing:
                if self._prefix is None:
                    # new_inbox() honours the connection's inbox prefix (per-service NATS users, shared.natsauth).
                    prefix = nc.new_inbox() + "."
                    await nc.subscribe(prefix + "*", cb=self._on_reply)
                    self._prefix = prefix
        return self._prefix

    async def _on_reply(self, msg: Msg) -> None:
        assert self._prefix is not None
        call = self._calls.get(msg.subject[len(self._prefix):])
        if call is None or call.reply.done():
            return  # late: the caller gave up, or a heartbeat after the reply
        now = asyncio.get_running_loop().time()
        if msg.headers and (PROGRESS in msg.headers or HEARTBEAT in msg.headers):
            self._learned(call.subject, now)
        if msg.headers and PROGRESS in msg.headers:
            call.heard(now)
            return
        call.reply.set_result(msg)

    def _learned(self, subject: str, now: float) -> None:
        """``subject``'s responders send heartbeats: its calls already in flight are ended by silence too
        (one a dead replica took before it could say a word is noticed from now)."""
        if subject in self._heartbeating:
            return
        self._heartbeating.add(subject)
        for call in self._calls.values():
            if call.subject == subject and not call.watch:
                call.watch = True
                call.heard(now)
