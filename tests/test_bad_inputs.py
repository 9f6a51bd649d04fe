"""Every entry point fed what people give by mistake or malice: a sentence, nothing run, nothing strewn.

One table per kind of input (images, videos, checkpoints, dataset folders, ZIP archives,
settings and URL query parameters, command-line flags), each row an entry point and an input
with the sentence a person must read. The entry points are the library, the pages (through
Streamlit's AppTest) and the command line (a real ``python -m ats_viz`` process: exit code 2
and an ``error:`` sentence, never a traceback, never a crash).

Around every test: a pickle whose unpickling would write a marker file must leave no marker,
and nothing may be written into the repository (the cache and temp folders point into
tmp_path). tests/test_models.py, test_pages.py, test_video.py and test_evaluate.py already
check each entry point's main refusals; this module adds the breadth across entry points.

"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from conftest import ROOT, open_app
from ats_viz import InputError, synthetic, video
from ats_viz.data import extract_zip, load_dataset, read_image
from ats_viz.evaluate import make_settings, run_sweep
from ats_viz.models import load_model
from ats_viz.results import RESULT_FILES

ARCH = "deit_tiny_patch16_224"
CLASSES = list(synthetic.CLASSES)
# A well-formed PNG (valid chunks and CRCs) whose header claims 20000 x 20000 pixels, 400 MP,
# with a few bytes of pixel data: it must be refused from its header, before any decoding.


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png_header(w: int, h: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00")
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _chunk(b"IEND", b""))


BIG = png_header(20000, 20000)  # past Pillow's own bomb guard too
OVER = png_header(8000, 6000)  # 48 MP: under Pillow's guard, over the app's 40 MP limit
NON_UTF8 = os.fsdecode(b"bad\xff")  # a name no UTF-8 decoder accepts (surrogate-escaped on Linux)

# ---------------------------------------------------------------------------- the inputs


class Payload:
    """Unpickling this writes ``target``: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"head.weight": Payload(marker), "pos_embed": Payload(marker)})


def png(arr: np.ndarray | None = None, fmt: str = "PNG") -> bytes:
    arr = synthetic.sample(4)[0] if arr is None else arr
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def mp4() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return synthetic.write_video(Path(tmp) / "clip.mp4", seed=1, frames=4).read_bytes()


@functools.lru_cache(maxsize=None)
def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model(ARCH).state_dict()


def safetensors_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        save_file(tiny_state_dict(), str(Path(tmp) / "w.safetensors"))
        return (Path(tmp) / "w.safetensors").read_bytes()


def pth_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


GOOD = {"image": lambda: png(), "video": mp4, "ckpt": safetensors_bytes}
EXT = {"image": ".png", "video": ".mp4", "ckpt": ".safetensors"}


def make_input(kind: str, what: str, folder: Path, marker: Path) -> Path:
    """Write the input ``what`` for an entry point taking a ``kind`` file; return its path."""
    ext = EXT[kind]
    path = folder / f"{what}{ext}"
    if what == "empty":
        path.write_bytes(b"")
    elif what == "text":
        path.write_text("these are my notes, not a file of this kind\n" * 5)
    elif what == "truncated":
        path.write_bytes(GOOD[kind]()[:300])
    elif what == "huge":
        path.write_bytes(BIG)
    elif what == "over-limit":
        path.write_bytes(OVER)
    elif what == "pickle":
        path.write_bytes(evil_pickle(marker))
    elif what == "torch-pickle":  # torch.save's ZIP format with code inside
        path = folder / "evil.pt"
        path.write_bytes(pth_bytes({"head.weight": Payload(marker)}))
    elif what == "pickle-bin":
        path = folder / "evil.bin"
        path.write_bytes(evil_pickle(marker))
    elif what == "image":
        path.write_bytes(png())
    elif what == "image-as-png":
        path = folder / "photo.png"
        path.write_bytes(png())
    elif what == "video":
        path.write_bytes(mp4())
    elif what == "missing":
        path = folder / "nowhere" / f"absent{ext}"
    elif what == "directory":
        path.mkdir()
    elif what == "nan-head":  # well-formed weights whose every output is NaN
        sd = dict(tiny_state_dict())
        sd["head.weight"] = torch.full_like(sd["head.weight"], float("nan"))
        save_file(sd, str(path))
    elif what == "non-utf8":
        path = folder / f"{NON_UTF8}{ext}"
        path.write_bytes(GOOD[kind]() if kind != "ckpt" else pth_bytes(tiny_state_dict()))
        if kind == "ckpt":
            path = path.rename(path.with_suffix(".pth"))
    else:
        raise AssertionError(what)
    return path


# ---------------------------------------------------------------------------- the sandbox

NOISE_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "test-artifacts", "assets"}


