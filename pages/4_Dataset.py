"""Dataset: top-1 against GFLOPs over many images, for a ladder of settings of each method."""

import hashlib
import json
import time
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from ats_viz import InputError, cachebudget, timing, viz
from ats_viz import evaluate as ev
from ats_viz.data import (Dataset, dataset_stamp, extract_zip, heldout_description, heldout_folder, keep_upload,
                          load_dataset)
from ats_viz.methods import METHODS, REDUCERS, SWEEP_DEFAULT, parse_ladder
from ats_viz.models import model_hash
from ats_viz.setting import FULL
from ats_viz.paths import OFF, confine, typed_paths_allowed
from ats_viz.results import load_results, results_zip
from ats_viz.stats import summarize

settings = ui.sidebar()
st.title("Accuracy against GFLOPs over a dataset")
st.caption("Every image runs under the full model and under each method at each value of its ladder; GFLOPs are "
           "each image's own. Results are cached on disk by model, setting and image files: widening the "
           "ladder computes only the new settings.")

SOURCES = {"heldout": "Bundled held-out set", "folder": "A folder on this machine", "zip": "Upload a ZIP",
           "saved": "Open saved results"}
FORMATS = {"top1": st.column_config.NumberColumn("top-1", format="percent"),
           "ci_low": st.column_config.NumberColumn("95% CI low", format="percent"),
           "ci_high": st.column_config.NumberColumn("95% CI high", format="percent"),
           "gflops_mean": st.column_config.NumberColumn("mean GFLOPs", format="%.4f"),
           "gflops_saved": st.column_config.NumberColumn("saved", format="percent"),
           "tokens_final_mean": st.column_config.NumberColumn("mean final tokens", format="%.1f"),
           "ms_per_image": st.column_config.NumberColumn("measured ms per image", format="%.2f"),
           "images_per_s": st.column_config.NumberColumn("measured images/s", format="%.1f")}


def show(per_image: pd.DataFrame, summary: pd.DataFrame, full_gflops: float, class_names: list[str]) -> None:
    """The curve, the summary, and the per-setting views; the same for a fresh or a saved sweep."""
    if summary.empty:
        st.info("No image is done yet.")
        return
    axis = "gflops_mean"
    if "ms_per_image" in summary and summary["ms_per_image"].notna().any():
        axis = st.radio("x axis", list(viz.CURVE_X), format_func=lambda c: viz.CURVE_X[c][0], horizontal=True,
                        key="ds_curve_x")
    st.plotly_chart(viz.curve_figure(summary, axis), key="ds_curve")
    st.caption("Error bars: 95% Wilson intervals of top-1. Hover a point for its setting, accuracy, GFLOPs and tokens.")
    st.dataframe(summary, hide_index=True, column_config=FORMATS)
    labels = list(summary["setting"])
    pruned = [s for s, m in zip(labels, summary["method"]) if not viz.is_reference(m)] or labels
    left, right = st.columns(2)
    with left:
        chosen = st.selectbox("GFLOPs per image under", pruned, key="ds_hist_setting")
        st.plotly_chart(viz.gflops_histogram(per_image, chosen, full_gflops), key="ds_hist")
    with right:
        picked = st.multiselect("Settings to compare", labels, default=labels[: min(3, len(labels))],
                                key="ds_compare")
        st.plotly_chart(viz.sweep_tokens_figure(per_image, picked), key="ds_tokens")
    st.plotly_chart(viz.class_accuracy_figure(per_image, picked, class_names), key="ds_classes")
    st.plotly_chart(viz.tokens_by_figure(per_image, chosen, "class"), key="ds_tokens_by_class")
    if viz.objects_per_image(per_image) is not None:  # the bundled scenes say how many objects each holds
        st.plotly_chart(viz.tokens_by_figure(per_image, chosen, "objects"), key="ds_tokens_by_objects")
        st.caption("A busy scene holds more evidence for its label than a simple one. A method whose token "
                   "count follows that keeps more tokens on busy scenes; a fixed-rate one keeps the same number "
                   "whatever the image shows.")
    with st.expander("Every image and setting"):
        only = st.selectbox("Setting", labels, key="ds_table_setting")
        st.dataframe(per_image[per_image["setting"] == only], hide_index=True)


def saved_results() -> None:
    path = ""
    if typed_paths_allowed():
        path = st.text_input("Results folder (written by this page or 'python -m ats_viz evaluate --out')",
                             key="ds_saved_path")
    upload = st.file_uploader("...or a results ZIP downloaded from this page" if typed_paths_allowed() else
                              "Results ZIP downloaded from this page", type=["zip"], key="ds_saved_zip")
    if upload is None and not path.strip():
        st.stop()
    try:
        if upload is not None:
            folder = extract_zip(upload.getvalue(), upload.name, ("csv", "json", "html"))
        else:
            folder = confine(path.strip())
        saved = load_results(folder)
        full, names = float(saved.manifest["full_gflops"]), list(saved.manifest["class_names"])
    except (InputError, KeyError, TypeError, ValueError) as err:
        st.error(str(err) if isinstance(err, InputError) else f"The results manifest is incomplete ({err}).")
        st.stop()
    m = saved.manifest
    how = []  # how a run other than one process at fp32 was made (folders from before have neither key)
    if isinstance(m.get("world_size"), int) and m["world_size"] > 1:
        how.append(f"{m['world_size']} processes")
    if m.get("precision", "fp32") != "fp32":
        how.append(str(m["precision"]))
    st.markdown(f"**{m.get('model', '?')}** on {m.get('images', '?')} images from `{m.get('dataset', '?')}`"
                + (f" ({', '.join(how)})." if how else "."))
    show(saved.per_image, saved.summary, full, names)


