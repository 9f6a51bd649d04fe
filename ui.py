"""What every page shares: the sidebar settings, cached model and runs, the image input and
the stage views. Streamlit lives here and in the pages; the library (ats_viz/) never sees it."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import streamlit as st
import torch

from ats_viz import ATSConfig, InputError, run_ats
from ats_viz import jobs
from ats_viz.data import IMAGE_TYPES, read_image
from ats_viz.methods import METHODS, format_stages, format_value, get
from ats_viz.setting import from_text
from ats_viz.models import SAMPLES, LoadedModel, load_model, model_hash, net_on_device, source_stamp
from ats_viz.paths import OFF, allowed_roots, confine, typed_paths_allowed
from ats_viz.vit import ATSResult, resolve
from ats_viz import compiled, overlays, timing, viz

PAGES = {"app.py": ("Home", ":material/home:"), "pages/1_Image.py": ("Image", ":material/image:"),
         "pages/2_Compare.py": ("Compare", ":material/compare:"), "pages/3_Video.py": ("Video", ":material/movie:"),
         "pages/4_Dataset.py": ("Dataset", ":material/dataset:")}
SOURCES = {"embedded": "Shipped model (plain)", "embedded-ats": "Shipped model (fine-tuned with ATS)",
           "timm": "timm pretrained model", "file": "Checkpoint file"}
# Settings: session-state key -> (URL query key, default). Non-widget keys hold the values so
# they survive page switches (Streamlit forgets a widget's state on pages that do not draw it).
# Each method's parameter has its own key (its ATSConfig field), so switching methods keeps them.


def _param_default(field: str) -> str:
    """A parameter box's first text: the methods' shared default, or empty (each method's own)."""
    texts = {format_value(getattr(ATSConfig(method=m.name), field)) for m in METHODS.values()
             if m.param and m.param.field == field}
    return texts.pop() if len(texts) == 1 else ""


PARAMS = {m.param.field: m.param for m in METHODS.values() if m.param}
OPTIONS = {o.field: o for m in METHODS.values() for o in m.options if o.choices}  # options the sidebar offers
# Where the pages run: the server's first GPU where it has one (one model copy per device).
DEVICES = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
DEFAULTS = {"source": "embedded", "timm_name": "deit_small_patch16_224", "ckpt": "", "arch": "",
            "device": DEVICES[min(1, len(DEVICES) - 1)], "method": "ats", "stages": "",
            **{field: _param_default(field) for field in PARAMS},
            **{field: o.default for field, o in OPTIONS.items()}}


@dataclass(frozen=True)
class Settings:
    model: str  # a load_model spec
    arch: str | None
    config: ATSConfig
    stages_text: str
    device: str = "cpu"  # where the pages run the model ("cpu", "cuda:0", ...)


def _init_state() -> None:
    for key, default in DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = st.query_params.get(key, default)
    if st.session_state.source not in SOURCES:
        st.session_state.source = "embedded"
    if st.session_state.method not in METHODS:
        st.session_state.method = "ats"
    if st.session_state.device not in DEVICES:  # a link from a server with more GPUs
        st.session_state.device = DEFAULTS["device"]
    for field, o in OPTIONS.items():  # the URL gives text: the choice it names, else the default
        text = str(st.session_state[field])
        # yes/no: how links made before the options came from the registry wrote a yes-or-no choice
        words = {"yes": True, "no": False} if isinstance(o.default, bool) else {}
        st.session_state[field] = next((c for c in o.choices if str(c) == text), words.get(text.lower(), o.default))


def sidebar_options() -> dict:
    """The methods' options as the sidebar sets them ({field: value}), for pages that build
    settings of several methods (a setting keeps only its own method's)."""
    return {field: st.session_state[field] for field in OPTIONS}


def _bind(key: str) -> dict:
    """Widget kwargs that mirror a widget into its persistent session-state key."""
    st.session_state[f"w_{key}"] = st.session_state[key]
    return {"key": f"w_{key}", "on_change": lambda: st.session_state.update({key: st.session_state[f"w_{key}"]})}


def sidebar() -> Settings | None:
    """Draw the shared settings; None (with the reason shown) if they are impossible.

    Called first on every page, so it also sets the page's layout.
    """
    st.set_page_config(page_title="ats-viz: Adaptive Token Sampling", page_icon=":material/blur_on:", layout="wide")
    _init_state()
    with st.sidebar:
        # Streamlit's own page list is hidden (.streamlit/config.toml): it would call the home page "app".
        for path, (label, icon) in PAGES.items():
            st.page_link(path, label=label, icon=icon)
        st.header("Model")
        st.selectbox("Model", list(SOURCES), format_func=SOURCES.get, **_bind("source"))
        arch = None
        if st.session_state.source == "timm":
            st.text_input("timm model name", help="Needs the weights: a network or a Hugging Face cache.",
                          **_bind("timm_name"))
            model = f"timm:{st.session_state.timm_name.strip()}"
        elif st.session_state.source == "file":
            if typed_paths_allowed():  # else the page says why there is no box (below)
                st.text_input("Checkpoint path (.safetensors, .pth)", help=_roots_help(), **_bind("ckpt"))
                st.text_input("timm architecture", placeholder="deit_small_patch16_224", **_bind("arch"))
            model, arch = st.session_state.ckpt, st.session_state.arch.strip() or None
        else:
            model = st.session_state.source
        if len(DEVICES) > 1:
            st.selectbox("Device", DEVICES, help="Where this page runs the model: each device holds its own copy.",
                         **_bind("device"))
        st.header("Token reduction")
        st.selectbox("Method", list(METHODS), format_func=lambda n: METHODS[n].label, **_bind("method"))
        method = METHODS[st.session_state.method]
        st.text_input("Stages (blocks)", placeholder="the method's default", help=STAGES_HELP, **_bind("stages"))
        if method.param is not None:
            st.text_input(f"{method.param.symbol} ({method.label})", help=method.param.help,
                          placeholder=f"its default, {format_value(method.param.default)}", **_bind(method.param.field))
        for o in method.options:
            if o.choices:
                st.selectbox(o.label, list(o.choices), format_func=o.choices.get, **_bind(o.field))
        st.caption(GFLOPS_NOTE)
    st.query_params.update({k: str(st.session_state[k]) for k in DEFAULTS if st.session_state[k] != DEFAULTS[k]})
    for k in DEFAULTS:
        if st.session_state[k] == DEFAULTS[k] and k in st.query_params:
            del st.query_params[k]
    method = st.session_state.method
    try:
        if st.session_state.source == "file":
            if not typed_paths_allowed():
                raise InputError(OFF)
            if model.strip():
                model = str(confine(model))  # before source_stamp or load_model touches the file
        reducer = METHODS[method]
        config = from_text(method, st.session_state.stages,
                           st.session_state[reducer.param.field] if reducer.param else "",
                           **{o.field: st.session_state[o.field] for o in reducer.options if o.field in OPTIONS})
    except InputError as err:
        st.error(str(err))
        return None
    return Settings(model, arch, config, st.session_state.stages, st.session_state.device)


# Each method's own stages, as the registry says them for a 12-block ViT.
STAGES_HELP = ("Block indices that reduce, from 0: '3-11' or '3, 6, 9'. Empty: each method's own; of 12 blocks, "
               + "; ".join(f"{m.label} {format_stages(m.default_stages(12))}" for m in METHODS.values() if m.reduces)
               + " (scaled to other depths).")
STAGE_LEGEND = ("Outlined: tokens that leave the stage; outlined in blue: patches fused into one token; "
                "dimmed: patches dropped.",
                "Each merged token tints the patches it holds in one colour, with a white line where two "
                "meet; untinted patches are still tokens of their own.")


def _roots_help() -> str | None:
    roots = allowed_roots()
    return None if roots is None else "This server reads only inside " + ", ".join(f"`{r}`" for r in roots) + "."


GFLOPS_NOTE = ("GFLOPs count the blocks, patch embedding and head; ATS's scoring and sampling (O(N log N)), "
               "ToMe's matching and PiToMe's energy are left out, as in the papers.")


@st.cache_resource(show_spinner="Loading the model...", max_entries=8)
def get_model(spec: str, arch: str | None, stamp: tuple) -> LoadedModel:
    """Loaded once per (spec, arch, file size and mtime) for the whole server: widgets never
    reload it, and a checkpoint rewritten in place is read again. Every session shares it; work
    on another device (a sweep, a timing) runs on ``models.on_device``'s copy, so it never moves."""
    return load_model(spec, arch)


@st.cache_resource(show_spinner=False)
def job_queue(max_jobs: int) -> jobs.JobQueue:
    """The server's one queue for sweeps and video analyses (one per limit, should it change)."""
    return jobs.JobQueue(max_jobs)


def queued_text(ahead: int, max_jobs: int) -> str:
    limit = "one sweep or video analysis" if max_jobs == 1 else f"up to {max_jobs} sweeps or video analyses"
    return (f"Queued: {ahead} job{'' if ahead == 1 else 's'} ahead of yours (this server runs {limit} at a "
            "time). Yours starts by itself; Stop leaves the queue.")


@contextmanager
def queued() -> Iterator[None]:
    """Run the block once the server has a free job slot, saying meanwhile where this session
    stands. Stop reruns the script: Streamlit raises in the next st call (the note, written at
    every wake-up) and the ticket's block gives the place back. InputError: a bad ATS_VIZ_MAX_JOBS."""
    q = job_queue(jobs.max_jobs())
    note = st.empty()
    with q.ticket() as t:
        for ahead in t.wait():
            note.info(queued_text(ahead, q.max_jobs))
        note.empty()
        yield


def check(loaded: LoadedModel, configs: list[ATSConfig]) -> bool:
    """Every setting checked against the model once, before any run; False (the sentence
    shown) if one is impossible. Runs are cached, so this is where an error can be caught."""
    try:
        for cfg in configs:
            resolve(cfg, len(loaded.net.blocks), loaded.net.patch_embed.num_patches)
    except InputError as err:
        st.error(str(err))
        return False
    return True


def model_or_error(settings: Settings) -> LoadedModel | None:
    try:
        loaded = get_model(settings.model, settings.arch, source_stamp(settings.model))
    except InputError as err:
        st.error(str(err))
        return None
    return loaded if check(loaded, [settings.config]) else None


@st.cache_data(max_entries=64, show_spinner=False)
def run_cached(_loaded: LoadedModel, weights: str, image_key: str, _x: torch.Tensor,
               config: ATSConfig, device: str) -> ATSResult:
    """One image under one setting on ``device`` (the model's copy there; the result comes back
    to the host); keyed by the weights' digest, the image's, the setting and the device."""
    net = net_on_device(_loaded.net, device)
    with torch.no_grad():
        return run_ats(net, _x.to(device), config).cpu()


def digest(x: torch.Tensor) -> str:
    return hashlib.sha1(x.numpy().tobytes()).hexdigest()


def run(loaded: LoadedModel, x: torch.Tensor, config: ATSConfig, device: str) -> ATSResult:
    """One image under one setting; where the model's outputs for it are not numbers (NaN or
    infinite), the page says so and stops: there is no prediction to show."""
    res = run_cached(loaded, model_hash(loaded.net), digest(x), x, config, device)
    if not bool(torch.isfinite(res.logits).all()):
        st.error(f"The model's outputs for this image are not numbers (NaN or infinite) under {config.label()}, "
                 "so there is no prediction to show. Try another image; if every image does this, the model's "
                 "weights are damaged.")
        st.stop()
    return res


SPEED_WARMUP, SPEED_REPEATS = 3, 10
_SPEED_KEPT = 32  # timings kept per session: enough to go back and forth between images and settings


def compile_choice(where, key: str, device: str) -> bool:
    """The "Compiled" box beside a Measure speed button (``where``: a column or ``st``);
    greyed out, saying why, where nothing can compile."""
    why_not = compiled.why_not(device)
    wanted = where.checkbox("Compiled", key=f"{key}_compile", disabled=why_not is not None,
                            help=why_not or "Runs the settings through torch.compile, which fuses the small "
                                            "operations that choosing tokens takes (at small batches their "
                                            "cost, not the FLOPs, decides the time). The first timing of a "
                                            "setting compiles it: seconds to minutes. The full model stays "
                                            "timm's eager forward.")
    return wanted and why_not is None


def measured_speed(loaded: LoadedModel, x: torch.Tensor, configs: list[ATSConfig],
                   key: str, device: str) -> dict[str, timing.Measured] | None:
    """A "Measure speed" button: the image timed under ``configs`` and the full model, only
    when pressed (a timing takes seconds, and reruns happen on every click). Kept in session
    state by image, weights and settings, so it shows again until one of them changes.
    Returns {setting id: Measured}, the full model's under ``FULL.id``; None before the press."""
    speeds = st.session_state.setdefault("speed", {})
    where = "CPU" if device == "cpu" else f"GPU ({device})"
    left, right = st.columns([1, 3])
    compile = compile_choice(right, key, device)
    stored = (digest(x), model_hash(loaded.net), tuple(c.id for c in configs), device, compile)
    if left.button("Measure speed", key=f"{key}_speed",
                   help=f"Times this image: {SPEED_WARMUP} warm-up and {SPEED_REPEATS} timed runs of each setting "
                        f"and of the full model, interleaved, on this server's {where}."):
        with st.spinner("Compiling and timing..." if compile else "Timing..."):
            measured = timing.time_settings(loaded.net, [x], configs, SPEED_WARMUP, SPEED_REPEATS, device,
                                            compile=compile)
        speeds[stored] = ({m.id: m for m in measured}, str(timing.machine(device)))
        while len(speeds) > _SPEED_KEPT:
            speeds.pop(next(iter(speeds)))
    hit = speeds.get(stored)
    if hit is None:
        return None
    st.caption(f"Median of {SPEED_REPEATS} timed runs after {SPEED_WARMUP} warm-up runs, every setting in turn, "
               f"measured on {hit[1]}{', the settings compiled' if compile else ''}. The full model runs as timm's "
               "own eager forward. Timings move with the "
               "machine's load; the speed-up is measured in the same run, so it moves less.")
    return hit[0]


def shipped_model_note(loaded: LoadedModel) -> None:
    """Beside a shipped model's prediction: what it knows, so a photo's answer is not misread."""
    if not loaded.card:  # only the shipped models carry a card
        return
    st.caption(f"The shipped model knows scenes of 1 to 8 synthetic shapes and names the kind they show most often, "
               f"one of {len(loaded.class_names)} ({', '.join(loaded.class_names)}), so any picture gets one of them. For photos, choose **timm pretrained model** in the sidebar "
               "(deit_small_patch16_224 is the ATS paper's); it needs its weights from the network or a "
               "Hugging Face cache.")


def image_input(key: str) -> tuple[str, bytes] | None:
    """An uploaded image, one sent from the Dataset page, or a bundled sample: (name, bytes)."""
    samples = sorted(SAMPLES.glob("*.png"))
    left, right = st.columns([3, 2])
    upload = left.file_uploader("Upload an image", type=list(IMAGE_TYPES), key=f"{key}_upload")
    choice = right.selectbox("...or pick a sample", [p.name for p in samples], key=f"{key}_sample",
                             disabled=upload is not None)
    if upload is not None:
        return upload.name, upload.getvalue()
    sent = st.session_state.get("image_from_dataset")
    if sent is not None:
        st.info(f"Showing {sent[0]} from the Dataset page.")
        if not st.button("Back to the samples", key=f"{key}_unsend"):
            return sent
        del st.session_state["image_from_dataset"]
    if choice:
        return choice, (SAMPLES / choice).read_bytes()
    return None


def prepare(loaded: LoadedModel, name: str, data: bytes) -> tuple[torch.Tensor, np.ndarray] | None:
    """Decode and preprocess; a bad file gets its sentence and None."""
    try:
        img = read_image(data, name)
    except InputError as err:
        st.error(str(err))
        return None
    x = loaded.prepare(img)
    return x, loaded.to_uint8(x[0])


def show_stages(image: np.ndarray, res: ATSResult, index: int = 0, key: str = "stages") -> None:
    """The stage overlays, then one stage's score heatmap and sampling picture."""
    if not res.stages:
        st.info("No stage reduces with these settings: every block keeps every token.")
        return
    panels = overlays.stage_overlays(image, res, index)
    st.caption(STAGE_LEGEND[get(res.config.method).groups])
    per_row = 5
    for start in range(0, len(panels), per_row):
        cols = st.columns(per_row)
        for col, (title, img) in zip(cols, panels[start:start + per_row]):
            col.image(img, caption=title, width="stretch")
    blocks = [s.block for s in res.stages]
    if len(blocks) > 1:
        block = st.select_slider("Stage to inspect", options=blocks, value=blocks[-1], key=f"{key}_block",
                                 format_func=lambda b: f"block {b}")
    else:
        block = blocks[0]
    stage = res.stages[blocks.index(block)]
    method = get(res.config.method)
    left, right = st.columns(2)
    left.plotly_chart(viz.score_heatmap(stage, res.grid, index, method.evidence), width="stretch",
                      key=f"{key}_heat")
    if method.samples:
        right.plotly_chart(viz.sampling_figure(stage, index), width="stretch", key=f"{key}_cdf")
    else:
        right.image(overlays.stage_view(image, res, stage, index), width="stretch",
                    caption=f"Block {stage.block}: {method.about}")


def trace_json(res: ATSResult, full: ATSResult, loaded: LoadedModel, settings: Settings, name: str) -> str:
    payload = {
        "image": name,
        "model": settings.model,
        "settings": {"method": settings.config.method, "id": settings.config.id,
                     "stages": settings.stages_text or "default"},
        **res.summary(0),
        "top5": viz.topk(res.logits[0], loaded.class_names),
        "top5_full": viz.topk(full.logits[0], loaded.class_names),
    }
    return json.dumps(payload, indent=2)


def extremes_gallery(per_image, root: Path, setting: str, n: int = 5) -> None:
    """The images that kept the most and the fewest tokens under one setting, each a click
    away from the Image page."""
    rows = per_image[per_image["setting"] == setting].sort_values("tokens_final")
    if rows.empty:
        return
    st.subheader(f"Most and fewest tokens kept under {setting}")
    for title, part in (("Fewest", rows.head(n)), ("Most", rows.tail(n).iloc[::-1])):
        st.markdown(f"**{title}**")
        for col, row in zip(st.columns(n), part.itertuples()):
            path = root / row.image
            try:
                data = path.read_bytes()
                img = read_image(data, row.image)  # upright, as the model saw it (a path would not be)
            except (OSError, InputError):  # moved or changed since the sweep: nothing to show
                continue
            col.image(img, caption=f"{row.image}: {row.tokens_final} tokens, {row.gflops:.3f} GFLOPs",
                      width="stretch")
            if col.button("Open on the Image page", key=f"gallery_{title}_{row.Index}"):
                st.session_state["image_from_dataset"] = (row.image, data)
                st.switch_page("pages/1_Image.py")
