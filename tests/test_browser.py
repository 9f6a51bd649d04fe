"""End to end in a real browser: the app served by `streamlit run app.py`, driven by Chromium.

What a person sees on each page: the home page's text; an uploaded image's overlays and its
"Tokens kept" metric (the number the library computes for that image); the Compare page's four
columns; a short uploaded clip analysed into a timeline chart; the Dataset page's curve over a
small folder. A full-page screenshot of each page goes to test-artifacts/ (gitignored) for a
person to look at.

Needs Debian's Chromium (/usr/bin/chromium; Playwright's own download cannot work offline);
without it the module is skipped.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (apt-get install chromium): the browser tests are skipped",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from ats_viz import ATSConfig, run_ats, synthetic  # noqa: E402
from ats_viz.data import read_image  # noqa: E402
from ats_viz.models import SAMPLES  # noqa: E402

START_S = 180  # the first page load imports torch and loads the model
SLOW_MS = 180_000  # a model run on a busy 2-core machine
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app as a user runs it, on a free port; always stopped afterwards."""
    tmp = tmp_path_factory.mktemp("server")
    port = free_port()
    log = open(tmp / "streamlit.log", "wb")
    env = {**os.environ, "ATS_VIZ_CACHE": str(tmp / "cache"), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"streamlit did not come up (exit {proc.poll()}):\n"
                            + (tmp / "streamlit.log").read_text(errors="replace")[-3000:])
            time.sleep(1)
        yield url, tmp
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
        text = (tmp / "streamlit.log").read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    # A tall window: Streamlit scrolls inside its own container, so the screenshot shows what fits.
    context = browser.new_context(viewport={"width": 1400, "height": 2400})
    context.set_default_timeout(SLOW_MS)
    pg = context.new_page()
    yield pg
    context.close()


def settle(page) -> None:
    """Wait until the script is not running and no spinner is left."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=SLOW_MS)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSpinner\"]')", timeout=SLOW_MS)


def shot(page, name: str) -> Path:
    """A screenshot of the whole page: the window grows to the height of Streamlit's scrolling main area."""
    settle(page)
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    if height > page.viewport_size["height"]:
        page.set_viewport_size({"width": page.viewport_size["width"], "height": min(int(height) + 40, 8000)})
        settle(page)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"browser-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def no_exception_box(page) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, boxes.first.inner_text()


def metric_values(page, label: str) -> list[str]:
    metrics = page.locator('[data-testid="stMetric"]').filter(has_text=label)
    return [m.locator('[data-testid="stMetricValue"]').inner_text().strip() for m in metrics.all()]