def dataset_folder() -> tuple[Path | str, str | None] | None:
    """The chosen dataset's folder and label CSV (None: the class folders)."""
    if source == "heldout":
        with st.spinner("Writing the held-out set (once)..."):
            folder = heldout_folder()
        st.caption(f"{heldout_description()}, which the shipped model never trained on.")
        return folder, None
    if source == "folder":
        if not typed_paths_allowed():
            st.info(OFF)
            return None
        a, b = st.columns(2)
        folder = a.text_input("Folder (ImageFolder: one subfolder per class)", key="ds_folder")
        csv = b.text_input("Labels CSV of filename,label (optional; filenames relative to the folder)",
                           key="ds_csv_path")
        if not folder.strip():
            return None
        return confine(folder.strip()), (confine(csv.strip()) if csv.strip() else None)
    a, b = st.columns(2)
    upload = a.file_uploader("ZIP of an ImageFolder, or of images and a labels CSV", type=["zip"], key="ds_zip")
    labels = b.file_uploader("Labels CSV (optional)", type=["csv"], key="ds_csv_upload")
    if upload is None:
        return None
    folder = extract_zip(upload.getvalue(), upload.name)
    if labels is not None:
        return folder, str(keep_upload(labels.getvalue(), labels.name, "labels", ".csv"))
    inside = sorted(p.name for p in folder.glob("*.csv"))
    choice = b.selectbox("Labels from", ["class folders", *inside], key="ds_zip_labels") if inside else None
    return folder, (str(folder / choice) if choice and choice != "class folders" else None)


@st.cache_data(max_entries=16, show_spinner="Listing the dataset...")
def listing(folder: str, class_names: tuple[str, ...], csv: str | None, subset: int | None, seed: int,
            stamp: tuple) -> Dataset:
    """load_dataset, walked again only when ``stamp`` (dataset_stamp: part of the cache key,
    unused here) says the folder changed: not on every rerun of the page."""
    return load_dataset(folder, class_names, csv, subset, seed)


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


source = st.radio("Dataset", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="ds_source")
if source == "saved":
    saved_results()
    st.stop()

loaded = ui.model_or_error(settings) if settings else None
if loaded is None:
    st.stop()
try:
    chosen = dataset_folder()
except InputError as err:
    st.error(str(err))
    st.stop()
if chosen is None:
    st.stop()

c = st.columns([4, 2, 1, 1])
methods = c[0].multiselect("Methods (full is always in)", list(REDUCERS), list(SWEEP_DEFAULT),
                           format_func=lambda n: METHODS[n].label, key="ds_methods")
subset = c[1].number_input("Images (0: all)", 0, 10_000_000, 0, key="ds_subset",
                           help="A random subset of this size, fixed by the seed.")
seed = c[2].number_input("Seed", 0, 2**31 - 1, 0, key="ds_seed", help="Seeds the subset and the random baseline.")
batch = c[3].number_input("Batch", 1, 1024, 32, key="ds_batch")
device = settings.device  # the sidebar's
ladders = {}
for col, name in zip(st.columns(max(len(methods), 1)), methods):
    param = METHODS[name].param
    ladders[name] = col.text_input(f"{METHODS[name].label}: {param.symbol} ladder", param.ladder,
                                   key=f"ds_ladder_{name}", help=param.help)
st.caption("Stages come from the sidebar (" + (settings.stages_text or "each method's own") + "). The default "
           "ladders span about the same GFLOPs for every method, so their curves share one axis.")
try:
    runs = ev.make_settings({n: parse_ladder(n, t) for n, t in ladders.items()}, settings.config.stages,
                            seed=int(seed), **ui.sidebar_options())
    dataset = listing(str(chosen[0]), tuple(loaded.class_names), chosen[1], int(subset) or None, int(seed),
                      dataset_stamp(*chosen))
except InputError as err:
    st.error(str(err))
    st.stop()
if not ui.check(loaded, runs):
    st.stop()
for note in dataset.notes():
    st.info(note)
st.markdown(f"**{len(dataset.items):,} images** x **{len(runs)} settings** on {ui.SOURCES.get(loaded.name, loaded.name)}.")

# The folder's stamp, not every file's: a rerun (every click) must not stat the whole dataset.
key = hashlib.sha256(json.dumps([model_hash(loaded.net), dataset_stamp(*chosen), [it.name for it in dataset.items],
                                 [it.target for it in dataset.items],
                                 [cfg.id for cfg in runs]]).encode()).hexdigest()
