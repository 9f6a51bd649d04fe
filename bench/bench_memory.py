"""Does the app survive many reruns? RSS after a few uploads against RSS after many.

A person uploads image after image on the Image page. Every upload runs the model twice (the
setting and the full model), draws overlays and charts, and caches the run; the caches are
bounded (st.cache_data(max_entries=64)), media files are replaced on each rerun, so memory
should level off after the first few uploads. This drives the Image page through N uploads of
different generated images in a row and prints the resident memory after the first W (the
warm-up: model loaded, caches and allocator pools filled) and after all N, and their ratio.
The goal is a ratio within 1.2.

Two ways to drive it:

* ``--mode apptest`` (default): Streamlit's AppTest, in this process, one session; RSS of
  this process. Quick, no browser needed.
* ``--mode browser``: the real server (``streamlit run app.py``) driven by Chromium through
  Playwright; RSS of the server process. Includes what AppTest skips: the upload manager,
  the media file store and the websocket's message cache.

Usage (from the repository root; on a shared machine, nice it):

    nice -n 15 python bench/bench_memory.py                       # 50 uploads, AppTest
    nice -n 15 python bench/bench_memory.py --mode browser        # 50 uploads, real server + Chromium
    nice -n 15 python bench/bench_memory.py --uploads 8 --warmup 3  # a quick check that it runs
    nice -n 15 python bench/bench_memory.py --size 1600           # larger uploads (1600 x 1600 px)
    nice -n 15 python bench/bench_memory.py --fresh               # a new session for every upload (AppTest)

It prints one line per upload (``--quiet``: every tenth) and ends with

    RSS after 5 uploads: ... MiB; after 50: ... MiB; ratio 1.03 (goal <= 1.20): OK

and exits 0 (1 with ``--strict`` when the ratio misses the goal).
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ats_viz import synthetic  # noqa: E402

GOAL = 1.20


def rss_mib(pid: int | None = None, children: bool = False) -> float:
    """Resident memory now (not the peak) of ``pid`` (default: this process), in MiB."""
    pids = [pid or os.getpid()]
    if children:
        pids += _descendants(pids[0])
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    if total == 0 and pid is None:  # not Linux: the peak is the best there is
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return total / 1024


def _descendants(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out += [int(d.name), *_descendants(int(d.name))]
    return out


def stop_server(server: subprocess.Popen, log: Path) -> None:
    """Stop a server started in its own process group, then say if its log holds a traceback."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    text = log.read_text(errors="replace") if log.exists() else ""
    if "Traceback" in text:
        print("the server logged a traceback:\n" + text[-3000:], file=sys.stderr)


def image(i: int, size: int) -> bytes:
    """A different picture each time: a shapes sample, resized to ``size`` if asked."""
    arr, _ = synthetic.sample((1234, i))
    img = Image.fromarray(arr)
    if size != arr.shape[0]:
        img = img.resize((size, size), Image.BICUBIC)
        noise = np.random.default_rng(i).integers(0, 8, (size, size, 3), dtype=np.uint8)
        img = Image.fromarray(np.asarray(img) ^ noise)  # so no two uploads compress alike
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- AppTest


def run_apptest(args: argparse.Namespace) -> list[float]:
    from streamlit.testing.v1 import AppTest

    def new_session():
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).switch_page("pages/1_Image.py")
        at.run()
        if at.exception:
            raise SystemExit(f"the Image page failed: {at.exception[0].value}")
        return at

    at = new_session()
    rss = []
    for i in range(args.uploads):
        if args.fresh and i:
            at = new_session()
        name = f"upload-{i:03d}.png"
        t0 = time.perf_counter()
        at.file_uploader(key="image_upload").set_value((name, image(i, args.size), "image/png")).run()
        if at.exception or at.error:
            raise SystemExit(f"upload {i} failed: {[e.value for e in (*at.exception, *at.error)]}")
        tokens = next(m.value for m in at.metric if m.label == "Tokens kept")
        gc.collect()
        rss.append(rss_mib())
        report(args, i, rss[-1], time.perf_counter() - t0, tokens)
    return rss


# ---------------------------------------------------------------------------- real server + browser


def run_browser(args: argparse.Namespace) -> list[float]:
    from playwright.sync_api import sync_playwright

    chromium = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    if chromium is None:
        raise SystemExit("--mode browser needs Chromium (apt-get install chromium)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="ats-viz-bench-"))
    env = {**os.environ, "ATS_VIZ_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
    log = open(tmp / "streamlit.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address",
         "127.0.0.1", "--server.port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    rss = []
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("streamlit did not start:\n" + (tmp / "streamlit.log").read_text()[-2000:])
                time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(600_000)
            page.goto(url + "/Image")
            for i in range(args.uploads):
                name = f"upload-{i:03d}.png"
                t0 = time.perf_counter()
                page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
                    files=[{"name": name, "mimeType": "image/png", "buffer": image(i, args.size)}])
                page.get_by_text(f"{name}, as the model sees it").wait_for()
                page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
                metric = page.locator('[data-testid="stMetric"]').filter(has_text="Tokens kept")
                tokens = metric.locator('[data-testid="stMetricValue"]').inner_text()
                rss.append(rss_mib(server.pid, children=True))
                report(args, i, rss[-1], time.perf_counter() - t0, tokens)
            browser.close()
    finally:
        log.close()
        stop_server(server, tmp / "streamlit.log")
        shutil.rmtree(tmp, ignore_errors=True)
    return rss


# ---------------------------------------------------------------------------- report


def report(args: argparse.Namespace, i: int, rss: float, seconds: float, tokens: str) -> None:
    if not args.quiet or (i + 1) % 10 == 0 or i + 1 in (args.warmup, args.uploads):
        print(f"upload {i + 1:3d}: RSS {rss:7.1f} MiB  ({seconds:5.2f} s, tokens kept {tokens})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["apptest", "browser"], default="apptest")
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5, help="the uploads after which the baseline is taken")
    parser.add_argument("--size", type=int, default=224, help="side of the uploaded images in pixels")
    parser.add_argument("--fresh", action="store_true", help="a new session for every upload (AppTest mode)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--strict", action="store_true", help=f"exit 1 when the ratio exceeds {GOAL}")
    args = parser.parse_args()
    if not 1 <= args.warmup < args.uploads:
        parser.error("need 1 <= --warmup < --uploads")
    os.environ.setdefault("ATS_VIZ_CACHE", tempfile.mkdtemp(prefix="ats-viz-cache-"))
    print(f"{args.mode}: {args.uploads} uploads of {args.size} x {args.size} PNGs on the Image page", flush=True)
    t0 = time.perf_counter()
    rss = run_apptest(args) if args.mode == "apptest" else run_browser(args)
    base, end = rss[args.warmup - 1], rss[-1]
    ratio = end / base
    verdict = "OK" if ratio <= GOAL else "GROWS"
    print(f"RSS after {args.warmup} uploads: {base:.1f} MiB; after {args.uploads}: {end:.1f} MiB; "
          f"ratio {ratio:.2f} (goal <= {GOAL:.2f}): {verdict}  [peak {max(rss):.1f} MiB, "
          f"{time.perf_counter() - t0:.0f} s in all]")
    tail = rss[args.warmup - 1:]
    if len(tail) >= 3:
        slope = np.polyfit(np.arange(len(tail)), tail, 1)[0]
        print(f"trend after the warm-up: {slope:+.2f} MiB per upload")
    return 1 if args.strict and ratio > GOAL else 0


if __name__ == "__main__":
    sys.exit(main())
