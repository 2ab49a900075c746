"""What serving costs: the launched app through gradio_client (and a headless browser) vs bare `pipe()`.

Launches `app.py` in a subprocess for each thread setting, and prints ratios measured in this one
run (requests interleaved with bare runs, medians), so a noisy machine affects both sides alike:
- end-to-end latency of a 25-step image with a live preview streamed every step / bare `pipe()`
  of the same settings (target ≤ 1.10);
- time to the first streamed preview, against two steps' time + 100 ms;
- the first request after start / a later one (target ≤ 1.3);
- with --browser, the same in headless Chromium (click Generate → "done in" shown).
The bare baseline runs in this process while the app idles, at the faster of 1 and 2 threads.
    python bench/served_latency.py [--threads 1 2] [--repeats 7] [--browser]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "a large red circle on the left and a blue star on a white background"
STEPS = 25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(threads: int, cache: str):
    port = free_port()
    env = {**os.environ, "DENOISE_CACHE": cache}
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--threads", str(threads)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    import httpx

    for _ in range(600):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the app did not start")


def served(client) -> tuple[float, float, float]:
    """(end-to-end seconds, seconds to the first streamed preview, the server's own seconds) of one
    /txt2img call."""
    start = time.perf_counter()
    job = client.submit(prompt=PROMPT, steps=STEPS, guidance_scale=5.0, seed=0, preview_every=1, api_name="/txt2img")
    first = None
    while not job.done():
        if first is None and job.outputs():
            first = time.perf_counter() - start
        time.sleep(0.002)
    _, info = job.result()
    total = time.perf_counter() - start
    return total, first if first is not None else total, info["total_ms"] / 1000


def make_bare():
    """bare(threads) -> seconds of one bare pipe() call on this process's torch thread."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from pipelines.loading import ModelManager
    from pipelines.schedulers import make_scheduler
    from pipelines.worker import WORKERS, set_threads

    diffusers_logging.set_verbosity_error()
    model = ModelManager().get()

    def bare(threads: int) -> float:
        set_threads(threads)

        def call():
            pipe = type(model.pipe).from_pipe(model.pipe, scheduler=make_scheduler("model default", model.pipe.scheduler))
            pipe.set_progress_bar_config(disable=True)
            start = time.perf_counter()
            pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(0))
            return time.perf_counter() - start

        return WORKERS.submit(call).result()

    return bare


def browser_times(url: str, repeats: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=flags)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        prompt = page.locator("#txt2img-prompt textarea")
        prompt.wait_for(timeout=60_000)
        prompt.fill(PROMPT)
        for i in range(repeats + 1):
            start = time.perf_counter()
            page.locator("#txt2img-generate").click()
            page.locator("#txt2img-progress", has_text="starting").wait_for(timeout=30_000)
            page.locator("#txt2img-progress", has_text="done in").wait_for(timeout=60_000)
            if i:  # the first click also warms the page
                times.append(time.perf_counter() - start)
        browser.close()
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="app thread settings to compare")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--browser", action="store_true", help="also time clicks in headless Chromium")
    args = parser.parse_args()
    from gradio_client import Client

    bare = make_bare()
    cache = tempfile.mkdtemp(prefix="denoise-bench-")
    print(f"{STEPS} steps, guidance 5, 64 px, preview every step; medians of {args.repeats}; "
          f"{os.cpu_count()} CPUs")
    for threads in args.threads:
        process, url = launch(threads, cache)
        try:
            client = Client(url, verbose=False)
            first_request, _, first_server = served(client)
            totals, firsts, servers, bares = [], [], [], {1: [], 2: []}
            for _ in range(args.repeats):
                for t in (1, 2):
                    bares[t].append(bare(t))
                total, first, server = served(client)
                totals.append(total)
                firsts.append(first)
                servers.append(server)
            base_threads = min(bares, key=lambda t: statistics.median(bares[t]))
            base = statistics.median(bares[base_threads])
            total, first = statistics.median(totals), statistics.median(firsts)
            step = base / STEPS
            print(f"app --threads {threads}:")
            print(f"  bare pipe(): 1 thread {statistics.median(bares[1]) * 1000:.0f} ms, "
                  f"2 threads {statistics.median(bares[2]) * 1000:.0f} ms (baseline: {base_threads})")
            print(f"  served end to end        {total * 1000:7.0f} ms   ratio {total / base:.3f}  (target ≤ 1.10)")
            print(f"    of which the server's run {statistics.median(servers) * 1000:5.0f} ms   ratio "
                  f"{statistics.median(servers) / base:.3f}")
            print(f"  first streamed preview   {first * 1000:7.0f} ms   vs 2 steps + 100 ms = "
                  f"{(2 * step + 0.1) * 1000:.0f} ms  ratio {first / (2 * step + 0.1):.3f}  (target ≤ 1)")
            print(f"  first request after start {first_request * 1000:6.0f} ms   / a later one {first_request / total:.3f}"
                  f"  (target ≤ 1.3); the server's run {first_server * 1000:.0f} ms")
            if args.browser:
                clicks = browser_times(url, args.repeats)
                print(f"  browser click → 'done'   {statistics.median(clicks) * 1000:7.0f} ms   ratio "
                      f"{statistics.median(clicks) / base:.3f}")
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