def repo_files() -> set[str]:
    """Every file in the repository but source (others edit it concurrently) and tool caches."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in NOISE_DIRS]
        for f in filenames:
            if not f.endswith((".py", ".md", ".swp", "~")):
                out.add(os.path.relpath(os.path.join(dirpath, f), ROOT))
    return out


@pytest.fixture(autouse=True)
def sandbox(tmp_path, monkeypatch):
    """Cache and temp files go to tmp_path; afterwards no marker, no new file in the repo."""
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("ATS_VIZ_CACHE", str(cache))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    inputs = tmp_path / "in"
    inputs.mkdir()
    before = repo_files()
    box = SimpleNamespace(marker=tmp_path / "PWNED", cache=cache, tmp=tmp, inputs=inputs, root=tmp_path)
    yield box
    assert not box.marker.exists(), "a pickle was unpickled: its code ran"
    new = repo_files() - before
    assert not new, f"written into the repository: {sorted(new)}"


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return synthetic.write_imagefolder(tmp_path_factory.mktemp("ds") / "shapes", per_class=1, seed=5)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return synthetic.write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", seed=2, frames=4)


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        fn(*args, **kwargs)
    return str(err.value)


# ---------------------------------------------------------------------------- the command line


def run_cli(args: list[str], box, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATS_VIZ_CACHE": str(box.cache), "TMPDIR": str(box.tmp),
           "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run([sys.executable, "-m", "ats_viz", *args], cwd=ROOT, env=env, capture_output=True,
                          timeout=timeout)
    proc.out = proc.stdout.decode("utf-8", "replace")
    proc.err = proc.stderr.decode("utf-8", "replace")
    return proc


def cli_refusal(args: list[str], box) -> str:
    """Exit code 2, an 'error: ' sentence on stderr, no traceback, no crash; returns stderr."""
    proc = run_cli(args, box)
    both = proc.out + proc.err
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}:\n{both[-2000:]}"
    assert "Traceback" not in both and "Fatal Python error" not in both, both[-3000:]
    assert proc.returncode == 2, f"exit code {proc.returncode}:\n{both[-2000:]}"
    assert "error: " in proc.err, proc.err[-2000:]
    return proc.err


# ---------------------------------------------------------------------------- pages


def errors(at: AppTest) -> str:
    return " | ".join(e.value for e in at.error)


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def tokens_kept(at: AppTest) -> list[str]:
    return [m.value for m in at.metric if m.label == "Tokens kept"]


def upload(at: AppTest, key: str, name: str, data: bytes) -> AppTest:
    at.file_uploader(key=key).set_value((name, data, "application/octet-stream")).run()
    return at


# ============================================================================ images

IMAGE_ROWS = [
    ("empty", "is empty (0 bytes)"),
    ("text", "is not an image we can read"),
    ("truncated", "looks truncated or corrupt"),
    ("huge", "more than the 40 megapixel limit"),
    ("over-limit", "is 8000 x 6000 pixels, more than the 40 megapixel limit"),
    ("pickle", "is not an image we can read"),
    ("video", "is not an image we can read"),
]


@pytest.mark.parametrize("what, says", IMAGE_ROWS)
def test_image_library(sandbox, what, says):
    path = make_input("image", what, sandbox.inputs, sandbox.marker)
    msg = refusal(read_image, path.read_bytes(), path.name)
    assert says in msg and path.name in msg


@pytest.mark.parametrize("name, what, says", [
    ("evil.png", "pickle", "is not an image we can read"),
    ("clip.png", "video", "is not an image we can read"),
    ("cut.png", "truncated", "looks truncated or corrupt"),
])
def test_image_page_upload(monkeypatch, sandbox, name, what, says):
    data = make_input("image", what, sandbox.inputs, sandbox.marker).read_bytes()
    at = upload(open_app(monkeypatch, "1_Image.py"), "image_upload", name, data)
    no_exception(at)
    assert says in errors(at) and name in errors(at)
    assert not tokens_kept(at)


@pytest.mark.parametrize("name, data", [("notes.txt", b"hello"), ("clip.mp4", None), ("weights.pth", b"\x80\x04")])
def test_image_page_never_processes_a_disallowed_extension(monkeypatch, sandbox, name, data):
    """The browser filters extensions; a client that bypasses it is stopped by Streamlit itself."""
    at = upload(open_app(monkeypatch, "1_Image.py"), "image_upload", name, data if data is not None else mp4())
    assert at.exception and "extension" in at.exception[0].value.lower()
    assert not tokens_kept(at)


def _mode_image(mode: str) -> bytes:
    arr = synthetic.sample(6)[0]
    rgb = Image.fromarray(arr)
    buf = io.BytesIO()
    if mode == "animated GIF":
        frames = [rgb.convert("P"), Image.fromarray(arr[::-1].copy()).convert("P")]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    elif mode == "multi-page TIFF":
        rgb.save(buf, "TIFF", save_all=True, append_images=[rgb.convert("L")])
    elif mode == "PA":
        rgb.convert("P").convert("PA").save(buf, "TIFF")
    elif mode == "LAB":
        rgb.convert("LAB").save(buf, "TIFF")
    elif mode == "I;16 TIFF":
        Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(buf, "TIFF")
    elif mode == "16-bit RGBA PNG (as 8-bit)":
        rgb.convert("RGBA").save(buf, "PNG")
    else:
        rgb.convert(mode).save(buf, "TIFF")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["1", "LA", "I", "F", "YCbCr", "LAB", "RGBX", "PA", "I;16 TIFF",
                                  "animated GIF", "multi-page TIFF"])
def test_odd_image_modes_decode_to_rgb_of_the_same_size(mode):
    img = read_image(_mode_image(mode), f"odd-{mode}")
    assert img.mode == "RGB" and img.size == (224, 224)
    assert np.asarray(img).std() > 0  # a picture, not a blank


@pytest.mark.parametrize("orientation, size, corner", [
    (1, (96, 64), "top-left"),  # as stored
    (3, (96, 64), "bottom-right"),  # upside down
    (6, (64, 96), "top-right"),  # a phone held upright: stored turned a quarter to the left
    (8, (64, 96), "bottom-left"),
])
def test_phone_photos_are_read_upright(phone_photo, red_corner, orientation, size, corner):
    img = read_image(phone_photo(orientation), f"phone-{orientation}.jpg")
    assert img.size == size
    assert red_corner(img) == corner


# ============================================================================ videos

VIDEO_LIBRARY_ROWS = [
    ("empty", "is empty (0 bytes)"),
    ("text", "is not a video that can be read"),
    ("truncated", "is an MP4/MOV file, but its video cannot be decoded"),
    ("huge", "is an image, not a video"),
    ("pickle", "is not a video that can be read"),
    ("image", "is an image, not a video"),
    ("missing", "No video file at"),
    ("directory", "No video file at"),
    # ("non-utf8", ...) is not called in-process: OpenCV crashes the interpreter (see the CLI row).
]


@pytest.mark.parametrize("what, says", VIDEO_LIBRARY_ROWS)
def test_video_library(sandbox, what, says):
    path = make_input("video", what, sandbox.inputs, sandbox.marker)
    assert says in refusal(video.probe, path)


def test_video_analyse_refuses_before_any_model_run(sandbox, model):
    path = make_input("video", "pickle", sandbox.inputs, sandbox.marker)
    from ats_viz import ATSConfig

    assert "is not a video that can be read" in refusal(video.analyse_video, model, path, ATSConfig())


@pytest.mark.parametrize("what, says", [
    ("empty", "is empty (0 bytes)"),
    ("pickle", "is not a video that can be read"),
    ("image", "is an image, not a video"),
    ("missing", "No video file at"),
    ("directory", "No video file at"),
    pytest.param("non-utf8", ""),
])
def test_video_command_line(sandbox, what, says):
    path = make_input("video", what, sandbox.inputs, sandbox.marker)
    assert says in cli_refusal(["video", str(path), "--max-frames", "1", "--csv", str(sandbox.root / "o.csv")],
                               sandbox)
    assert not (sandbox.root / "o.csv").exists()


@pytest.mark.parametrize("name, what, says", [
    ("empty.mp4", "empty", "is empty (0 bytes)"),
    ("evil.mp4", "pickle", "is not a video that can be read"),
    ("huge.mp4", "huge", "is an image, not a video"),
    ("cut.mp4", "truncated", "its video cannot be decoded"),
])
def test_video_page_upload(monkeypatch, sandbox, name, what, says):
    data = make_input("video", what, sandbox.inputs, sandbox.marker).read_bytes()
    at = upload(open_app(monkeypatch, "3_Video.py"), "video_file", name, data)
    no_exception(at)
    assert says in errors(at) and f"'{name}'" in errors(at)  # the upload's own name, not the cache's
    assert not at.get("plotly_chart")
    # bytes OpenCV cannot read are not kept: not in the cache, not in the temp folder
    assert not list((sandbox.cache / "uploads").glob("*"))
    assert not [p for p in Path(tempfile.gettempdir()).glob("ats-viz-*") if not p.is_relative_to(sandbox.tmp)]


# ============================================================================ checkpoints


def load_ckpt(path: Path):
    return load_model(str(path), arch=ARCH)


@pytest.mark.parametrize("what, says", [
    ("empty", "is empty (0 bytes)"),
    ("text", "could not be read as a checkpoint"),
    ("truncated", "could not be read as a checkpoint"),
    ("huge", "could not be read as a checkpoint"),
    ("pickle", "could not be read as a checkpoint"),  # a pickle dressed as .safetensors
    ("pickle-bin", "refused: loading it could run code"),
    ("torch-pickle", "refused: loading it could run code"),
    ("image-as-png", "is not a checkpoint: give a .safetensors, .pth or .pt file"),
    ("missing", "No checkpoint file at"),
    ("directory", "No checkpoint file at"),
    ("nan-head", "gives outputs that are not numbers (NaN or infinite) on a plain input image; 1 of its weight "
                 "tensors hold NaN or infinite values (head.weight)"),
])
def test_checkpoint_library(sandbox, what, says):
    path = make_input("ckpt", what, sandbox.inputs, sandbox.marker)
    assert says in refusal(load_ckpt, path)


def test_checkpoint_with_a_non_utf8_name_loads(sandbox):
    path = make_input("ckpt", "non-utf8", sandbox.inputs, sandbox.marker)
    m = load_ckpt(path)
    assert torch.equal(m.net.state_dict()["pos_embed"], tiny_state_dict()["pos_embed"])


@pytest.mark.parametrize("what, says", [
    ("pickle-bin", "refused: loading it could run code"),
    ("torch-pickle", "refused: loading it could run code"),
    ("directory", "No checkpoint file at"),
    ("nan-head", "gives outputs that are not numbers (NaN or infinite)"),
])
def test_checkpoint_command_line(sandbox, small_set, what, says):
    path = make_input("ckpt", what, sandbox.inputs, sandbox.marker)
    err = cli_refusal(["evaluate", "--model", str(path), "--arch", ARCH, "--data", str(small_set),
                       "--out", str(sandbox.root / "out")], sandbox)
    assert says in err
    assert not (sandbox.root / "out").exists()


@pytest.mark.parametrize("what, says", [
    ("pickle-bin", "refused: loading it could run code"),
    ("torch-pickle", "refused: loading it could run code"),
    ("directory", "No checkpoint file at"),
    ("text", "could not be read as a checkpoint"),
    ("nan-head", "gives outputs that are not numbers (NaN or infinite)"),
])
def test_checkpoint_named_in_the_url(monkeypatch, sandbox, what, says):
    """?source=file&ckpt=PATH makes the server read PATH: it must be read as weights or refused."""
    path = make_input("ckpt", what, sandbox.inputs, sandbox.marker)
    at = open_app(monkeypatch, "1_Image.py", {"source": "file", "ckpt": str(path), "arch": ARCH})
    no_exception(at)
    assert says in errors(at)
    assert not tokens_kept(at)


def nan_for_white(loaded):
    """A copy of ``loaded`` whose outputs are NaN for a white image only (an overflow a model
    may meet on a few inputs), and that white image as PNG bytes."""
    import copy
    import dataclasses

    white = png(np.full((64, 64, 3), 255, np.uint8))
    level = float(loaded.prepare(read_image(white)).mean()) - 0.05
    net = copy.deepcopy(loaded.net)

    def hook(module, args, out):
        bright = args[0].mean(dim=(1, 2, 3)) > level
        return torch.where(bright.view(-1, *[1] * (out.ndim - 1)), torch.full_like(out, float("nan")), out)

    net.patch_embed.register_forward_hook(hook)
    return dataclasses.replace(loaded, net=net), white


def test_an_image_whose_outputs_are_not_numbers_is_never_shown_as_a_prediction(monkeypatch, sandbox, model):
    """Issue 24, item 8, on the Image page: a sentence, not NaN probabilities."""
    monkeypatch.syspath_prepend(str(ROOT))
    import ui

    odd, white = nan_for_white(model)
    monkeypatch.setattr(ui, "get_model", lambda *args: odd)
    at = open_app(monkeypatch, "1_Image.py")
    assert not at.error and tokens_kept(at)  # the sample image is fine
    upload(at, "image_upload", "white.png", white)
    no_exception(at)
    assert "The model's outputs for this image are not numbers (NaN or infinite) under ATS" in errors(at)
    assert not tokens_kept(at) and "nan" not in " ".join(str(m.value).lower() for m in at.metric)


# ============================================================================ dataset folders


def bad_images_folder(root: Path, marker: Path) -> Path:
    """A class folder of files that only look like images."""
    folder = root / "shapes" / "circle"
    folder.mkdir(parents=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    (folder / "cut.png").write_bytes(png()[:300])
    (folder / "huge.png").write_bytes(BIG)
    (folder / "evil.png").write_bytes(evil_pickle(marker))
    return root / "shapes"


def non_utf8_folder(root: Path, small_set: Path) -> Path:
    out = root / "mixed"
    shutil.copytree(small_set, out)
    first = sorted((out / "circle").glob("*.png"))[0]
    first.rename(first.with_name(f"{NON_UTF8}.png"))
    return out


@pytest.mark.parametrize("what, says", [
    ("missing", "No folder at"),
    ("a file", "No folder at"),
    ("empty folder", "is empty"),
    ("flat folder", "no class subfolders"),
])
def test_dataset_library_and_command_line(sandbox, what, says):
    path = sandbox.inputs / "data"
    if what == "a file":
        path.write_bytes(png())
    elif what == "empty folder":
        path.mkdir()
    elif what == "flat folder":
        path.mkdir()
        (path / "a.png").write_bytes(png())
    assert says in refusal(load_dataset, path, CLASSES)
    assert says in cli_refusal(["evaluate", "--data", str(path), "--out", str(sandbox.root / "out")], sandbox)
    assert not (sandbox.root / "out").exists()


def test_unreadable_images_in_a_dataset_are_skipped_each_with_its_sentence(sandbox, model):
    folder = bad_images_folder(sandbox.inputs, sandbox.marker)
    good = folder / "circle" / "good.png"
    good.write_bytes(png())
    ds = load_dataset(folder, model.class_names)
    result = run_sweep(model, ds, make_settings({"ats": [98]}), batch=4, cache=sandbox.cache)
    why = dict(result.skipped)
    assert why.keys() == {"circle/empty.png", "circle/notes.png", "circle/cut.png", "circle/huge.png",
                          "circle/evil.png"}
    assert "is empty (0 bytes)" in why["circle/empty.png"]
    assert "is not an image we can read" in why["circle/notes.png"] and "not an image" in why["circle/evil.png"]
    assert "truncated or corrupt" in why["circle/cut.png"]
    assert "megapixel limit" in why["circle/huge.png"]
    assert list(result.per_image()["image"].unique()) == ["circle/good.png"]


def test_images_whose_outputs_are_not_numbers_are_skipped_with_a_reason(sandbox, model, small_set):
    """Issue 24, item 8: an image whose logits are NaN was scored (its argmax, class 0, NaN confidence)."""
    odd, white = nan_for_white(model)
    folder = sandbox.inputs / "set"
    shutil.copytree(small_set, folder)
    (folder / "circle" / "white.png").write_bytes(white)
    ds = load_dataset(folder, model.class_names)
    for cache in (sandbox.cache, sandbox.cache):  # computed, then read back from the cache
        result = run_sweep(odd, ds, make_settings({"ats": [98], "tome": [8]}), batch=4, cache=cache)
        why = dict(result.skipped)
        assert list(why) == ["circle/white.png"]
        assert why["circle/white.png"].startswith("the model's outputs for it are not numbers (NaN or infinite) under")
        table = result.per_image()
        assert "circle/white.png" not in set(table["image"]) and len(table) == 3 * 10
        assert table["confidence"].notna().all()


def test_a_non_utf8_file_name_in_a_dataset(sandbox, model, small_set):
    ds = load_dataset(non_utf8_folder(sandbox.inputs, small_set), model.class_names)
    result = run_sweep(model, ds, make_settings({"ats": [98]}), batch=8, cache=None)
    table = result.per_image()
    assert len(table) + len(result.skipped) * 2 == 2 * len(ds.items)


def test_a_non_utf8_file_name_in_a_dataset_command_line(sandbox, small_set):
    proc = run_cli(["evaluate", "--data", str(non_utf8_folder(sandbox.inputs, small_set)), "--k", "98",
                    "--methods", "ats", "--out", str(sandbox.root / "out")], sandbox)
    assert "Traceback" not in proc.err and proc.returncode in (0, 2), proc.err[-2000:]


def test_a_dataset_of_only_unreadable_images_is_refused(sandbox):
    folder = bad_images_folder(sandbox.inputs, sandbox.marker)
    err = cli_refusal(["evaluate", "--data", str(folder), "--k", "98", "--methods", "ats",
                       "--out", str(sandbox.root / "out")], sandbox)
    assert "could be read" in err or "no readable" in err.lower()


@pytest.mark.parametrize("what, says", [
    ("a file", "No folder at"),
    ("empty folder", "is empty"),
    ("CSV that is a folder", "No CSV file at"),
    ("CSV naming files outside", "The CSV names 2 file(s) that are not in"),
    ("CSV not UTF-8", "is not a UTF-8 text file"),
    ("CSV giving a file two labels", "two labels: 'circle' on line 1 and 'square' on line 2"),
])
def test_dataset_page_folder(monkeypatch, sandbox, small_set, what, says):
    folder, csv = str(small_set), ""
    if what == "a file":
        folder = str(sandbox.inputs / "x.png")
        Path(folder).write_bytes(png())
    elif what == "empty folder":
        folder = str(sandbox.inputs)
    elif what == "CSV that is a folder":
        csv = str(sandbox.inputs)
    else:
        path = sandbox.inputs / "labels.csv"
        if what == "CSV naming files outside":
            path.write_text("/etc/passwd,circle\n../../../../etc/hostname,circle\n")
        elif what == "CSV giving a file two labels":
            first = sorted((small_set / "circle").glob("*.png"))[0].relative_to(small_set).as_posix()
            path.write_text(f"{first},circle\n./{first},square\n")
        else:
            path.write_bytes("circle/ä.png,circle\n".encode("latin-1"))
        csv = str(path)
    at = open_app(monkeypatch, "4_Dataset.py")
    at.radio(key="ds_source").set_value("folder").run()
    at.text_input(key="ds_folder").set_value(folder)
    at.text_input(key="ds_csv_path").set_value(csv).run()
    no_exception(at)
    assert says in errors(at)
    assert not at.get("plotly_chart")


# ============================================================================ labels CSVs
# A CSV that names one file twice: the file is the resolved one whatever the spelling (results
# key by it), so 'a.png', './a.png', 'x/../a.png' and a link to it are one file. Two labels for
# it are refused with both lines; the same label again counts once.


def csv_folder(root: Path, small_set: Path) -> tuple[Path, str, str]:
    """A copy of the small set with a link to its first circle; that circle's and a square's names."""
    data = root / "data"
    shutil.copytree(small_set, data)
    a, b = (sorted((data / c).glob("*.png"))[0].relative_to(data).as_posix() for c in ("circle", "square"))
    (data / "link.png").symlink_to(data / a)
    return data, a, b


CSV_ROWS = [
    ("one file, two labels", "{a},circle\n{a},square\n{b},square\n",
     "gives '{a}' two labels: 'circle' on line 1 and 'square' on line 2."),
    ("two spellings", "{a},circle\n./{a},square\n{b},square\n",
     "gives '{a}' two labels: 'circle' on line 1 and 'square' on line 2 (written '{a}' and './{a}')."),
    ("a detour, after a header", "filename,label\n{a},circle\n{b},square\nsquare/../{a},triangle\n",
     "'circle' on line 2 and 'triangle' on line 4 (written '{a}' and 'square/../{a}')."),
    ("a link to it", "{a},circle\n{b},square\nlink.png,square\n",
     "'circle' on line 1 and 'square' on line 3 (written '{a}' and 'link.png')."),
]


@pytest.mark.parametrize("what, text, says", CSV_ROWS, ids=[r[0] for r in CSV_ROWS])
def test_a_csv_giving_one_file_two_labels_is_refused(sandbox, small_set, what, text, says):
    data, a, b = csv_folder(sandbox.inputs, small_set)
    labels = sandbox.inputs / "labels.csv"
    labels.write_text(text.format(a=a, b=b))
    msg = refusal(load_dataset, data, CLASSES, labels)
    assert "The CSV 'labels.csv'" in msg and says.format(a=a) in msg, msg


@pytest.mark.parametrize("what, text, says", CSV_ROWS[:2], ids=[r[0] for r in CSV_ROWS[:2]])
def test_a_csv_giving_one_file_two_labels_command_line(sandbox, small_set, what, text, says):
    data, a, b = csv_folder(sandbox.inputs, small_set)
    labels = sandbox.inputs / "dup.csv"
    labels.write_text(text.format(a=a, b=b))
    err = cli_refusal(["evaluate", "--data", str(data), "--csv", str(labels), "--methods", "ats", "--k", "0.5",
                       "--out", str(sandbox.root / "out")], sandbox)
    assert says.format(a=a) in err
    assert not (sandbox.root / "out").exists()


def test_a_file_named_twice_with_one_label_counts_once(sandbox, small_set):
    data, a, b = csv_folder(sandbox.inputs, small_set)
    labels = sandbox.inputs / "labels.csv"
    labels.write_text(f"{a},circle\n./{a},circle\nlink.png,circle\n{b},square\n{b},square\n")
    ds = load_dataset(data, CLASSES, labels)
    assert [it.name for it in ds.items] == [a, b] and ds.found == 2 and ds.notes() == []


def test_a_link_between_class_folders_is_one_image(sandbox, small_set):
    """An ImageFolder whose class folder links to another image of the set: the same rule."""
    data, a, _ = csv_folder(sandbox.inputs, small_set)
    (data / "link.png").unlink()
    (data / "circle" / "again.png").symlink_to(data / a)  # the same class: counted once
    ds = load_dataset(data, CLASSES)
    assert len(ds.items) == ds.found == 10 and ds.notes() == []
    (data / "circle" / "again.png").unlink()
    (data / "square" / "odd.png").symlink_to(data / a)  # another class: which is right is the person's call
    msg = refusal(load_dataset, data, CLASSES)
    assert f"'{a}' is in '{data}' twice with two labels: 'circle' (as '{a}') and 'square' (as 'square/odd.png')" in msg


# ============================================================================ outputs
# What cannot be written is found before any image is run: the results folder is refused
# (the FLAG_ROWS below, test_evaluate.py and test_video.py); a cache that cannot be written
# costs one warning and the caching, never the run.


@pytest.mark.parametrize("where, says", [
    ("afile", "'{cache}' is a file, not a folder"),
    ("/proc/ats-viz-cache", "nothing can be made there"),
])
def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_run(sandbox, small_set, where, says):
    (sandbox.inputs / "afile").write_text("not a folder")
    cache, out = sandbox.inputs / where, sandbox.root / "out"
    proc = run_cli(["evaluate", "--data", str(small_set), "--methods", "ats", "--k", "0.5", "--cache", str(cache),
                    "--out", str(out)], sandbox)
    assert proc.returncode == 0 and "Traceback" not in proc.err, proc.err[-2000:]
    warning = f"The sweep cache folder {cache} cannot be written ({says.format(cache=cache)}"
    assert warning in proc.err and proc.err.count("cannot be written") == 1, proc.err[-2000:]
    assert "this sweep runs without caching." in proc.err
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    assert (sandbox.inputs / "afile").read_text() == "not a folder" and not sandbox.cache.exists()


# ============================================================================ ZIP archives


def zip_bytes(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def bomb_zip() -> bytes:
    """A small archive whose directory claims 4.29 GB uncompressed."""
    data = bytearray(zip_bytes({"shapes/circle/a.png": png()}))
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = struct.pack("<I", 0xFFFFFFF0)  # uncompressed size in the central directory
    return bytes(data)


def bad_crc_zip() -> bytes:
    data = bytearray(zip_bytes({"shapes/circle/a.png": png(), "shapes/square/b.png": png()}))
    i = data.find(b"IDAT")  # inside the first member's stored bytes
    data[i + 20] ^= 0xFF
    return bytes(data)


ZIP_ROWS = [
    ("empty", lambda m: b"", "is not a ZIP archive we can read"),
    ("text", lambda m: b"PK but not really a zip", "is not a ZIP archive we can read"),
    ("truncated", lambda m: zip_bytes({"shapes/circle/a.png": png()})[:200], "is not a ZIP archive we can read"),
    ("pickle", lambda m: evil_pickle(m), "is not a ZIP archive we can read"),
    ("escaping paths only", lambda m: zip_bytes({"../../escaped.png": png(), "/tmp/abs-escaped.png": png(),
                                                 "a/../../escaped2.png": png()}, symlink="link.png"),
     "holds no"),
    ("declared 4 GB", lambda m: bomb_zip(), "unpacks to more than"),
    ("bad CRC", lambda m: bad_crc_zip(), "is damaged"),
]


@pytest.mark.parametrize("what, make, says", ZIP_ROWS, ids=[r[0] for r in ZIP_ROWS])
def test_zip_library(sandbox, what, make, says):
    assert says in refusal(extract_zip, make(sandbox.marker), "mine.zip")
    uploads = sandbox.cache / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir()), "a refused archive left files behind"
    assert not list(sandbox.root.parent.rglob("escaped*.png")) and not Path("/tmp/abs-escaped.png").exists()


@pytest.mark.parametrize("what, make, says", [r for r in ZIP_ROWS if r[0] in ("escaping paths only", "declared 4 GB",
                                                                                "bad CRC", "pickle")],
                         ids=["escaping", "bomb", "crc", "pickle"])
def test_zip_page_upload(monkeypatch, sandbox, what, make, says):
    at = open_app(monkeypatch, "4_Dataset.py")
    at.radio(key="ds_source").set_value("zip").run()
    upload(at, "ds_zip", "mine.zip", make(sandbox.marker))
    no_exception(at)
    assert says in errors(at)


def over_budget_zip() -> bytes:
    """2 MB of image bytes in a 2 kB archive: more than a 1 MB cache budget holds."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("shapes/circle/a.png", png())
        z.writestr("shapes/square/b.png", b"\0" * 2_000_000)
    return buf.getvalue()


