"""Dashboard live log (issue 15: a log line reaches the page ≤ 2 s after the agent prints it).

Bosun as deployed (``bench.live_log.deployed``: one ``bosun worker``, one ``bosun serve`` on
loopback, SQLite or ``--database-url``, Redis, the local Docker engine, the GitHub emulator in
its own process). Debian's Chromium through Playwright signs in with the local admin's one-time
link, an issue is labelled, and the browser opens the run's page on its Live log tab before the
``script`` agent prints ``tick <n> <time.time()>`` every ``--interval`` s for ``--seconds`` s
(the time taken inside the sandbox, which shares the host's clock). A ``MutationObserver`` in
the page records when each line is added to the log (``performance.timeOrigin +
performance.now()``), and when the next animation frame after it ran. Reported: the delay from
the time in the line to the page, p50 / p95 / p99 / max, split at the event row's
``created_at`` (worker side; web side and browser), lines missing, duplicated or out of order.

    .venv/bin/python -m bench.dashboard_log
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path
from typing import Any

from bench.dashboard import CHROMIUM, admin_link
from bench.label_to_agent import wait
from bench.live_log import deployed, disorder, runs_of, ticker_command
from bench.stats import add_redis_option, loadavg, summary, table, write_result
from bench.webhook_ack import host_busy_seconds
from bot.logs import configure_logging

DEFAULT_OUT = Path(__file__).parent / "results" / "dashboard_log.json"
ACTIVE = {"queued", "preparing", "running", "gates"}
TICK = re.compile(r"^tick (\d+) (\d+\.\d+)$")
OBSERVE = """
window.__lines = [];
window.__open = [];
window.__closed = null;
const now = () => performance.timeOrigin + performance.now();
const record = (node, at, pending) => {
  if (!(node instanceof Element)) return;
  const found = node.matches(".line[data-seq]") ? [node] : node.querySelectorAll(".line[data-seq]");
  for (const el of found) {
    if (!el.closest("#log")) continue;
    const text = el.querySelector(".text");
    const entry = {seq: Number(el.dataset.seq), text: (text || el).textContent.trim(), dom: at,
                   frame: null};
    window.__lines.push(entry);
    pending.push(entry);
  }
};
new MutationObserver(records => {
  const at = now(), pending = [];
  for (const r of records) for (const n of r.addedNodes) record(n, at, pending);
  if (pending.length) requestAnimationFrame(() => {
    const frame = now();
    for (const e of pending) e.frame = frame;
  });
}).observe(document, {childList: true, subtree: true});
document.addEventListener("htmx:sseOpen", () => window.__open.push(now()));
document.addEventListener("htmx:sseClose", () => { window.__closed = now(); });
"""


def watch(web: str, link: str, run_ids: list[str], label: Any, timeout: float) -> dict[str, Any]:
    """Sign in, have ``label`` start the runs, follow the first one's Live log until its stream
    ends; what the page recorded."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 900})
            context.add_init_script(OBSERVE)
            page = context.new_page()
            page.goto(link)
            page.click("button[type=submit]")
            page.wait_for_url(f"{web}/")
            with ThreadPoolExecutor(1) as pool:  # asyncio.run beside Playwright's own loop
                run_ids.extend(run_id for run_id, _ in pool.submit(label).result())
            page.goto(f"{web}/runs/{run_ids[0]}", wait_until="load")
            if page.locator("#log").count() != 1:
                raise RuntimeError("the run page has no Live log")
            page.wait_for_function("() => window.__open.length > 0", timeout=30_000)
            page.wait_for_function(
                "() => window.__closed !== null", timeout=timeout * 1000, polling=500
            )
            page.wait_for_timeout(200)  # the last animation frame
            seen: dict[str, Any] = page.evaluate(
                """() => ({lines: window.__lines, open: window.__open, closed: window.__closed,
                          in_dom: Array.from(document.querySelectorAll("#log .line .text"),
                                             e => e.textContent.trim())})"""
            )
            context.close()
            return seen
        finally:
            browser.close()


def created_times(database_url: str, run_id: str) -> dict[int, float]:
    """Each event's ``created_at`` (seconds) by ``seq``."""
    from bot.control.queries import RunStore
    from bot.db.engine import create_engine, session_factory

    async def go() -> dict[int, float]:
        engine = create_engine(database_url)
        store = RunStore(session_factory(engine))
        out: dict[int, float] = {}
        after = 0
        try:
            while True:
                page = await store.events(run_id, after_seq=after, limit=1000)
                if not page:
                    return out
                for event in page:
                    at = event.created_at
                    out[event.seq] = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
                after = page[-1].seq
        finally:
            await engine.dispose()

    return asyncio.run(go())


