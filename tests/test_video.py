"""Videos: frames read as asked, rows equal to the image path, exports readable, bad files refused."""

import csv
import dataclasses
import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ats_viz import ATSConfig, InputError, run_ats, synthetic, video, viz
from ats_viz.__main__ import main

CONFIG = ATSConfig(k=98)


def write_clip(path, frames: int, size: tuple[int, int], fps: float = 12.0, fourcc: str = "mp4v"):
    """A square moving over a gradient; frame i has its index in the red channel's corner."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    ramp = np.linspace(40, 200, w, dtype=np.uint8)
    for i in range(frames):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = ramp[None, :, None]
        x = (i * 5) % max(1, w - 20)
        cv2.rectangle(img, (x, h // 3), (x + 20, h // 3 + 20), (0, 0, 255), -1)
        writer.write(img)
    writer.release()
    return path


def read_all(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            return out
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("v") / "square.mp4", 24, (96, 64))


@pytest.fixture(scope="module")
def shapes_clip(tmp_path_factory):
    return synthetic.write_video(tmp_path_factory.mktemp("v") / "shapes.mp4", seed=3, frames=12, fps=12.0)


@pytest.fixture(scope="module")
def analysed(model, shapes_clip):
    return video.analyse_video(model, shapes_clip, CONFIG, stride=2)


def test_probe_reports_the_file(clip):
    info = video.probe(clip)
    assert (info.width, info.height, info.fps, info.frame_count) == (96, 64, 12.0, 24)
    assert info.duration_s == pytest.approx(2.0)


def test_stride_and_frame_cap_are_honoured(clip):
    info = video.probe(clip)
    frames = list(video.read_frames(info, stride=5, max_frames=3))
    assert [f.index for f in frames] == [0, 5, 10]
    assert [f.time_s for f in frames] == pytest.approx([0, 5 / 12, 10 / 12])
    assert [f.index for f in video.read_frames(info, stride=5, max_frames=90)] == [0, 5, 10, 15, 20]
    everything = read_all(clip)
    for f in frames:
        assert np.array_equal(f.rgb, everything[f.index])


def test_default_stride_spreads_the_cap_over_the_clip(clip):
    info = video.probe(clip)
    assert video.plan(info, None, 6) == (4, 6)
    assert video.plan(info, None, 90) == (1, 24)
    assert video.plan(info, 5, 90) == (5, 5)
    with pytest.raises(InputError, match="stride"):
        video.plan(info, 0)
    with pytest.raises(InputError, match="frame cap"):
        video.plan(info, 1, 0)


def test_long_strides_seek_to_the_same_frames(clip, monkeypatch):
    info = video.probe(clip)
    grabbed = list(video.read_frames(info, stride=7, max_frames=90))
    monkeypatch.setattr(video, "SEEK_STRIDE", 2)
    sought = list(video.read_frames(info, stride=7, max_frames=90))
    assert [f.index for f in sought] == [f.index for f in grabbed] == [0, 7, 14, 21]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(grabbed, sought))


def test_large_frames_are_shrunk_on_read(tmp_path):
    info = video.probe(write_clip(tmp_path / "hd.mp4", 2, (1280, 720)))
    frames = list(video.read_frames(info, short_side=448))
    assert len(frames) == 2 and frames[0].rgb.shape == (448, 796, 3)


def test_rows_equal_the_image_path(analysed, model, shapes_clip):
    everything = read_all(shapes_clip)
    assert [r.frame for r in analysed.rows] == list(range(0, 12, 2)) and not analysed.cancelled
    previous = None
    for fr in analysed.frames:
        x = model.prepare(Image.fromarray(everything[fr.row.frame]))
        with torch.no_grad():
            one = run_ats(model.net, x, CONFIG)
        probs = one.logits[0].softmax(0)
        r = fr.row
        assert r.stage_tokens == tuple(int(s.kept_mask[0].sum()) for s in one.stages)
        assert r.final_tokens == int(one.patch_counts[0, -1])
        assert r.gflops == pytest.approx(float(one.gflops[0]))
        assert r.full_gflops == pytest.approx(one.full_gflops)
        assert r.top1_index == int(probs.argmax()) and r.top1 == model.class_names[r.top1_index]
        assert r.confidence == pytest.approx(float(probs.max()), abs=1e-4)
        assert r.class_changed == (previous is not None and previous != r.top1_index)
        previous = r.top1_index
        # The kept trace redraws the frame exactly as the image page would.
        for s_kept, s_one in zip(fr.result.stages, one.stages):
            assert torch.equal(s_kept.kept_mask, s_one.kept_mask)
            assert torch.allclose(s_kept.scores, s_one.scores, atol=1e-5)
        # JPEG at quality 92: about 3 levels on average over a scene of small textured objects
        assert np.abs(fr.view.astype(int) - model.to_uint8(x[0]).astype(int)).mean() < 4


def test_merging_methods_run_frame_by_frame_with_their_groups(model, shapes_clip):
    tome = video.analyse_video(model, shapes_clip, ATSConfig(method="tome", r=8), stride=4)
    assert all(r.stage_tokens == tuple(196 - 8 * (i + 1) for i in range(12)) for r in tome.rows)
    last = tome.frames[0].result.stages[-1]
    assert int(last.groups.max()) + 1 == 196 - 96  # every patch is held by one of the merged tokens
    evit = video.analyse_video(model, shapes_clip, ATSConfig(method="evit", keep_rate=0.5), stride=4)
    # 196 patches -> 98 kept + 1 fused -> 50 + 1 -> 26 + 1
    assert evit.rows[0].stage_tokens == (99, 51, 27) and video.annotate(evit.frames[0]).shape[2] == 3


def test_summary_follows_the_rows(analysed):
    s = analysed.summary()
    g = [r.gflops for r in analysed.rows]
    assert s.frames == len(g) == 6
    assert (s.min_gflops, s.max_gflops) == (pytest.approx(min(g)), pytest.approx(max(g)))
    assert s.mean_gflops == pytest.approx(sum(g) / len(g))
    assert s.saved_gflops == pytest.approx(sum(s.full_gflops - v for v in g))
    assert s.saved_gflops > 0  # K = 98 of 196 prunes
    fig = viz.timeline_figure(analysed)
    assert list(fig.data[0].y) == [r.final_tokens for r in analysed.rows]
    assert list(fig.data[1].y) == pytest.approx(g)


def test_cancel_keeps_what_is_done(model, clip):
    seen = []
    res = video.analyse_video(model, clip, CONFIG, stride=1, progress=lambda d, e: seen.append((d, e)),
                              should_stop=lambda: len(seen) >= 3)
    assert res.cancelled and len(res.frames) == 3
    assert seen == [(1, 24), (2, 24), (3, 24)]


def test_exports_read_back(analysed, tmp_path):
    out = video.write_annotated(analysed, tmp_path / "annotated.mp4")
    back = read_all(out)
    assert len(back) == len(analysed.frames)
    assert back[0].shape[1] == 448  # the 224 px view, doubled
    (tmp_path / "in_memory.mp4").write_bytes(video.annotated_mp4(analysed))
    assert len(read_all(tmp_path / "in_memory.mp4")) == len(analysed.frames)
    table = list(csv.DictReader(io.StringIO(analysed.to_csv())))
    assert [int(t["frame"]) for t in table] == [r.frame for r in analysed.rows]
    blocks = [s.block for s in analysed.frames[0].result.stages]
    first = analysed.rows[0]
    assert [int(table[0][f"tokens_after_block_{b}"]) for b in blocks] == list(first.stage_tokens)
    assert int(table[0]["final_tokens"]) == first.final_tokens and table[0]["top1"] == first.top1
    with pytest.raises(InputError, match="folder"):
        video.write_annotated(analysed, tmp_path / "missing" / "x.mp4")


def _empty(p):
    p.write_bytes(b"")


def _text(p):
    p.write_text("not a video at all\n" * 20)


def _image(p):
    cv2.imwrite(str(p.with_suffix(".png")), np.zeros((32, 32, 3), np.uint8))
    p.write_bytes(p.with_suffix(".png").read_bytes())


def _unknown_codec(p):
    """A well-formed AVI whose codec tag no decoder knows."""
    write_clip(p.with_suffix(".tmp.avi"), 3, (64, 48), fourcc="MJPG")
    p.write_bytes(p.with_suffix(".tmp.avi").read_bytes().replace(b"MJPG", b"ZZZQ"))


def _no_frames(p):
    write_clip(p, 0, (64, 48), fourcc="MJPG")


def _truncated(p):
    write_clip(p.with_suffix(".tmp.mp4"), 10, (64, 48))
    p.write_bytes(p.with_suffix(".tmp.mp4").read_bytes()[:2000])


@pytest.mark.parametrize("make, name, sentence", [
    (_empty, "clip.mp4", "empty \\(0 bytes\\)"),
    (_text, "clip.mp4", "not a video"),
    (_image, "clip.mp4", "is an image, not a video"),
    (_unknown_codec, "clip.avi", "is an AVI file, but its video cannot be decoded: its codec"),
    (_no_frames, "clip.avi", "no frame that can be decoded"),
    (_truncated, "clip.mp4", "is an MP4/MOV file, but its video cannot be decoded"),
])
def test_bad_files_are_refused_with_a_sentence(tmp_path, make, name, sentence):
    path = tmp_path / name
    make(path)
    with pytest.raises(InputError, match=sentence):
        video.probe(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="No video file at .*absent.mp4"):
        video.probe(tmp_path / "absent.mp4")


def test_command_line(clip, tmp_path, capsys):
    out, table = tmp_path / "a.mp4", tmp_path / "a.csv"
    assert main(["video", str(clip), "--out", str(out), "--csv", str(table), "--stride", "6", "--k", "0.5"]) == 0
    assert len(read_all(out)) == 4 and len(table.read_text().splitlines()) == 5
    assert "GFLOPs saved" in capsys.readouterr().out
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert main(["video", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "empty (0 bytes)" in err and "Traceback" not in err


def _not_here(*args, **kwargs):
    raise AssertionError("reached: the refusal should have come first")


@pytest.mark.parametrize("flags, says", [
    (["--csv", "/proc/ats-viz.csv"], "Cannot write '/proc/ats-viz.csv' (--csv): in '/proc', "),
    (["--out", "/proc/ats-viz.mp4"], "Cannot write '/proc/ats-viz.mp4' (--out): in '/proc', "),
    (["--csv", "{ro}/frames.csv"], "(--csv): in '{ro}', it is on a read-only file system."),
    (["--out", "{ro}/annotated.mp4", "--csv", "{tmp}/frames.csv"], "(--out): in '{ro}', it is on a read-only file system."),
    (["--out", "{tmp}/annotated"], "the annotated video is an MP4, so its name must end in .mp4."),
    (["--out", "{tmp}/annotated.avi"], "so its name must end in .mp4."),
    (["--out", "{tmp}/afile/annotated.mp4"], "its folder '{tmp}/afile' is a file, not a folder"),
    (["--csv", "{tmp}/nowhere/frames.csv"], "its folder '{tmp}/nowhere' does not exist"),
    (["--csv", "{tmp}"], "it is a folder"),
    (["--csv", "{tmp}/same.mp4", "--out", "{tmp}/same.mp4"], "--csv and --out both name"),
])
def test_outputs_are_checked_before_the_model_loads_or_a_frame_is_read(clip, tmp_path, read_only, monkeypatch,
                                                                       capsys, flags, says):
    ro = read_only(tmp_path / "ro")
    (tmp_path / "afile").write_text("a file")
    for name in ("load_model", "probe", "analyse_video"):
        monkeypatch.setattr(f"ats_viz.{'models' if name == 'load_model' else 'video'}.{name}", _not_here)
    args = [a.format(tmp=tmp_path, ro=ro) for a in flags]
    assert main(["video", str(clip), "--max-frames", "2", *args]) == 2
    err = capsys.readouterr().err
    assert says.format(tmp=tmp_path, ro=ro) in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "ro"]


def _timeline_rows(top1: list[str], fps: float) -> list[video.FrameRow]:
    """Frame rows of a clip whose top-1 runs through ``top1``, one frame each at ``fps``."""
    return [video.FrameRow(frame=i, time_s=i / fps, stage_tokens=(100,), final_tokens=100 - i, gflops=0.2,
                           full_gflops=0.375, top1=name, top1_index=synthetic.CLASSES.index(name),
                           confidence=0.5, class_changed=i > 0 and name != top1[i - 1])
            for i, name in enumerate(top1)]


def _timeline(rows: list[video.FrameRow], fps: float) -> video.VideoResult:
    info = video.VideoInfo(None, 224, 224, fps, len(rows), "mp4v")
    return video.VideoResult(info, 1, CONFIG, [video.FrameResult(r, None, b"") for r in rows])


def test_a_flickering_top1_is_labelled_sparsely_and_named_in_full_on_hover():
    """32 top-1 changes in 6 s (the issue's clip): written out, the names overlap into a red smear."""
    rows = _timeline_rows([synthetic.CLASSES[(i + 1) // 2 % 10] for i in range(64)], 64 / 6)  # new every other frame
    result = _timeline(rows, 64 / 6)
    changes = [r for r in rows if r.class_changed]
    assert len(changes) == 32
    fig = viz.timeline_figure(result)
    marks = fig.data[2]
    assert list(marks.x) == [r.time_s for r in changes] and list(marks.text) == [r.top1 for r in changes]
    labels = [a for a in fig.layout.annotations if a.font.color == "crimson"]
    gap = (rows[-1].time_s - rows[0].time_s) * viz.LABEL_GAP
    assert 1 < len(labels) <= 1 + 1 / viz.LABEL_GAP
    assert (labels[-1].x, labels[-1].text) == (changes[-1].time_s, changes[-1].top1)  # the class the clip ends on
    assert labels[0].x - changes[0].time_s < gap  # and back to its start
    assert all(b.x - a.x >= gap for a, b in zip(labels, labels[1:]))  # a label's width apart: no overlap
    assert all(any(r.time_s == a.x and r.top1 == a.text for r in changes) for a in labels)  # each names a change
    assert f"32 top-1 changes: {len(labels)} labelled" in fig.layout.title.text and "hover" in fig.layout.title.text

    fig = viz.timeline_figure(_timeline(rows[:6], 64 / 6))
    assert [a.text for a in fig.layout.annotations if a.font.color == "crimson"] == \
        [r.top1 for r in rows[:6] if r.class_changed]  # few changes: every one written
    assert fig.layout.title.text is None


def test_a_burst_of_top1_changes_gets_one_label_so_the_names_do_not_overlap():
    """The sample clip's shape: four changes within half a second, then two far apart, over 6 s.
    Labelled by count alone, the four names were written over each other."""
    rows = _timeline_rows(["star"] + ["triangle", "star"] * 3 + ["star"] * 10 + ["triangle"] * 10 + ["hexagon"] * 48, 12)
    fig = viz.timeline_figure(_timeline(rows, 12))
    changes = [r for r in rows if r.class_changed]
    assert len(changes) == 8 and len(fig.data[2].x) == 8  # every change keeps its marker
    labels = [(a.x, a.text) for a in fig.layout.annotations if a.font.color == "crimson"]
    # the burst is named by the class it settles on (star, for most of a second), not its first change
    assert labels == [(changes[-3].time_s, "star"), (changes[-2].time_s, "triangle"), (changes[-1].time_s, "hexagon")]
    assert fig.layout.title.text.startswith("8 top-1 changes: 3 labelled")

    # frames that all carry one time (no span to spread labels over): one label, not a pile of them
    still = [dataclasses.replace(r, time_s=0.0) for r in rows]
    fig = viz.timeline_figure(_timeline(still, 12))
    assert [a.text for a in fig.layout.annotations if a.font.color == "crimson"] == ["hexagon"]
