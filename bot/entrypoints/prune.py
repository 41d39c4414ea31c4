"""``bosun prune``: retention by hand, on the host it runs on (``jobs.upkeep.prune``)."""

from __future__ import annotations

from bot.services import Services
from bot.settings import Settings
from jobs.context import JobContext
from jobs.upkeep.prune import KINDS, PruneReport, prune_database, prune_host


async def run_prune(settings: Settings, *, dry_run: bool) -> PruneReport:
    services = Services.build(settings)
    bosun = JobContext(settings=settings, services=services)
    try:
        report = await prune_database(services.sessions, settings.retention, dry_run=dry_run)
        return await prune_host(
            services.sessions, settings, bosun.workspaces, dry_run=dry_run, report=report
        )
    finally:
        await bosun.close()


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover -- the loop returns


def render_report(report: PruneReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    lines = [f"{'kind':<15} {verb:>12} {'bytes':>10}  what"]
    for kind, meaning in KINDS.items():
        removed = report.removed.get(kind)
        count, size = (removed.count, removed.bytes) if removed else (0, 0)
        lines.append(f"{kind:<15} {count:>12} {_bytes(size):>10}  {meaning}")
    total = sum(r.bytes for r in report.removed.values())
    lines.append(f"{'total':<15} {'':>12} {_bytes(total):>10}")
    if report.dry_run:
        lines.append("dry run: nothing was removed")
    lines += [f"error: {error}" for error in report.errors]
    return "\n".join(lines)
