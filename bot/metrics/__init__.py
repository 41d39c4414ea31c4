"""Prometheus metrics (SPEC §9): ``GET /metrics`` on every web process.

Counts that span processes are read from the database and Redis when scraped
(``bot.metrics.shared``), so one scrape of any web process sees every worker. What only one
process knows (webhook requests it refused, GitHub calls it made, jobs it picked up) is counted
in that process (``bot.metrics.local``); a worker shows its own on ``metrics.worker_port``.
See docs/operations.md for every metric.
"""