@pytest.mark.parametrize("where", ["library", "page"])
def test_an_upload_bigger_than_the_cache_budget_is_refused_before_unpacking(monkeypatch, sandbox, where):
    """Issue 24, item 7: an upload is unpacked only if it fits the cache's budget ($ATS_VIZ_CACHE_GB)."""
    monkeypatch.setenv("ATS_VIZ_CACHE_GB", "0.001")
    says = "'mine.zip' needs 2.1 MB on this server, more than it keeps for all uploads and cached results (1.0 MB"
    if where == "library":
        assert says in refusal(extract_zip, over_budget_zip(), "mine.zip")
    else:
        at = open_app(monkeypatch, "4_Dataset.py")
        at.radio(key="ds_source").set_value("zip").run()
        upload(at, "ds_zip", "mine.zip", over_budget_zip())
        no_exception(at)
        assert says in errors(at)
    uploads = sandbox.cache / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir()), "a refused archive left files behind"


def test_escaping_members_are_skipped_and_the_rest_unpacked_inside_the_cache(sandbox):
    data = zip_bytes({"shapes/circle/a.png": png(), "../../escaped.png": png(), "shapes/../../escaped3.png": png()},
                     symlink="shapes/circle/link.png")
    root = extract_zip(data, "mine.zip")
    assert root.is_relative_to(sandbox.cache)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())
    assert files == ["circle/a.png"]
    assert not list(sandbox.root.parent.rglob("escaped*.png"))


