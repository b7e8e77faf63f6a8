"""The reconcile loop every controller runs: a pass, then sleep until woken, stopped or the interval ends."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger("shipyard.control")


async def reconcile_loop(one_pass: Callable[[], Awaitable[None]], wake: asyncio.Event, stop: asyncio.Event,
                         interval_s: float, what: str) -> None:
    """Run ``one_pass`` until ``stop`` is set; ``wake`` (set by the API on a change) starts the next at once."""
    while not stop.is_set():
        try:
            await one_pass()
        except Exception:  # one bad pass must not end the control plane
            log.exception("%s reconcile pass failed", what)
        wake.clear()
        waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waits, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waits:
            waiter.cancel()
