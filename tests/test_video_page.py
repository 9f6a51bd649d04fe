"""The Video page through Streamlit's AppTest: the sample clip, an upload, a bad upload."""

import pytest
from streamlit.testing.v1 import AppTest

from conftest import open_app
from ats_viz import synthetic


@pytest.fixture
def page(monkeypatch, tmp_path):
    monkeypatch.setenv("ATS_VIZ_CACHE", str(tmp_path / "cache"))  # where uploads are kept
    return open_app(monkeypatch, "3_Video.py")


def analyse(at: AppTest, frames: int) -> AppTest:
    at.number_input(key="video_max_frames").set_value(frames).run()
    at.button(key="video_go").click().run()
    assert not at.exception, at.exception
    return at


def test_sample_clip_is_analysed_and_explored(page):
    at = analyse(page, 4)
    assert at.metric[0].value == "4"
    slider = at.select_slider(key="video_frame")
    slider.set_value(int(slider.options[-1].split()[0])).run()  # options are labels: "54 (4.50 s)"
    assert not at.exception
    assert any("patch tokens after the last block" in m.value for m in at.markdown)
    assert len(at.get("download_button")) == 2  # CSV and MP4


def test_an_uploaded_clip_is_analysed(page, tmp_path):
    clip = synthetic.write_video(tmp_path / "mine.mp4", seed=1, frames=6)
    page.file_uploader(key="video_file").set_value(("mine.mp4", clip.read_bytes(), "video/mp4")).run()
    assert not page.exception and not page.error
    at = analyse(page, 90)
    assert at.metric[0].value == "6"


def test_an_upload_is_kept_once_in_the_cache_within_its_budget(page, monkeypatch, tmp_path):
    from ats_viz import cachebudget

    data = synthetic.write_video(tmp_path / "mine.mp4", seed=1, frames=6).read_bytes()
    page.file_uploader(key="video_file").set_value(("Mine.MP4", data, "video/mp4")).run()
    other = open_app(monkeypatch, "3_Video.py")  # a second session, the same bytes
    other.file_uploader(key="video_file").set_value(("copy.mp4", data, "video/mp4")).run()
    assert not page.error and not other.error
    kept = [e.path for e in cachebudget.entries()]  # what the budget counts and may remove
    assert [p.parent.name for p in kept] == ["uploads"] and kept[0].name.startswith("video-")
    assert kept[0].suffix == ".mp4" and kept[0].read_bytes() == data

    # A budget with room for one clip: another session's new clip evicts the least recently used
    monkeypatch.setenv("ATS_VIZ_CACHE_GB", str(1.5 * cachebudget.blocks(len(data)) / 1e9))
    new = synthetic.write_video(tmp_path / "new.mp4", seed=2, frames=6).read_bytes()
    other.file_uploader(key="video_file").set_value(("new.mp4", new, "video/mp4")).run()
    assert not other.error and [e.path.read_bytes() for e in cachebudget.entries()] == [new]
    # and the first session, analysing its clip, writes it again (evicting the other in turn)
    assert analyse(page, 90).metric[0].value == "6"
    assert [e.path.read_bytes() for e in cachebudget.entries()] == [data]


def test_a_broken_upload_gets_a_sentence(page):
    page.file_uploader(key="video_file").set_value(("broken.mp4", b"not a video", "video/mp4")).run()
    assert not page.exception
    assert "not a video" in page.error[0].value