# ============================================================================ settings and the URL


URL_ROWS = [
    ({"k": "-3"}, "K must be at least 2 (got -3)"),
    ({"k": "abc"}, "K 'abc' is not a number"),
    ({"k": "nan"}, "K as a fraction must be in (0, 1]"),
    ({"k": "1e999"}, "K as a fraction must be in (0, 1]"),
    ({"k": "0.001"}, "K must be at least 2"),
    ({"k": "1,2"}, "K gives 2 values but there are"),
    ({"k": "9" * 5000}, "K as a fraction must be in (0, 1]"),
    pytest.param({"k": "1000000000000"}, "K"),
    ({"stages": "abc"}, "Stages 'abc' are not block numbers"),
    ({"stages": "-5"}, "Stage -5 is outside this model"),
    ({"stages": "3,3"}, "name a block twice"),
    ({"stages": "3-"}, "are not block numbers"),
    ({"source": "timm", "timm_name": "../../etc/passwd"}, "timm has no model named '../../etc/passwd'"),
    ({"source": "file", "ckpt": "/etc/hostname", "arch": ARCH}, "is not a checkpoint"),
    ({"source": "file", "ckpt": "/etc/hostname.pth", "arch": "../../etc"}, "timm has no architecture named"),
    ({"source": "file", "ckpt": "", "arch": ""}, "Say which timm architecture"),
    # garbage that falls back to the defaults: the page works as if it were not there
    ({"method": "evil"}, None),
    ({"source": "../../etc"}, None),
    ({"method": "<script>alert(1)</script>", "source": "", "unknown": "x" * 10_000}, None),
]


