"""Stopping background tasks for sure.

On Python < 3.12, ``asyncio.wait_for`` may swallow a cancellation that arrives as the
awaited thing completes (CPython gh-86296); a ``while True`` loop around it then runs on,
and a service that awaits its cancelled loops at shutdown hangs until it is killed (the
edge did, once in a few dozen stops on a loaded machine). Cancelling again until the tasks
are done makes a stop finish whatever the tasks await.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def cancel_and_wait(tasks: Iterable[asyncio.Task], every_s: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until every one has finished, cancelling those still
    running again every ``every_s`` seconds. Their results and exceptions are dropped."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" at exit
