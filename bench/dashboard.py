"""Dashboard bars (issue 15).

1. **Fleet page server time**: 1,000 runs and 50,000 events in the database (8 working, 20
   queued, 15 waiting for review, the rest ended), ``GET /`` and ``GET /fleet/body`` (the live
   refresh) as the local admin, ``--requests`` each after a warm-up, timed around the ASGI call
   in process (the app's own work: queries, permission, rendering; no network). Target p95 ≤
   150 ms.
2. **Run page with a 5 MB diff** in Chromium (Debian's, through Playwright) against Bosun served
   by uvicorn on loopback: first paint of the Diff tab, the longest task while it loads, and the
   longest task while the largest file's diff is opened (loaded lazily). Targets: first paint
   ≤ 1 s, no long task over 200 ms.

    .venv/bin/python -m bench.dashboard [--database-url URL] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import uvicorn
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from bench.stats import loadavg, summary, table, write_result
from bot.db.engine import create_engine
from bot.db.migrate import upgrade
from bot.domain.states import RunState
from bot.logs import configure_logging
from bot.services import Services
from bot.settings import Settings
from bot.web.app import create_app
from bot.web.dashboard.login import issue_admin_link
from tests.dashboard_seed import seed
from tests.services import REDIS_URL
from tests.stack import free_port

OUT = Path(__file__).parent / "results" / "dashboard.json"
CHROMIUM = "/usr/bin/chromium"
CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')
MIX = (
    [RunState.REVIEW_READY]
    + [RunState.RUNNING] * 8
    + [RunState.QUEUED] * 20
    + [RunState.REVIEW_READY] * 14
    + [RunState.MERGED] * 500
    + [RunState.FAILED] * 300
    + [RunState.CANCELLED] * 157
)
"""1,000 runs: the first review-ready with the big diff, then a realistic fleet."""


SMOKE_MIX = MIX[:1] + [RunState.RUNNING] * 2 + [RunState.QUEUED] * 2 + [RunState.MERGED] * 5
"""``--smoke``: ten runs, the first review-ready with a small diff."""


def big_diff_files(target_bytes: int, huge_lines: int = 20_000) -> dict[str, int]:
    """About ``target_bytes`` of diff over files of varied size (one large one)."""
    files: dict[str, int] = {"src/generated/huge_table.py": huge_lines}
    n = 0
    while sum(files.values()) * 55 < target_bytes:
        files[f"src/module_{n:03d}/file_{n:03d}.py"] = 150 + (n * 37) % 900
        n += 1
    return files


def settings_for(tmp: Path, database_url: str | None, port: int) -> Settings:
    return Settings.model_validate(
        {
            "public_url": f"http://127.0.0.1:{port}",
            "data_dir": tmp / "data",
            "log_level": "warning",
            "log_format": "json",
            "database": {"url": database_url or f"sqlite+aiosqlite:///{tmp / 'bosun.db'}"},
            "redis": {
                "url": REDIS_URL,
                "spawn_local": False,
                "namespace": f"bench-{uuid.uuid4().hex[:8]}",
            },
        }
    )


async def prepare(settings: Settings, *, smoke: bool = False) -> tuple[str, int]:
    engine = create_engine(settings.database.url)
    await upgrade(engine)
    await engine.dispose()
    services = Services.build(settings)
    try:
        started = time.monotonic()
        mix = SMOKE_MIX if smoke else MIX
        seeded = await seed(
            services.sessions,
            settings,
            runs=len(mix),
            events_per_run=50,
            diff_files=big_diff_files(0, 2_000) if smoke else big_diff_files(5 * 1024 * 1024),
            states=mix,
        )
        print(
            f"seeded {len(mix)} runs, {len(mix) * 50} events in {time.monotonic() - started:.1f}s"
        )
        async with services.sessions() as session:
            from sqlalchemy import text

            size = (
                await session.execute(
                    text("SELECT size FROM artifacts WHERE run_id=:r AND name='diff'"),
                    {"r": seeded.review_run},
                )
            ).scalar_one()
    finally:
        await services.close()
    return seeded.review_run, int(size)


async def admin_link(settings: Settings) -> str:
    client = Redis.from_url(settings.redis.url, password=settings.redis.password_value())
    try:
        return await issue_admin_link(settings, client)
    finally:
        await client.aclose()


async def fleet_times(settings: Settings, requests: int) -> dict[str, Any]:
    app = create_app(settings)
    out: dict[str, Any] = {}
    async with AsyncTestClient(app, base_url=settings.public_url) as client:
        link = await admin_link(settings)
        path = link.split(settings.public_url, 1)[1]
        page = await client.get(path)
        token = CSRF.search(page.text)
        assert token is not None
        signed = await client.post(
            "/login/once",
            data={"_csrf": token.group(1), "token": unquote(path.split("token=", 1)[1])},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        for name, url in (
            ("fleet page (GET /)", "/"),
            ("live refresh (GET /fleet/body)", "/fleet/body"),
        ):
            for _ in range(10):
                assert (await client.get(url)).status_code == 200
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                answer = await client.get(url)
                times.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200
            out[name] = summary(times)
            out[name]["bytes"] = len(answer.content)
    return out


def serve(settings: Settings, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


PAINT = """
window.__paint = null;
new PerformanceObserver(list => {
  for (const e of list.getEntries()) if (window.__paint === null) window.__paint = e.startTime;
}).observe({type: "paint", buffered: true});
"""
LONG_TASKS = """() => {
  window.__long = [];
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) window.__long.push(e.duration);
  }).observe({type: "longtask", buffered: true});
}"""


def browser_times(settings: Settings, port: int, run_id: str, rounds: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    links = [asyncio.run(admin_link(settings)) for _ in range(rounds)]
    server, thread = serve(settings, port)
    result: dict[str, Any] = {
        "first_paint_ms": [],
        "load_long_task_ms": [],
        "open_file_long_task_ms": [],
    }
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
            )
            try:
                for link in links:
                    context = browser.new_context(viewport={"width": 1360, "height": 900})
                    context.add_init_script(PAINT)
                    page = context.new_page()
                    page.on("dialog", lambda d: d.accept())
                    page.goto(link)
                    page.click("button[type=submit]")
                    page.wait_for_url(f"{settings.public_url}/")
                    page.goto(f"{settings.public_url}/runs/{run_id}?tab=diff", wait_until="load")
                    page.wait_for_function("() => window.__paint !== null", timeout=30_000)
                    paint = page.evaluate("() => window.__paint")
                    page.evaluate(LONG_TASKS)
                    page.wait_for_timeout(300)
                    load_long = page.evaluate("() => Math.max(0, ...window.__long)")
                    page.evaluate("() => { window.__long = []; }")
                    page.locator("details.file summary", has_text="huge_table.py").click()
                    page.wait_for_selector(
                        "details.file[open] .filebody table.diff", timeout=30_000
                    )
                    page.wait_for_timeout(300)
                    open_long = page.evaluate("() => Math.max(0, ...window.__long)")
                    result["first_paint_ms"].append(paint)
                    result["load_long_task_ms"].append(load_long)
                    result["open_file_long_task_ms"].append(open_long)
                    context.close()
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one short round: 10 runs, a 2,000-line diff, 5 requests each, 1 browser round",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.requests, args.rounds = 5, 1
        if args.out == OUT:  # a smoke round's numbers are no result
            args.out = Path(tempfile.gettempdir()) / "dashboard.smoke.json"
    load_start = loadavg()
    configure_logging("warning", "json")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        settings = settings_for(Path(tmp), args.database_url, port)
        run_id, diff_size = asyncio.run(prepare(settings, smoke=args.smoke))
        fleet = asyncio.run(fleet_times(settings, args.requests))
        browser = browser_times(settings, port, run_id, args.rounds)
        with contextlib.suppress(Exception):
            asyncio.run(_purge(settings))
    rows = [[name, s["p50"], s["p95"], s["p99"], s["max"], s["bytes"]] for name, s in fleet.items()]
    print(table(["request", "p50 ms", "p95 ms", "p99 ms", "max ms", "bytes"], rows))
    print(
        table(
            ["run page, 5 MB diff", "max over rounds (ms)", "all rounds"],
            [[k, max(v), v] for k, v in browser.items()],
        )
    )
    write_result(
        args.out,
        {
            "database": settings.database.url.split(":", 1)[0],
            "runs": len(SMOKE_MIX if args.smoke else MIX),
            "events": len(SMOKE_MIX if args.smoke else MIX) * 50,
            "diff_bytes": diff_size,
            "load_average_at_start": load_start,
            "fleet": fleet,
            "run_page": browser,
        },
    )


async def _purge(settings: Settings) -> None:
    client = Redis.from_url(settings.redis.url, password=settings.redis.password_value())
    try:
        keys = [k async for k in client.scan_iter(f"{settings.redis.namespace}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


if __name__ == "__main__":
    main()