@pytest.mark.parametrize("params, says", URL_ROWS)
def test_url_query_parameters_on_the_image_page(monkeypatch, sandbox, params, says):
    at = open_app(monkeypatch, "1_Image.py", params)
    no_exception(at)
    if says is None:
        assert not at.error, errors(at)
        assert tokens_kept(at) and tokens_kept(at)[0].endswith("/ 196")
    else:
        assert says in errors(at), errors(at)
        assert not tokens_kept(at)


TITLE_WORD = {"app.py": "adaptive token sampling", "1_Image.py": "image", "2_Compare.py": "compare",
              "3_Video.py": "video", "4_Dataset.py": "dataset"}
GARBAGE = {"k": "-3", "stages": "abc", "method": "evil", "source": "../../etc"}


@pytest.mark.parametrize("page", ["app.py", "1_Image.py", "2_Compare.py", "3_Video.py", "4_Dataset.py"])
def test_garbage_url_on_every_page_gets_a_sentence(monkeypatch, sandbox, page):
    """Opened from the home page (app.py), as a shared link would open the app."""
    monkeypatch.syspath_prepend(str(ROOT))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    for k, v in GARBAGE.items():
        at.query_params[k] = v
    at.run()
    if page != "app.py":
        at.switch_page(f"pages/{page}").run()
    no_exception(at)
    assert TITLE_WORD[page] in at.title[0].value.lower()  # the page asked for, not another
    assert "Stages 'abc' are not block numbers" in errors(at)
    assert at.query_params.get("method") in (None, [], "ats", ["ats"])  # the unknown method was dropped
    assert at.query_params.get("source") in (None, [], "embedded", ["embedded"])


