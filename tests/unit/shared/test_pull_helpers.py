"""The stop helper the trainer and the video job runner share."""

from __future__ import annotations

import asyncio

from shared.bus.pull import finish_or_cancel


async def test_finish_or_cancel_waits_then_cancels_what_is_late() -> None:
    async def quick() -> None:
        await asyncio.sleep(0.01)

    async def stuck() -> None:
        await asyncio.sleep(60)

    done, hung = asyncio.create_task(quick()), asyncio.create_task(stuck())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await finish_or_cancel([done, hung], 0.2)
    assert loop.time() - started < 5
    assert done.done() and not done.cancelled()
    assert hung.cancelled()
    await finish_or_cancel([], 0.2)  # nothing to wait for