stored = st.session_state.get("ds_run")
if stored is not None and stored["result"] is None:
    st.info("Stopped while queued, before any image was done. Press Evaluate to queue again.")
    del st.session_state["ds_run"]
    stored = None
if stored is None or stored["key"] != key:
    if not (st.session_state.pop("ds_restart", False) or st.button("Evaluate", type="primary", key="ds_go")):
        st.stop()
    stored = {"key": key, "result": None, "cancelled": True}
    st.session_state.ds_run = stored  # partial results survive a stop
    bar = st.progress(0.0, text="Starting...")
    st.button("Stop", key="ds_stop", help="Keep the results so far.")
    live = st.empty()
    shown = [time.monotonic()]

    def on_progress(p: ev.Progress) -> None:
        stored["result"] = p.partial
        parts = [f"{p.done:,} of {p.total:,} image-settings"]
        if p.partial.cached:
            parts.append(f"{len(p.partial.cached)} setting(s) from the cache")
        if p.eta_s:
            parts.append(f"about {duration(p.eta_s)} left")
        bar.progress(p.done / p.total, text=", ".join(parts))
        if p.computed and time.monotonic() - shown[0] > 2:
            live.dataframe(p.partial.summary(), hide_index=True, column_config=FORMATS)
            shown[0] = time.monotonic()

    try:
        # The dataset (an upload, the held-out set) stays in the cache while the sweep reads it.
        with ui.queued(), cachebudget.in_use(dataset.root):
            # run_sweep works on a copy for another device: the model every page shares never moves.
            stored["result"] = ev.run_sweep(loaded, dataset, runs, batch=int(batch), device=device,
                                            progress=on_progress)
        cachebudget.trim(keep=[dataset.root])  # the sweep's cached results count too
    except InputError as err:
        st.session_state.pop("ds_run", None)
        st.error(str(err))
        st.stop()
    stored["cancelled"] = False
    st.rerun()

result: ev.SweepResult = stored["result"]
if "tables" not in stored:
    per_image = result.per_image()
    stored["tables"] = (per_image, summarize(per_image, result.full_gflops))
per_image, summary = stored["tables"]
if stored["cancelled"]:
    st.warning(f"Stopped: {len(per_image):,} of {len(dataset.items) * len(runs):,} image-settings are shown. "
               "Press Evaluate again for all of them.")
    if st.button("Evaluate", type="primary", key="ds_again"):
        st.session_state.pop("ds_run")
        st.session_state.ds_restart = True
        st.rerun()
else:
    how = f"computed in {duration(result.seconds)}" if result.computed else "all from the cache"
    st.success(f"Done: {len(result.computed)} setting(s) computed, {len(result.cached)} from the cache ({how}).")
# Timing is on demand: it takes a while, and a sweep read from the cache should stay instant.
timed = stored.get("timing")
left, right = st.columns([1, 3])
compile = ui.compile_choice(right, "ds_time", device)
if timed is not None and timed["at"] != (int(batch), device, compile):
    timed = None  # timed at another batch size or device, or compiled or not, than the page now asks for
if not stored["cancelled"] and left.button("Measure speed", key="ds_time",
                                           help=f"Times every setting on a few batches of {int(batch)} of these "
                                                "images (1 warm-up and 3 timed, every setting in turn)."):
    # Queued like a sweep: it is as heavy, and timings taken beside another sweep mean little.
    with ui.queued(), st.spinner(f"{'Compiling and timing' if compile else 'Timing'} {len(runs)} settings..."):
        try:
            timed = {"at": (int(batch), device, compile),
                     "table": timing.time_dataset(loaded, dataset, runs, int(batch), device, compile=compile),
                     "machine": str(timing.machine(device)) + (", the settings compiled" if compile else "")}
        except InputError as err:
            st.error(str(err))
    stored["timing"] = timed
if timed is not None:
    summary = timing.add_timing(summary, timed["table"])
    st.caption(f"Measured ms per image: median of 3 batches of {timed['at'][0]}, every setting in turn, on "
               f"{timed['machine']}; the full model as timm's own forward.")
if result.skipped:
    with st.expander(f"{len(result.skipped)} image(s) skipped: unreadable, or outputs that are not numbers"):
        st.dataframe(pd.DataFrame(result.skipped, columns=["image", "why"]), hide_index=True)
show(per_image, summary, result.full_gflops, loaded.class_names)
ui.extremes_gallery(per_image, dataset.root, st.session_state.get("ds_hist_setting") or FULL.id)
d = st.columns(3)
d[0].download_button("Per-image table (CSV)", per_image.to_csv(index=False), file_name="per_image.csv",
                     mime="text/csv")
d[1].download_button("Summary (CSV)", summary.to_csv(index=False), file_name="summary.csv", mime="text/csv")
d[2].download_button("Results folder (ZIP)", lambda: results_zip(result, None if timed is None else timed["table"]),
                     file_name="ats-results.zip",
                     mime="application/zip", help="Open it again here with 'Open saved results'.")