def _in_a_small_address_space(code: str, box, extra_gb: float = 2.0) -> subprocess.CompletedProcess:
    """Run ``code`` after the imports with at most ``extra_gb`` more address space: a runaway
    allocation fails there (MemoryError) instead of taking the machine's memory."""
    prelude = (
        "import os, resource, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import torch\n"
        "from ats_viz import ATSConfig, InputError, run_ats\n"
        "from ats_viz.methods import parse_stages\n"
        "vm = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')\n"
        f"resource.setrlimit(resource.RLIMIT_AS, (vm + int({extra_gb} * 2**30), resource.RLIM_INFINITY))\n"
    )
    env = {**os.environ, "ATS_VIZ_CACHE": str(box.cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=box.root, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_huge_stage_range_is_refused_without_using_memory(sandbox):
    proc = _in_a_small_address_space(
        "try:\n"
        "    parse_stages('0-999999999999')\n"
        "    print('accepted')\n"
        "except InputError as err:\n"
        "    print('refused:', err)\n", sandbox)
    assert proc.returncode == 0 and "refused:" in proc.stdout, proc.stderr[-1500:]


def test_a_huge_k_is_refused_without_using_memory(sandbox):
    proc = _in_a_small_address_space(
        "from ats_viz.models import load_model\n"
        "from PIL import Image\n"
        "m = load_model('embedded')\n"
        "x = m.prepare(Image.new('RGB', (224, 224)))\n"
        "try:\n"
        "    with torch.no_grad():\n"
        "        run_ats(m.net, x, ATSConfig(k=10_000_000))\n"
        "    print('ran')\n"
        "except InputError as err:\n"
        "    print('refused:', err)\n", sandbox)
    assert proc.returncode == 0 and "refused:" in proc.stdout, proc.stderr[-1500:]


# ============================================================================ command-line flags



# {clip}, {data} and {tmp} stand for a good clip, a good dataset folder and the test's own folder.
FLAG_ROWS = [
    ([], "the following arguments are required"),
    (["nonsense"], "invalid choice"),
    (["video"], "the following arguments are required: input"),
    (["video", "{clip}", "--max-frames", "abc"], "invalid int value: 'abc'"),
    (["video", "{clip}", "--max-frames", "0"], "frame cap must be a whole number from 1 to"),
    (["video", "{clip}", "--stride", "-1"], "frame stride must be a whole number of at least 1"),
    (["video", "{clip}", "--k", "lots"], "K 'lots' is not a number"),
    (["video", "{clip}", "--k", "1"], "K must be at least 2 (got 1)"),
    (["video", "{clip}", "--k", "1.5"], "K as a fraction must be in (0, 1]"),
    (["video", "{clip}", "--method", "evil"], "invalid choice: 'evil'"),
    (["video", "{clip}", "--model", "timm:../../etc/passwd"], "timm has no model named"),
    (["video", "{clip}", "--model", "embeded"], "Say which timm architecture"),
    pytest.param(["video", "{clip}", "--max-frames", "1", "--k", "1000000000000"], "K",
                 id="video-huge-k"),
    pytest.param(["video", "{clip}", "--max-frames", "1", "--csv", "{tmp}"], "",
                 id="video-csv-is-a-folder"),
    (["evaluate", "--data", "{data}", "--k", "98,abc"], "K 'abc' is not a number"),
    (["evaluate", "--data", "{data}", "--k", ""], "The K ladder of ATS is empty"),
    (["evaluate", "--data", "{data}", "--methods", "tome", "--r", "8,x"], "r 'x' is not a number"),
    (["evaluate", "--data", "{data}", "--methods", "evit", "--keep-rate", "2"], "The keep rate 2 is impossible"),
    (["evaluate", "--data", "{data}", "--methods", "ats,evil"], "Unknown method(s) evil"),
    (["evaluate", "--data", "{data}", "--k", "98", "--methods", "ats", "--device", "tpu:7"], "tpu"),
    (["evaluate", "--data", "{data}", "--subset", "0"], "subset size must be a whole number of at least 1"),
    (["evaluate", "--data", "{data}", "--k", "98", "--methods", "ats", "--batch", "0"],
     "batch size must be at least 1"),
    (["evaluate", "--data", "{data}", "--csv", "{tmp}/absent.csv"], "No CSV file at"),
    (["evaluate", "--data", "{data}", "--precision", "fp16"], "fp16 runs only on CUDA"),
    (["evaluate", "--data", "{data}", "--k", "98", "--methods", "ats", "--workers", "-1"],
     "number of loading workers must be 0 or more"),
    (["evaluate", "--data", "{data}", "--k", "98", "--methods", "ats", "--chunk", "0"],
     "chunk size must be at least 1 image"),
    (["evaluate", "--model", "{tmp}/missing.pth", "--arch", ARCH], "No checkpoint file at"),
    (["train", "--out", "{tmp}/model", "--workers", "-1"], "number of workers drawing scenes must be 0 or more"),
    (["train", "--out", "{tmp}/model", "--device", "tpu"], "'tpu' is not a device"),
    pytest.param(["evaluate", "--data", "{data}", "--k", "98", "--methods", "ats", "--out", "{tmp}/afile"], "",
                 id="evaluate-out-is-a-file"),
    # Outputs that cannot be written: refused before the model loads, never after the sweep or the frames.
    # (/proc: nothing can be made there, for root too; test_evaluate and test_video simulate a read-only disk.)
    pytest.param(["evaluate", "--data", "{data}", "--k", "98", "--methods", "ats", "--out", "{tmp}/afile/results"],
                 "afile' is a file, so no folder can be made below it", id="evaluate-out-below-a-file"),
    pytest.param(["evaluate", "--data", "{data}", "--k", "98", "--methods", "ats", "--out", "/proc/ats-viz-out"],
                 "Cannot write the results to '/proc/ats-viz-out'", id="evaluate-out-cannot-be-made"),
    pytest.param(["benchmark", "--methods", "ats", "--k", "0.5", "--batch", "1", "--repeats", "1", "--warmup", "0",
                  "--out", "{tmp}/afile/bench"], "afile' is a file, so no folder can be made below it",
                 id="benchmark-out-below-a-file"),
    pytest.param(["video", "{clip}", "--max-frames", "1", "--csv", "/proc/ats-viz.csv"],
                 "Cannot write '/proc/ats-viz.csv' (--csv)", id="video-csv-unwritable-folder"),
    pytest.param(["video", "{clip}", "--max-frames", "1", "--out", "/proc/ats-viz.mp4"],
                 "Cannot write '/proc/ats-viz.mp4' (--out)", id="video-out-unwritable-folder"),
    pytest.param(["video", "{clip}", "--max-frames", "1", "--out", "{tmp}/annotated"], "its name must end in .mp4",
                 id="video-out-without-extension"),
    pytest.param(["video", "{clip}", "--max-frames", "1", "--out", "{tmp}/afile/annotated.mp4"],
                 "afile' is a file, not a folder", id="video-out-below-a-file"),
    # A labels CSV giving one file two labels (tests the rule's spellings in the library above).
    pytest.param(["evaluate", "--data", "{data}", "--csv", "{tmp}/twice.csv", "--methods", "ats", "--k", "98",
                  "--out", "{tmp}/twice"], "two labels: 'circle' on line 1 and 'square' on line 2",
                 id="evaluate-csv-names-a-file-twice"),
]


# The flag rows run in one interpreter (the rows with file inputs above each get their own
# process): a driver calls the command line's main() once per row, and anything that escapes
# it is printed as a traceback, exactly as ``python -m ats_viz`` would print it.
DRIVER = r"""
import contextlib, io, json, sys, traceback
from ats_viz.__main__ import main
results = []
for args in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print("@@RESULTS@@" + json.dumps(results))
"""


def _row_args(row) -> list[str]:
    return list(row.values[0] if hasattr(row, "values") else row[0])


@pytest.fixture(scope="module")
def flag_results(tmp_path_factory, clip, small_set) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("flags")
    (tmp / "afile").write_text("an existing file")
    first = sorted((small_set / "circle").glob("*.png"))[0].relative_to(small_set).as_posix()
    (tmp / "twice.csv").write_text(f"{first},circle\n./{first},square\n")
    rows = [[a.format(clip=clip, data=small_set, tmp=tmp) for a in _row_args(r)] for r in FLAG_ROWS]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATS_VIZ_CACHE": str(tmp / "cache"), "TMPDIR": str(tmp),
           "OMP_NUM_THREADS": "1"}
    before = repo_files()
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(rows), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert not repo_files() - before, f"written into the repository: {sorted(repo_files() - before)}"
    assert proc.returncode == 0 and "@@RESULTS@@" in proc.stdout, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("@@RESULTS@@", 1)[1])


@pytest.mark.parametrize("args, says", FLAG_ROWS)
def test_command_line_flags(flag_results, args, says):
    index = [_row_args(r) for r in FLAG_ROWS].index(list(args))
    res = flag_results[index]
    both = res["out"] + res["err"]
    assert "Traceback" not in both, both[-3000:]
    assert res["code"] == 2, f"exit code {res['code']}:\n{both[-2000:]}"
    assert "error: " in res["err"], res["err"][-2000:]
    assert says in res["err"], res["err"][-1500:]
