"""Loading a ViT and its preprocessing: the shipped model, timm pretrained weights, or a file.

Nothing a user gives is unpickled: checkpoint files are read as safetensors or with
``torch.load(weights_only=True)`` (through timm's loader, which does exactly that).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from timm.models.vision_transformer import VisionTransformer

from .arch import ModelSpec, build
from .errors import InputError
from .vit import check_vit

# Package data (pyproject.toml's package-data), so a wheel carries it.
ASSETS = Path(__file__).resolve().parent / "assets"
# Scenes for the app to offer, from simple to busy: synthetic.draw((2026, n, i), label, n) for
# n objects (1-object-heart: i = 0, 3-objects-star: 1, 5-objects-ring: 2, 8-objects-cross: 1).
SAMPLES = ASSETS / "samples"
# Shipped checkpoints: name -> file stem in ASSETS (weights .safetensors, card .json).
EMBEDDED = {
    "embedded": "scenes-vit",  # trained plainly: ATS plugged in afterwards
    "embedded-ats": "scenes-vit-ats",  # the same model fine-tuned with ATS active
}


@dataclass
class LoadedModel:
    """A model ready to run: the net (eval mode), its class names and its preprocessing."""

    net: VisionTransformer
    class_names: list[str]
    transform: Callable[[Image.Image], torch.Tensor]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.net.patch_embed.img_size)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> 1 x 3 x H x W, exactly as the model sees it."""
        return self.transform(image.convert("RGB")).unsqueeze(0)

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """Undo the normalisation of one 3 x H x W tensor: the picture the model sees."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        img = (x.detach().cpu() * std + mean).clamp(0, 1).mul(255).round().byte()
        return img.permute(1, 2, 0).numpy()


def wrap_net(net: VisionTransformer, name: str, class_names: list[str] | None = None,
            card: dict[str, Any] | None = None) -> LoadedModel:
    """Any timm ViT as a LoadedModel: eval mode, class names, timm's preprocessing for it.
    A model the engine cannot run, or whose outputs are not numbers, is refused here, with its
    sentence, before anyone uses it."""
    check_vit(net)
    net.eval()
    check_finite(net, name)
    cfg = resolve_data_config({}, model=net)
    n = net.num_classes
    if class_names is None:
        class_names = ImageNetInfo().label_descriptions(as_dict=False) if n == 1000 else [f"class {i}" for i in range(n)]
    return LoadedModel(net, list(class_names), create_transform(**cfg), name,
                       tuple(cfg["mean"]), tuple(cfg["std"]), card or {})


def check_finite(net: VisionTransformer, name: str) -> None:
    """Refuse a model whose logits are not finite (NaN or infinite) on a probe input, a fixed
    noise image as the model sees one (normalised). Such a model (a diverged training run, a
    damaged export) would show NaN probabilities as if they were results. One forward pass of
    one image, once per load; inputs that give NaN only for themselves are the sweep's to skip."""
    param = next(net.parameters())
    size = tuple(net.patch_embed.img_size)
    probe = torch.randn((1, 3, *size), generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    with torch.inference_mode():
        logits = net(probe)
    if bool(torch.isfinite(logits).all()):
        return
    bad = [k for k, v in net.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    held = ""
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        held = f"; {len(bad)} of its weight tensors hold NaN or infinite values ({shown})"
    raise InputError(f"'{name}' gives outputs that are not numbers (NaN or infinite) on a plain input image{held}. "
                     "Its predictions would mean nothing, so it is refused: train or export it again.")


def embedded_card(name: str = "embedded") -> dict[str, Any]:
    path = ASSETS / f"{EMBEDDED[name]}.json"
    if not path.is_file():
        raise InputError(f"The shipped model card {path} is missing: reinstall ats-viz or run "
                         "'python -m ats_viz train' to make it.")
    return json.loads(path.read_text())


def _load_embedded(name: str) -> LoadedModel:
    card = embedded_card(name)
    weights = ASSETS / f"{EMBEDDED[name]}.safetensors"
    if not weights.is_file():
        raise InputError(f"The shipped weights {weights} are missing: run 'python -m ats_viz train'.")
    net = build(ModelSpec(**card["architecture"]))
    net.load_state_dict(load_file(str(weights)))
    return wrap_net(net, name, card["classes"], card)


def _fetch_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the weights could not be fetched (no network, the hub refused,
    not in the cache), and nothing else. huggingface_hub's (LocalEntryNotFoundError, which is
    what an offline machine with no cached copy gets, OfflineModeIsEnabled, HfHubHTTPError),
    requests' and urllib's (torch.hub's downloads) are all OSErrors, as are ConnectionError
    and TimeoutError; httpx's transport errors (the client of huggingface_hub >= 1, published
    as httpx or httpx2) and a bare EntryNotFoundError are not, so they are named."""
    found: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:  # pragma: no cover - timm's hub support needs it, but it is optional there
        pass
    else:
        found += [c for c in (getattr(hf_errors, "EntryNotFoundError", None),
                              getattr(hf_errors, "LocalEntryNotFoundError", None)) if isinstance(c, type)]
    for module in ("httpx", "httpx2"):
        try:
            found.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _load_timm(model_name: str, pretrained_file: str | None = None) -> LoadedModel:
    if model_name not in timm.list_models():
        raise InputError(f"timm has no model named '{model_name}'. Try deit_small_patch16_224.")
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise InputError(f"No weights file at '{path}'.")
        if path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
            read_state_dict(path)  # an empty, cut or pickled file: its own sentence, before timm reads it
        overlay: dict[str, str] | None = {"file": str(path)}
    else:
        if not timm.list_models(model_name, pretrained=True):
            raise InputError(f"timm has no pretrained weights for '{model_name}'. Load a checkpoint "
                             f"file with the architecture '{model_name}', or try deit_small_patch16_224.")
        overlay = None
    try:
        net = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay)
    except _fetch_errors() as err:  # only a failed download or read; a bug or an API change propagates
        raise InputError(
            f"Could not get the pretrained weights of '{model_name}' ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'}). Without a network, "
            "download them elsewhere (for example model.safetensors from huggingface.co/timm/"
            f"{model_name}...) and load that file with the architecture '{model_name}'."
        ) from err
    return wrap_net(net, f"timm:{model_name}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing anything in it; bad files give an InputError."""
    if not path.is_file():
        raise InputError(f"No checkpoint file at '{path}'.")
    if path.stat().st_size == 0:
        raise InputError(f"The checkpoint '{path.name}' is empty (0 bytes).")
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise InputError(f"'{path.name}' is not a checkpoint: give a .safetensors, .pth or .pt file.")
    try:
        sd = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as err:  # noqa: BLE001
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise InputError(f"'{path.name}' holds Python objects, not just weights, and is refused: "
                             "loading it could run code. Save a state dict (or safetensors) instead.") from None
        raise InputError(f"'{path.name}' could not be read as a checkpoint ({first}). "
                         "Is it truncated or of another format?") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"'{path.name}' is not a state dict of tensors.")
    return sd