def images_loaded(page) -> int:
    """How many images in the main area have actually decoded (not broken links)."""
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid="stMain"] img')]
        .filter(i => i.complete && i.naturalWidth > 0).length""")


def expected_tokens(model, data: bytes, config: ATSConfig) -> str:
    with torch.no_grad():
        res = run_ats(model.net, model.prepare(read_image(data)), config)
    return f"{int(res.patch_counts[0, -1])} / {res.grid[0] * res.grid[1]}"


def png_bytes(seed) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic.sample(seed, label=2)[0]).save(buf, format="PNG")
    return buf.getvalue()


def test_home_page_says_what_ats_is(server, page):
    url, _ = server
    page.goto(url + "/")
    page.get_by_text("Adaptive Token Sampling, seen and measured").wait_for()
    page.get_by_text("inverse transform sampling", exact=False).first.wait_for()
    page.get_by_text("The model in use").wait_for()
    settle(page)
    links = page.locator('[data-testid="stMain"] a[data-testid^="stPageLink"]')
    page.wait_for_function("""() => document.querySelectorAll(
        '[data-testid="stMain"] a[data-testid^="stPageLink"]').length >= 3""")  # they may mount late
    names = [links.nth(i).inner_text().strip() for i in range(links.count())]
    assert {"Image", "Compare", "Video"} <= set(names), names
    no_exception_box(page)
    assert page.locator('[data-testid="stMainMenu"]').count()  # the menu is there...
    assert not page.locator('[data-testid="stAppDeployButton"]').count()  # ...Streamlit's "Deploy" is not
    shot(page, "home")
    links.nth(names.index("Image")).click()  # the card's link opens the page
    page.get_by_text("The tokens of one image, stage by stage").wait_for()
    assert page.url.rstrip("/").endswith("/Image")
    # The sidebar names every page, the home page as "Home" (Streamlit's own list said "app").
    nav = page.locator('[data-testid="stSidebar"] a[data-testid^="stPageLink"]')
    labels = [nav.nth(i).inner_text().strip().splitlines()[-1] for i in range(nav.count())]  # after the icon
    assert labels == ["Home", "Image", "Compare", "Video", "Dataset"]
    assert not page.locator('[data-testid="stSidebarNav"]').count()
    nav.nth(0).click()
    page.get_by_text("Adaptive Token Sampling, seen and measured").wait_for()


def test_image_page_upload_shows_overlays_and_the_token_count(server, page, model):
    url, _ = server
    data = png_bytes((9, 9))
    page.goto(url + "/Image")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        files=[{"name": "my-shapes.png", "mimeType": "image/png", "buffer": data}])
    page.get_by_text("my-shapes.png, as the model sees it").wait_for()
    page.locator('[data-testid="stMetric"]').filter(has_text="Tokens kept").first.wait_for()
    settle(page)
    values = metric_values(page, "Tokens kept")
    assert values == [expected_tokens(model, data, ATSConfig())]
    assert re.fullmatch(r"\d+ / 196", values[0])
    # the picture as the model sees it plus one overlay per ATS stage, all decoded
    stages = len(model.net.blocks) - len(model.net.blocks) // 4
    page.get_by_text("What each stage keeps").wait_for()
    assert images_loaded(page) >= 1 + stages
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 2
    no_exception_box(page)
    shot(page, "image")


def test_compare_page_shows_four_budgets(server, page, model):
    url, _ = server
    page.goto(url + "/Compare")
    page.get_by_text("Compare settings and methods").wait_for()
    metrics = page.locator('[data-testid="stMetric"]').filter(has_text="Tokens at the end")
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="stMetric"]')]
                 .filter(m => m.innerText.includes('Tokens at the end')).length === 4""", timeout=SLOW_MS)
    settle(page)
    assert metrics.count() == 4
    sample = sorted(p.name for p in SAMPLES.glob("*.png"))[0]
    data = (SAMPLES / sample).read_bytes()
    assert metric_values(page, "Tokens at the end") == [expected_tokens(model, data, ATSConfig(k=k))
                                                        for k in (None, 0.75, 0.5, 0.25)]
    assert images_loaded(page) >= 4
    no_exception_box(page)
    shot(page, "compare")


def test_video_page_analyses_an_uploaded_clip(server, page, tmp_path):
    url, _ = server
    clip = synthetic.write_video(tmp_path / "my-clip.mp4", seed=4, frames=6)
    page.goto(url + "/Video")
    page.get_by_text("Tokens over a video").wait_for()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(clip))
    page.get_by_text("my-clip.mp4").first.wait_for()
    settle(page)
    cap = page.get_by_role("spinbutton", name="Frames to analyse (at most)")
    cap.fill("3")
    cap.press("Enter")
    page.get_by_text(re.compile(r"\b3 frames\b")).first.wait_for()  # "Analysing one frame in 2: 3 frames."
    settle(page)
    page.get_by_role("button", name="Analyse").click()
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=SLOW_MS)
    page.get_by_text("Frame explorer").wait_for()
    settle(page)
    assert metric_values(page, "Frames analysed") == ["3"]
    # The timeline, found by its axis title: charts mount in their own time, so "the first
    # chart" can briefly be the frame explorer's heatmap.
    timeline = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="Patch tokens after the last block")
    timeline.first.locator(".main-svg").first.wait_for()
    no_exception_box(page)
    shot(page, "video")


def curve_points(model, folder: Path, configs: dict[str, ATSConfig]) -> dict[str, tuple[float, float]]:
    """(mean GFLOPs, top-1 %) of each setting on an ImageFolder, as the library computes them."""
    files = sorted(folder.glob("*/*.png"))
    x = torch.cat([model.prepare(read_image(f.read_bytes())) for f in files])
    y = torch.tensor([model.class_names.index(f.parent.name) for f in files])
    points = {}
    with torch.no_grad():
        for key, config in configs.items():
            res = run_ats(model.net, x, config)
            points[key] = (float(res.gflops.mean()), float((res.logits.argmax(1) == y).double().mean() * 100))
    return points


