import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def open_app(monkeypatch, page: str = "app.py", params: dict | None = None, state: dict | None = None,
             timeout: float = 240):
    """A page run as `streamlit run app.py` serves it (the sidebar's links resolve against
    app.py), with URL query parameters and session state set before the first run."""
    from streamlit.testing.v1 import AppTest  # here, so the library's tests run where Streamlit is not

    monkeypatch.syspath_prepend(str(ROOT))  # pages import ui.py from the app's folder
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    if page != "app.py":
        at.switch_page(f"pages/{page}")
    for k, v in (params or {}).items():
        at.query_params[k] = v
    for k, v in (state or {}).items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def sharpen(net, factor: float = 4.0):
    """Scale the query and key weights so random-weight attention is peaked, as trained
    attention is: then images keep different numbers of tokens."""
    with torch.no_grad():
        for blk in net.blocks:
            d = blk.attn.qkv.out_features // 3
            blk.attn.qkv.weight[: 2 * d] *= factor
    return net


@pytest.fixture(scope="session")
def model():
    """The shipped plain model, loaded once for the whole run (tests never change its weights)."""
    from ats_viz.models import load_model

    return load_model("embedded")


@pytest.fixture
def no_grad():
    """Inference without autograd, for the tests that ask (training tests need gradients)."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="session")
def deit_tiny():
    torch.manual_seed(0)
    return sharpen(timm.create_model("deit_tiny_patch16_224").eval())


@pytest.fixture(scope="session")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 224, 224, generator=g) * 0.3
    # Bright blobs of different sizes, so the images differ in what stands out.
    for i, r in enumerate((20, 40, 70, 100)):
        x[i, :, 60:60 + r, 50:50 + r] += 2.0
    return x


@pytest.fixture(scope="session")
def phone_photo():
    """A 96 x 64 JPEG as a phone stores it, red in the stored top-left corner, with the EXIF
    orientation (1, 3, 6 or 8) saying how to turn it upright."""
    def make(orientation: int) -> bytes:
        arr = np.full((64, 96, 3), 200, np.uint8)
        arr[:24, :24] = (255, 0, 0)
        img = Image.fromarray(arr)
        exif = img.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
        return buf.getvalue()

    return make


@pytest.fixture(scope="session")
def red_corner():
    """Which corner of a picture (PIL or array) holds phone_photo's red square."""
    def find(img) -> str:
        arr = np.asarray(img).astype(int)
        corners = {"top-left": arr[:12, :12], "top-right": arr[:12, -12:],
                   "bottom-left": arr[-12:, :12], "bottom-right": arr[-12:, -12:]}
        return next(k for k, c in corners.items() if c[..., 0].mean() > 200 and c[..., 1].mean() < 80)

    return find


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)`` makes ``folder`` (made if missing) behave from then on as on a
    read-only file system: making a folder or opening a file for writing anywhere below it
    fails with OSError 30 (EROFS), for root too, whom permission bits do not stop. Reading
    works. Only os.open and os.mkdir are patched: what the library's write checks use."""
    folders: list[Path] = []
    real_open, real_mkdir = os.open, os.mkdir

    def below(path) -> bool:
        path = Path(os.fsdecode(path)).absolute()
        return any(path.is_relative_to(f) for f in folders)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and below(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if below(path):
            if os.path.lexists(path):  # as Linux says of a folder that is there
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folders.append(folder.absolute())
        return folder

    return make
