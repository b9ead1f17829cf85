"""Refit slots shared fairly across accounts: one account's burst of datasets never holds another's refit behind
all of it (issue 18). ``asyncio.Semaphore`` wakes its waiters in arrival order, so 50 datasets of one account
queued first made a 51st account's single refit wait for all 50."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Hashable


class FairSlots:
    """At most ``size`` holders at once. A freed slot goes to the account next in turn among those waiting
    (round-robin over accounts; first come, first served within one), so an account waits for at most
    one refit of each other waiting account per slot, however many datasets they queued."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.busy = 0
        self._turns: OrderedDict[Hashable, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._turns.values())

    @contextlib.asynccontextmanager
    async def hold(self, account: Hashable) -> AsyncIterator[None]:
        await self._acquire(account)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, account: Hashable) -> None:
        if self.busy < self.size and not self._turns:
            self.busy += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns.setdefault(account, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot was handed over as the waiter was cancelled: pass it on
            else:
                queue = self._turns.get(account)
                if queue is not None and turn in queue:
                    queue.remove(turn)
                    if not queue:
                        del self._turns[account]
            raise

    def _release(self) -> None:
        """Hand the slot straight to the next account's first waiter (``busy`` stays), else free it."""
        while self._turns:
            account, queue = next(iter(self._turns.items()))
            turn = queue.popleft()
            if queue:
                self._turns.move_to_end(account)  # its next dataset waits for every other account's turn
            else:
                del self._turns[account]
            if not turn.done():
                turn.set_result(None)
                return
        self.busy -= 1