def test_dataset_page_draws_the_curve_of_a_small_set(server, page, model):
    if not (ROOT / "pages" / "4_Dataset.py").exists():
        pytest.skip("pages/4_Dataset.py is not there yet")
    url, tmp = server
    folder = synthetic.write_imagefolder(tmp / "small-set", per_class=1, seed=21)
    page.goto(url + "/Dataset")
    page.get_by_text("Accuracy against GFLOPs over a dataset").wait_for()
    page.get_by_text("A folder on this machine").click()
    box = page.get_by_role("textbox", name="Folder (ImageFolder: one subfolder per class)")
    box.fill(str(folder))
    box.press("Enter")
    ladder = page.get_by_role("textbox", name="ATS: K ladder")
    ladder.fill("98")
    ladder.press("Enter")
    page.get_by_text("10 images", exact=False).first.wait_for()
    settle(page)
    page.get_by_role("button", name="Evaluate").click()
    page.get_by_text("Done:", exact=False).first.wait_for(timeout=SLOW_MS)
    # The curve, found by its axis title (the per-class chart also plots top-1).
    curve = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="mean GFLOPs per image").first
    curve.locator(".main-svg").first.wait_for()
    settle(page)
    # What the user reads off the curve: each method's points, as plotted (plotly's own decoded data).
    plotted = {t["group"]: list(zip(t["x"], t["y"])) for t in curve.locator(".js-plotly-plot").first.evaluate(
        "gd => gd._fullData.map(t => ({group: t.legendgroup, x: Array.from(t.x), y: Array.from(t.y)}))")}
    assert {"full", "ats"} <= set(plotted), plotted
    want = curve_points(model, folder, {"full": ATSConfig(method="full"), "ats": ATSConfig(k=98)})
    for key in ("full", "ats"):  # one point each: the full model, and the one-value K ladder typed above
        assert len(plotted[key]) == 1, plotted
        (gflops, top1), = plotted[key]
        assert gflops == pytest.approx(want[key][0], rel=1e-6) and top1 == pytest.approx(want[key][1], abs=1e-6), \
            (key, plotted[key], want[key])
    assert plotted["ats"][0][0] < plotted["full"][0][0]  # ATS spends less than the full model
    no_exception_box(page)
    shot(page, "dataset")


def test_a_second_sweep_waits_its_turn_and_stop_leaves_the_queue(server, browser):
    """ATS_VIZ_MAX_JOBS unset: one sweep at a time. Stop in a real browser reruns the page (a fast
    rerun stops the waiting script), and the place it held is given back."""
    url, tmp = server
    folder = synthetic.write_imagefolder(tmp / "queue-set", per_class=20, seed=22)  # long enough to hold the slot
    contexts, pages = [], []
    for _ in range(2):
        contexts.append(browser.new_context(viewport={"width": 1400, "height": 1600}))
        contexts[-1].set_default_timeout(SLOW_MS)
        pg = contexts[-1].new_page()
        pg.goto(url + "/Dataset")
        pg.get_by_text("A folder on this machine").click()
        box = pg.get_by_role("textbox", name="Folder (ImageFolder: one subfolder per class)")
        box.fill(str(folder))
        box.press("Enter")
        pg.get_by_text("200 images", exact=False).first.wait_for()
        settle(pg)
        pages.append(pg)
    first, second = pages

    def stop(pg):  # the page's own Stop, not the one in Streamlit's header
        pg.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop", exact=True).click()

    try:
        first.get_by_role("button", name="Evaluate").click()
        first.get_by_text("image-settings", exact=False).first.wait_for()
        second.get_by_role("button", name="Evaluate").click()
        second.get_by_text("Queued: 1 job ahead of yours").wait_for()
        stop(second)
        second.get_by_text("Stopped while queued").wait_for()
        settle(second)
        second.get_by_role("button", name="Evaluate").click()
        second.get_by_text("Queued: 1 job ahead of yours").wait_for()  # not 2: the stopped place was given back
        stop(first)  # the running sweep ends: the queued one starts
        second.get_by_text("image-settings", exact=False).first.wait_for()
        stop(second)
        second.get_by_text("Stopped:", exact=False).first.wait_for()
        for pg in pages:
            no_exception_box(pg)
    finally:
        for ctx in contexts:
            ctx.close()
