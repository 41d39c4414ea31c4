"""Outbound webhooks: thin, signed notifications of run changes to endpoints operators
configure (``notify.endpoints`` or ``/api/v1/webhooks``), from a durable outbox.

A run's transition writes one outbox row per interested endpoint in its own transaction
(``bot.notify.outbox``); the worker's ``send_notifications`` job (``jobs/upkeep/notify.py``, woken
after that commit and swept by a cron) POSTs them, signed, and retries with backoff
(``bot.notify.sender``). A failing endpoint never slows a run: it costs the run one insert.
"""