def report(seen: dict[str, Any], created: dict[int, float], lines: int) -> dict[str, Any]:
    opened = seen["open"][0] / 1000
    dom: list[float] = []
    frame: list[float] = []
    worker: list[float] = []
    web: list[float] = []
    ticks: list[int] = []
    seqs: list[int] = []
    history = 0
    for entry in seen["lines"]:
        match = TICK.match(entry["text"])
        if match is None:
            continue
        number, written = int(match.group(1)), float(match.group(2))
        ticks.append(number)
        seqs.append(entry["seq"])
        if written < opened:  # printed before the page subscribed: history, not timed
            history += 1
            continue
        dom.append(entry["dom"] / 1000 - written)
        if entry["frame"] is not None:
            frame.append(entry["frame"] / 1000 - written)
        stored = created.get(entry["seq"])
        if stored is not None:
            worker.append(stored - written)
            web.append(entry["dom"] / 1000 - stored)
    in_dom = {int(m.group(1)) for t in seen["in_dom"] if (m := TICK.match(t))}
    return {
        "lines_printed": lines,
        "lines_timed": len(dom),
        "lines_from_history": history,
        "missing": lines - len(set(ticks)),
        "missing_from_final_page": lines - len(in_dom),
        "duplicates": len(ticks) - len(set(ticks)),
        "out_of_order_seq": disorder(seqs),
        "out_of_order_tick": disorder(ticks),
        "stream_opened": len(seen["open"]),
        "delay_to_dom": summary(dom),
        "delay_to_next_frame": summary(frame),
        "line_to_stored": summary(worker),
        "stored_to_dom": summary(web),
    }


def _ms(stats: dict[str, float]) -> list[Any]:
    return [int(stats["n"]), *(f"{stats[k] * 1000:.0f}" for k in ("p50", "p95", "p99", "max"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_log")
    parser.add_argument("--seconds", type=float, default=20.0, help="the agent prints for")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between lines")
    parser.add_argument("--start-delay", type=float, default=4.0, help="the agent waits first")
    parser.add_argument("--runs", type=int, default=1, help="runs printing (the page shows one)")
    parser.add_argument("--database-url", default="", help="default: SQLite in the temp folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    add_redis_option(parser)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--smoke", action="store_true", help="one short round (1 s of lines, 2 s start delay)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.seconds, args.interval, args.start_delay = 1, 1.0, 0.1, 2.0
        if args.out == DEFAULT_OUT:  # a smoke round's numbers are no result
            args.out = Path(tempfile.gettempdir()) / f"{DEFAULT_OUT.stem}.smoke.json"
    configure_logging("warning", "json")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    lines = round(args.seconds / args.interval)

    load_start = loadavg()
    command = ticker_command(lines, args.interval, args.start_delay)
    with deployed(
        runs=args.runs,
        webs=1,
        command=command,
        redis=args.redis,
        database_url=args.database_url,
        keep=args.keep,
    ) as bosun:
        link = asyncio.run(admin_link(bosun.settings))
        run_ids: list[str] = []
        host0, t0 = host_busy_seconds(), time.monotonic()
        seen = watch(
            bosun.webs[0],
            link,
            run_ids,
            lambda: bosun.label_issues(args.runs),
            timeout=args.start_delay + args.seconds + 180,
        )
        busy = (host_busy_seconds() - host0) / (time.monotonic() - t0)
        load_end = loadavg()
        created = created_times(bosun.database_url, run_ids[0])
        states = wait(  # the other runs end too before Bosun is stopped
            lambda: (
                (found := [state for _, state in runs_of(bosun.database_url)])
                and not ACTIVE.intersection(found)
                and found
            ),
            120,
            "every run to end",
        )
        database = bosun.database_url.split(":", 1)[0].split("+", 1)[0]

    data = report(seen, created, lines)
    rows = [
        ["line in sandbox → added to the page", *_ms(data["delay_to_dom"])],
        ["line in sandbox → next animation frame", *_ms(data["delay_to_next_frame"])],
        ["  line in sandbox → event row stored (worker)", *_ms(data["line_to_stored"])],
        ["  event row stored → added to the page (web, browser)", *_ms(data["stored_to_dom"])],
    ]
    text = table(["delay (ms)", "n", "p50", "p95", "p99", "max"], rows)
    text += (
        f"\n\nlines printed {lines}, timed {data['lines_timed']}, from history "
        f"{data['lines_from_history']}; missing {data['missing']} (from the final page "
        f"{data['missing_from_final_page']}), duplicates {data['duplicates']}, out of order "
        f"{data['out_of_order_seq']} by seq / {data['out_of_order_tick']} by tick; stream "
        f"opened {data['stream_opened']} time(s); host busy {busy:.2f} cores; load average "
        f"{load_start} → {load_end}; runs ended {states}"
    )
    print(
        f"\nDashboard live log: {args.runs} run(s), one line per {args.interval * 1000:.0f} ms "
        f"for {args.seconds:.0f} s, Chromium on the first run's Live log tab\n"
    )
    print(text)
    write_result(
        args.out,
        {
            "benchmark": "dashboard_log",
            "load_average_at_start": load_start,
            "runs": args.runs,
            "interval_s": args.interval,
            "seconds": args.seconds,
            "database": database,
            "run_states": states,
            "host_busy_cores": round(busy, 2),
            **data,
            "table": text,
        },
    )
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
