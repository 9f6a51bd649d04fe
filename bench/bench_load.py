"""Does the app serve a team? Many sessions upload to the Image page while another session sweeps.

A real server (``streamlit run app.py``, ``ATS_VIZ_MAX_JOBS=1``) and one headless Chromium with
a browser context per session (each its own Streamlit session). One session opens the Dataset
page on a generated folder and starts a sweep (the default methods and ladders); once it is
running, ``--sessions`` others each upload ``--uploads`` different images to the Image page, all
at once. For every upload it times upload-to-result (the file handed to the uploader until the
page shows that image's "Tokens kept" and has finished running) and checks that number against
the library's own run of the same bytes. The server's RSS (with its children) is sampled
throughout.

Usage (from the repository root; on a shared machine, nice it, and read the times as an upper bound):

    nice -n 15 python bench/bench_load.py                         # 8 sessions x 3 uploads, 300-image sweep
    nice -n 15 python bench/bench_load.py --sessions 2 --uploads 1 --sweep-images 50  # does it run?

It ends with

    8 sessions x 3 uploads while a sweep ran: upload-to-result median ... s, worst ... s; answers ok 24/24
    server RSS: ... MiB idle, ... MiB with the sweep, peak ... MiB; the sweep was still running at the end: yes

and exits 1 when an answer differs from the library's or an upload never got its result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ats_viz import ATSConfig, run_ats, synthetic  # noqa: E402
from ats_viz.data import read_image  # noqa: E402
from ats_viz.models import load_model  # noqa: E402
from bench_memory import image, rss_mib, stop_server  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
SLOW_MS = 600_000


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ATS_VIZ_CACHE": str(tmp / "cache"), "ATS_VIZ_MAX_JOBS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("ATS_VIZ_ROOTS", None)  # the sweep session types a folder path
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address",
         "127.0.0.1", "--server.port", str(port)], cwd=ROOT, env=env, stdout=open(tmp / "streamlit.log", "wb"),
        stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).close()
            return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("streamlit did not start:\n" + (tmp / "streamlit.log").read_text()[-2000:])
            time.sleep(1)


async def start_sweep(browser, url: str, folder: Path, images: int):
    """The Dataset page on ``folder``, Evaluate pressed, and the progress bar moving."""
    page = await (await browser.new_context(viewport={"width": 1400, "height": 1400})).new_page()
    page.set_default_timeout(SLOW_MS)
    await page.goto(url + "/Dataset")
    await page.get_by_text("A folder on this machine").click()
    box = page.get_by_role("textbox", name="Folder (ImageFolder: one subfolder per class)")
    await box.fill(str(folder))
    await box.press("Enter")
    await page.get_by_text(f"{images} images", exact=False).first.wait_for()
    await page.wait_for_selector(IDLE)
    await page.get_by_role("button", name="Evaluate").click()
    await page.get_by_text("image-settings", exact=False).first.wait_for()
    return page


async def session(browser, url: str, n: int, uploads: int, size: int, expected: dict, times: list, bad: list):
    page = await (await browser.new_context(viewport={"width": 1400, "height": 1600})).new_page()
    page.set_default_timeout(SLOW_MS)
    await page.goto(url + "/Image")
    await page.get_by_text("The tokens of one image, stage by stage").wait_for()
    await page.wait_for_selector(IDLE)
    for i in range(uploads):
        name = f"s{n:02d}-upload-{i:02d}.png"
        t0 = time.perf_counter()
        await page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
            files=[{"name": name, "mimeType": "image/png", "buffer": image(n * 1000 + i, size)}])
        await page.get_by_text(f"{name}, as the model sees it").wait_for()
        await page.wait_for_selector(IDLE)
        metric = page.locator('[data-testid="stMetric"]').filter(has_text="Tokens kept")
        tokens = (await metric.locator('[data-testid="stMetricValue"]').inner_text()).strip()
        seconds = time.perf_counter() - t0
        times.append(seconds)
        want = expected[(n, i)]
        if tokens != want:
            bad.append(f"{name}: the page says {tokens}, the library {want}")
        print(f"session {n + 1:2d} upload {i + 1}: {seconds:6.2f} s, tokens kept {tokens}"
              + ("" if tokens == want else f" (library: {want})"), flush=True)


async def sample_rss(pid: int, into: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        into.append(rss_mib(pid, children=True))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


async def drive(args: argparse.Namespace, url: str, server: subprocess.Popen, folder: Path, expected: dict):
    from playwright.async_api import async_playwright

    chromium = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if chromium is None:
        raise SystemExit("bench_load needs Chromium (apt-get install chromium)")
    times, bad, rss = [], [], []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        start_rss = rss_mib(server.pid, children=True)
        sweep = await start_sweep(browser, url, folder, args.sweep_images)
        sweep_rss = rss_mib(server.pid, children=True)
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(server.pid, rss, stop))
        t0 = time.perf_counter()
        results = await asyncio.gather(*(session(browser, url, n, args.uploads, args.size, expected, times, bad)
                                         for n in range(args.sessions)), return_exceptions=True)
        wall = time.perf_counter() - t0
        still = await sweep.get_by_text("Done:", exact=False).count() == 0
        stop.set()
        await sampler
        await browser.close()
    failed = [f"a session failed: {type(r).__name__}: {str(r)[:300]}" for r in results if isinstance(r, BaseException)]
    return times, bad, failed, (start_rss, sweep_rss, rss), wall, still


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="browser sessions uploading at once")
    parser.add_argument("--uploads", type=int, default=3, help="uploads per session, one after another")
    parser.add_argument("--size", type=int, default=224, help="side of the uploaded images in pixels")
    parser.add_argument("--sweep-images", type=int, default=300, help="images in the swept folder (tens)")
    args = parser.parse_args()
    if args.sweep_images % 10 or args.sweep_images < 10:
        parser.error("--sweep-images must be a multiple of 10 (one folder per shape class)")
    tmp = Path(tempfile.mkdtemp(prefix="ats-viz-load-"))
    folder = synthetic.write_imagefolder(tmp / "sweep-set", per_class=args.sweep_images // 10, seed=5)
    model = load_model("embedded")
    expected = {}
    with torch.no_grad():
        for n in range(args.sessions):
            for i in range(args.uploads):
                res = run_ats(model.net, model.prepare(read_image(image(n * 1000 + i, args.size))), ATSConfig())
                expected[(n, i)] = f"{int(res.patch_counts[0, -1])} / 196"
    print(f"{args.sessions} sessions x {args.uploads} uploads of {args.size} px PNGs to the Image page, while one "
          f"session sweeps {args.sweep_images} images on the Dataset page", flush=True)
    server, url = start_server(tmp)
    try:
        times, bad, failed, (start, during, rss), wall, still = asyncio.run(drive(args, url, server, folder, expected))
    finally:
        stop_server(server, tmp / "streamlit.log")
        shutil.rmtree(tmp, ignore_errors=True)
    total = args.sessions * args.uploads
    if times:
        print(f"{args.sessions} sessions x {args.uploads} uploads while a sweep ran ({wall:.0f} s in all): "
              f"upload-to-result median {statistics.median(times):.2f} s, worst {max(times):.2f} s; "
              f"answers ok {len(times) - len(bad)}/{total}")
    print(f"server RSS: {start:.0f} MiB at start, {during:.0f} MiB with the sweep going, peak "
          f"{max(rss, default=during):.0f} MiB, {rss[-1] if rss else during:.0f} MiB at the end; the sweep was "
          f"still running at the end: {'yes' if still else 'no (it finished first: give it more images)'}")
    for line in bad + failed:
        print("  " + line)
    return 1 if bad or failed or len(times) < total else 0


if __name__ == "__main__":
    sys.exit(main())
