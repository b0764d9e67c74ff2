"""Pointer-to-paint latency of `python -m vaejax.explore`, measured in the page of a real browser.

    python benchmarks/explore_latency.py [--workdir runs/conv_vae-mnist-z2-s0] [--moves 400]
        [--screenshot figures/explorer.png] [--out FILE]
    python benchmarks/explore_latency.py --smoke   # seconds: a one-epoch mlp_vae, 5 moves

Starts the explorer as a user would (its own process, a free port), loads the page in headless
chromium (Debian's `/usr/bin/chromium`, driven by Playwright) and moves the pointer over the plane
at a mouse's pace (one move per `--interval_ms`). The page measures itself: from each pointer move's
event timestamp to the frame after the image for it (or for a later move) is painted. Prints the
median and 95th percentile and writes them to `--out`. `--screenshot` also saves the page in use:
the grid on, a drawn digit, an interpolation strip and prior samples.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402

TARGET_MS = {"median": 30.0, "p95": 60.0}
WARM_UP_MOVES = 30  # the first moves open the connection; not measured


def start_explorer(workdir: Path) -> tuple[subprocess.Popen, str]:
    """`python -m vaejax.explore` on a free port, and the address it prints once ready."""
    server = subprocess.Popen([sys.executable, "-m", "vaejax.explore", "--workdir", str(workdir), "--port", "0"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    address = re.search(r"http://\S+/", line)
    if address is None:
        server.kill()
        sys.exit(f"explore_latency.py: the explorer did not start (exit {server.wait()})")
    return server, address.group(0)


def lissajous(count: int, size: float) -> list[tuple[float, float]]:
    """`count` pointer positions along a curve that crosses the plane many ways, 10% from its edges."""
    return [(size * (0.5 + 0.4 * math.sin(6 * math.pi * t)), size * (0.5 + 0.4 * math.sin(4 * math.pi * t + 1)))
            for t in np.linspace(0, 1, count)]


def move_over_plane(page, positions, interval_ms: float) -> None:
    box = page.locator("#marks-layer").bounding_box()
    for x, y in positions:
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.wait_for_timeout(interval_ms)
    page.wait_for_function("window.explorer.latencies.length === window.explorer.moves")


def stage_screenshot(page, path: Path) -> None:
    """The page in use: the linear grid under the points, the pointer on the plane, a drawn 7, an
    interpolation between two test digits, prior samples."""
    page.select_option("#grid", "linear")
    move_over_plane(page, [(300, 200)], 0)
    pad = page.locator("#pad").bounding_box()
    stroke = [(70, 60), (210, 60), (200, 90), (150, 170), (120, 240)]
    page.mouse.move(pad["x"] + stroke[0][0], pad["y"] + stroke[0][1])
    page.mouse.down()
    for x, y in stroke[1:]:
        page.mouse.move(pad["x"] + x, pad["y"] + y, steps=8)
    page.mouse.up()
    page.fill("#index-0", "3")
    page.fill("#index-1", "2")
    page.click("#use-digits")
    if page.locator("#sample").is_visible():
        page.click("#sample")
    page.wait_for_function("window.explorer.code !== null && document.querySelectorAll('#strip canvas').length > 0")
    page.wait_for_timeout(1000)  # the grid and the samples
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/conv_vae-mnist-z2-s0", help="a finished run")
    parser.add_argument("--moves", type=int, default=400, help="pointer moves measured (default: %(default)s)")
    parser.add_argument("--warm_up_moves", type=int, default=WARM_UP_MOVES,
                        help="moves before the measured ones, not measured (default: %(default)s)")
    parser.add_argument("--interval_ms", type=float, default=16.0,
                        help="time between pointer moves, a 60 Hz mouse (default: %(default)s)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser (default: %(default)s)")
    parser.add_argument("--out", default=None, help="JSON (default: benchmarks/results/explore_latency.json)")
    parser.add_argument("--screenshot", default=None, help="also save the page in use as this PNG")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"workdir": None, "moves": 5, "warm_up_moves": 3},
                            outputs=("out", "screenshot"))
    with smoke.scratch() as work:
        if args.workdir is None:
            args.workdir = str(smoke.tiny_run(Path(work) / "run", "mlp_vae"))
        measure(args, argv)


def measure(args: argparse.Namespace, argv: list[str] | None) -> None:
    from playwright.sync_api import sync_playwright

    load_at_start = os.getloadavg()
    server, url = start_explorer(Path(args.workdir))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(url)
            page.wait_for_function("window.explorer.ready", timeout=60_000)
            info = page.evaluate("fetch('/api/info').then(answer => answer.json())")
            move_over_plane(page, lissajous(args.warm_up_moves, 480)[::-1], args.interval_ms)
            page.evaluate("window.explorer.latencies.length = 0; window.explorer.moves = 0")
            move_over_plane(page, lissajous(args.moves, 480), args.interval_ms)
            latencies = np.asarray(page.evaluate("window.explorer.latencies"))
            if args.screenshot:
                stage_screenshot(page, Path(args.screenshot))
            chromium = browser.version
            browser.close()
    finally:
        server.terminate()
        server.wait()
    result = {
        "what": "pointer move to decoded image painted, measured in the page (ms)",
        "workdir": args.workdir, "model": info["model"], "latent_dim": info["latent_dim"],
        "pointer_moves": args.moves, "pointer_events_measured": int(latencies.size),
        "interval_ms": args.interval_ms,
        "median_ms": round(float(np.median(latencies)), 2), "p95_ms": round(float(np.percentile(latencies, 95)), 2),
        "mean_ms": round(float(latencies.mean()), 2), "max_ms": round(float(latencies.max()), 2),
        "target_ms": TARGET_MS, "load_average_at_start": load_at_start,
        "chromium": chromium, "playwright": metadata.version("playwright"), "provenance": provenance(__file__, argv),
    }
    out = smoke.out_path(args, ROOT / "benchmarks/results/explore_latency.json", "explore_latency.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, result)
    print(f"{info['model']} latent {info['latent_dim']}: {latencies.size} pointer events, pointer to paint "
          f"median {result['median_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms (targets 30 and 60); wrote {out}")


if __name__ == "__main__":
    main()
