"""An arq worker that waits for a wake-up between polls (``bot.queuewake``).

arq polls its queue, then sleeps ``poll_delay``. This worker gives arq no sleep of its own:
after each poll it waits on its queue's wake channel for at most ``idle_poll`` seconds, so a
job is picked up as soon as it is enqueued (or a deferred one made due), and an idle worker
polls Redis only every ``idle_poll`` seconds. A finished job also ends the wait, so a job
that found every slot of this worker taken starts as soon as one frees.
"""

from __future__ import annotations

from typing import Any

from arq.worker import Worker

from bot.queuewake import QueueWaker

BURST_POLL = 0.05
"""A burst worker (tests, ``--burst``) also waits this long at most between polls."""


class WakingWorker(Worker):
    def __init__(self, *args: Any, idle_poll: float, **kwargs: Any) -> None:
        # arq's own pause between polls is nothing: the wait happens in _poll_iteration.
        super().__init__(*args, poll_delay=0, **kwargs)
        self.idle_poll = idle_poll
        self.waker: QueueWaker | None = None

    async def _poll_iteration(self) -> None:
        if self.waker is None:  # the pool exists from here on (arq made it in main)
            self.waker = QueueWaker(self.pool, self.queue_name)
            self.waker.start()
        await super()._poll_iteration()
        await self.waker.wait(min(self.idle_poll, BURST_POLL) if self.burst else self.idle_poll)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self.waker is not None:
            self.waker.set()

    async def close(self) -> None:
        if self.waker is not None:
            await self.waker.stop()
            self.waker = None
        await super().close()


__all__ = ["WakingWorker"]
