"""Video: how many tokens ATS keeps frame by frame, what each frame costs, and why."""

import contextlib
import io
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from ats_viz import InputError, cachebudget, synthetic, viz
from ats_viz import video as vid
from ats_viz.data import keep_upload
from ats_viz.models import model_hash, on_device

settings = ui.sidebar()
st.title("Tokens over a video")
st.caption("Each analysed frame runs through the model exactly like an image on the Image page. "
           "Frames are read one at a time and shrunk on read, so long and 4K clips are fine: the stride "
           "and the frame cap bound the work.")
loaded = ui.model_or_error(settings) if settings else None
if loaded is None:
    st.stop()


@st.cache_resource(show_spinner="Making the sample clip...")
def sample_clip() -> tempfile.TemporaryDirectory:
    """The synthetic clip, a scene that fills up one object after another: one per server
    process, in a folder removed when the process ends."""
    folder = tempfile.TemporaryDirectory(prefix="ats-viz-")
    synthetic.write_video(Path(folder.name) / "scene.mp4", seed=7, frames=72)
    return folder


def sample_path() -> Path:
    clip = Path(sample_clip().name) / "scene.mp4"
    if not clip.is_file():  # a temp cleaner took it: make it again
        sample_clip.clear()
        clip = Path(sample_clip().name) / "scene.mp4"
    return clip


def upload_path(upload) -> Path:
    """OpenCV reads files, not bytes: the upload is kept in the cache by its digest, within the
    cache's budget (so it never piles up): written once per upload, again if it was evicted."""
    key = (upload.file_id, upload.name, upload.size)
    kept = st.session_state.get("video_upload")
    with contextlib.suppress(OSError):
        if kept and kept[0] == key and kept[1].is_file():
            cachebudget.touch(kept[1])
            return kept[1]
    suffix = Path(upload.name).suffix.lower()
    path = keep_upload(upload.getbuffer(), upload.name, "video", suffix if suffix[1:] in vid.VIDEO_TYPES else ".mp4")
    st.session_state.video_upload = (key, path)
    return path


left, right = st.columns([3, 2])
upload = left.file_uploader("Upload a video", type=list(vid.VIDEO_TYPES), key="video_file")
use_sample = right.toggle("...or use the sample clip", value=upload is None, disabled=upload is not None,
                          key="video_sample")
try:
    if upload is not None:
        path, source = upload_path(upload), f"upload:{upload.file_id}"
    elif use_sample:
        path, source = sample_path(), "sample"
    else:
        st.stop()
    try:
        info = vid.probe(path, upload.name if upload is not None else None)
    except InputError:
        if upload is not None:  # bytes OpenCV cannot read are not kept
            path.unlink(missing_ok=True)
        raise
except InputError as err:
    st.error(str(err))
    st.stop()

c1, c2, c3 = st.columns(3)
max_frames = c1.number_input("Frames to analyse (at most)", 1, vid.MAX_FRAMES_LIMIT, vid.DEFAULT_MAX_FRAMES,
                             key="video_max_frames")
stride_in = c2.number_input("Stride (every n-th frame; 0 spreads the frames over the clip)", 0, 100_000, 0,
                            key="video_stride")
stride, expected = vid.plan(info, int(stride_in) or None, int(max_frames))
length = f"{info.frame_count} frames, {info.duration_s:.1f} s" if info.frame_count else "length unknown"
c3.markdown(f"**{path.name if upload is None else upload.name}**: {info.width} x {info.height}, "
            f"{info.fps:.3g} fps, {length}, codec {info.codec}.  \n"
            f"Analysing one frame in {stride}: {expected or 'up to ' + str(max_frames)} frames.")

key = (source, model_hash(loaded.net), settings.config.id, stride, int(max_frames), settings.device)
stored = st.session_state.get("video_result")
if stored is not None and not stored[1].frames:
    st.info("Stopped (while queued, or before the first frame was done). Press Analyse again.")
    del st.session_state["video_result"]
    stored = None
if stored is None or stored[0] != key:
    if not st.button("Analyse", type="primary", key="video_go"):
        st.stop()
    # Until the first frame, an empty stopped result: a Stop while queued finds it and says so.
    st.session_state.video_result = (key, vid.VideoResult(info, stride, settings.config, cancelled=True))
    bar = st.progress(0.0, text="Reading frames...")
    st.button("Stop", key="video_stop", help="Keep the frames analysed so far.")
    try:
        with cachebudget.in_use(path), ui.queued():  # an upload stays while it waits and while it is read
            if upload is not None:
                path = upload_path(upload)  # written again if evicted before it was pinned
            vid.analyse_video(on_device(loaded, settings.device), path, settings.config, stride, int(max_frames),
                              progress=lambda done, _: bar.progress(done / expected if expected else 0.0,
                                                                    text=f"{done} of {expected or '?'} frames"),
                              # partial results survive a stop
                              started=lambda result: st.session_state.update(video_result=(key, result)))
    except InputError as err:
        st.error(str(err))
        st.stop()
    st.rerun()

result = stored[1]
if result.cancelled:
    st.warning(f"Stopped after {len(result.frames)} frames: these are shown. Change a setting and analyse "
               "again for the rest.")

s = result.summary()
m = st.columns(4)
m[0].metric("Frames analysed", s.frames, help=f"one frame in {result.stride}")
m[1].metric("GFLOPs per frame", f"{s.mean_gflops:.4f}", f"{s.min_gflops:.4f} to {s.max_gflops:.4f}",
            delta_color="off", help=f"Full model: {s.full_gflops:.4f} per frame")
m[2].metric("Saved over these frames", f"{s.saved_gflops:.3f} GFLOPs", f"{s.saved_fraction:.1%} of full",
            delta_color="off")
m[3].metric("Top-1 changes", s.class_changes)
st.plotly_chart(viz.timeline_figure(result), key="video_timeline")

st.subheader("Frame explorer")
by_frame = {fr.row.frame: fr for fr in result.frames}
chosen = st.select_slider("Frame", options=list(by_frame), key="video_frame",
                          format_func=lambda f: f"{f} ({by_frame[f].row.time_s:.2f} s)")
fr = by_frame[chosen]
total = fr.result.grid[0] * fr.result.grid[1]
a, b = st.columns([1, 3])
a.image(fr.view, caption=f"frame {fr.row.frame}, as the model sees it", width="stretch")
b.markdown(f"**{fr.row.final_tokens} / {total}** patch tokens after the last block, "
           f"**{fr.row.gflops:.4f}** GFLOPs (full {fr.row.full_gflops:.4f}). Top-1 **{fr.row.top1}** "
           f"({fr.row.confidence:.0%})" + (", changed from the frame before." if fr.row.class_changed else "."))
ui.show_stages(fr.view, fr.result, key="video_stages")

st.subheader("Every analysed frame")
table = result.to_csv()
st.dataframe(pd.read_csv(io.StringIO(table)), hide_index=True)
d1, d2 = st.columns(2)
d1.download_button("Per-frame table (CSV)", table, file_name="ats-video.csv", mime="text/csv")
d2.download_button("Annotated video (MP4)", lambda: vid.annotated_mp4(result), file_name="ats-video.mp4",
                   mime="video/mp4", help="The analysed frames with the kept patches, tokens and top-1 burnt in.")
