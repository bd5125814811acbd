"""cancel_and_wait: a stop finishes even when a task swallows its cancellation."""

from __future__ import annotations

import asyncio

from edgeshot._tasks import cancel_and_wait


async def test_a_loop_that_swallows_one_cancellation_is_stopped_all_the_same():
    swallowed = []

    async def stubborn() -> None:  # what asyncio.wait_for can do on Python < 3.12
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(1)

    async def failing() -> None:
        raise RuntimeError("a loop that failed before the stop")

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(failing())]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(tasks, every_s=0.05), 10)
    assert swallowed == [1] and all(t.done() for t in tasks)
    assert tasks[0].cancelled() and isinstance(tasks[1].exception(), RuntimeError)