def _load_file(path: Path, arch: str | None) -> LoadedModel:
    if not arch:
        raise InputError(f"Say which timm architecture '{path.name}' is for (for example deit_small_patch16_224).")
    if arch not in timm.list_models():
        raise InputError(f"timm has no architecture named '{arch}'.")
    sd = read_state_dict(path)
    head = sd.get("head.weight")
    net = timm.create_model(arch, pretrained=False, num_classes=head.shape[0] if head is not None else 1000)
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"other shapes: {few(shapes)}" if shapes else ""]
        raise InputError(f"'{path.name}' does not fit {arch}: " + "; ".join(p for p in parts if p)
                         + ". Is it a checkpoint of another architecture?")
    net.load_state_dict(sd)
    return wrap_net(net, f"{path.name} ({arch})")


def load_model(spec: str, arch: str | None = None, pretrained_file: str | None = None) -> LoadedModel:
    """Load a model by spec: "embedded" / "embedded-ats", "timm:NAME", or a checkpoint path.

    ``pretrained_file`` hands a local weights file to timm's own pretrained mechanism for
    "timm:NAME" (how a user with downloaded weights runs the real model offline).
    """
    spec = spec.strip()
    if spec in EMBEDDED:
        return _load_embedded(spec)
    if spec.startswith("timm:"):
        return _load_timm(spec[5:].strip(), pretrained_file)
    return _load_file(Path(spec).expanduser(), arch)


def source_stamp(spec: str) -> tuple:
    """What identifies a model spec's source on disk: a checkpoint's resolved path, size and
    modification time, so two files of one name, or a file rewritten in place, are told apart."""
    path = Path(spec.strip()).expanduser()
    if spec.strip() in EMBEDDED or spec.strip().startswith("timm:") or not path.is_file():
        return (spec.strip(),)
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _stamp(net: torch.nn.Module) -> tuple:
    """Changes when a tensor of the state dict is replaced or changed in place."""
    return tuple((k, v.data_ptr(), v._version) for k, v in net.state_dict().items())


_HASHES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def model_hash(net: torch.nn.Module) -> str:
    """A digest of the weights (what results are cached by); recomputed only when a tensor
    was replaced or changed in place."""
    stamp = _stamp(net)
    hit = _HASHES.get(net)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    h = hashlib.blake2b(type(net).__name__.encode(), digest_size=16)
    for k, v in sorted(net.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    _HASHES[net] = (stamp, digest)
    return digest


# A shared model's copies on other devices, reused while the model's weights stay as they are.
_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[torch.device, tuple[tuple, torch.nn.Module]]]" = \
    weakref.WeakKeyDictionary()
_COPIES_LOCK = threading.Lock()


def on_device(loaded: LoadedModel, device: torch.device | str) -> LoadedModel:
    """``loaded`` with its net on ``device``, never by moving it (see ``net_on_device``)."""
    net = net_on_device(loaded.net, device)
    return loaded if net is loaded.net else dataclasses.replace(loaded, net=net)


def net_on_device(net: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``net`` on ``device``, never by moving it: the app shares one model between sessions,
    and a sweep or a timing moving it would pull it from under another session's run.

    The net itself when it is already there; otherwise a copy, made once per (net, device)
    and kept while the net lives (a weak reference) and its weights are unchanged.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if next(net.parameters()).device == device:
        return net
    stamp = _stamp(net)
    with _COPIES_LOCK:  # two sessions asking at once share one copy
        copies = _COPIES.setdefault(net, {})
        hit = copies.get(device)
        if hit is None or hit[0] != stamp:
            hit = (stamp, copy.deepcopy(net).to(device))
            copies[device] = hit
    return hit[1]
