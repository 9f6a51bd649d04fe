"""Typed paths confined to $ATS_VIZ_ROOTS: resolved first, refused with the roots named, never opened."""

import os
from pathlib import Path

import pytest

from ats_viz import InputError
from ats_viz.paths import allowed_roots, confine, typed_paths_allowed


@pytest.fixture
def tree(tmp_path):
    inside, outside = tmp_path / "shared", tmp_path / "private"
    (inside / "data").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.csv").write_text("a.png,cat\n")
    (inside / "data" / "link").symlink_to(outside)
    return inside, outside


def test_unset_changes_nothing(monkeypatch, tree):
    monkeypatch.delenv("ATS_VIZ_ROOTS", raising=False)
    inside, outside = tree
    assert allowed_roots() is None and typed_paths_allowed()
    assert confine(outside / "secret.csv") == outside / "secret.csv"
    assert confine("~/x") == Path.home() / "x"


def test_only_paths_inside_the_roots_pass(monkeypatch, tree, tmp_path):
    inside, outside = tree
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("ATS_VIZ_ROOTS", f"{inside}{os.pathsep}{other}{os.pathsep}")
    assert allowed_roots() == (inside.resolve(), other.resolve())
    assert confine(inside / "data") == (inside / "data").resolve()
    assert confine(other) == other.resolve()
    assert confine(inside / "data" / "not-yet") == (inside / "data" / "not-yet").resolve()
    for escape in (outside / "secret.csv", inside / ".." / "private" / "secret.csv",
                   inside / "data" / "link" / "secret.csv", Path("/")):
        with pytest.raises(InputError) as err:
            confine(escape)
        assert f"'{escape}' is outside the folders this server may read" in str(err.value)
        assert f"'{inside.resolve()}'" in str(err.value) and f"'{other.resolve()}'" in str(err.value)


def test_refusing_never_opens_the_file(monkeypatch, tree):
    inside, outside = tree
    fifo = outside / "pipe.csv"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    monkeypatch.setenv("ATS_VIZ_ROOTS", str(inside))
    with pytest.raises(InputError, match="is outside"):
        confine(fifo)


def test_set_but_empty_turns_typed_paths_off(monkeypatch, tree):
    inside, _ = tree
    monkeypatch.setenv("ATS_VIZ_ROOTS", "")
    assert allowed_roots() == () and not typed_paths_allowed()
    with pytest.raises(InputError, match="Typed paths are turned off on this server"):
        confine(inside)


def test_a_dataset_folder_never_follows_a_link_out_of_it(tmp_path):
    from ats_viz.data import load_dataset
    from ats_viz.synthetic import write_imagefolder

    root = write_imagefolder(tmp_path / "shapes", per_class=1, seed=3)
    elsewhere = write_imagefolder(tmp_path / "elsewhere", per_class=1, seed=4)
    names = sorted(p.name for p in root.iterdir())
    first = next((elsewhere / names[0]).iterdir())
    (root / names[0] / "borrowed.png").symlink_to(first)
    ds = load_dataset(root, names)
    assert len(ds.items) == 10 and all(it.path.is_relative_to(root.resolve()) for it in ds.items)
    assert any("1 image(s) left out: they are links to files outside the folder" in n
               and f"{names[0]}/borrowed.png" in n for n in ds.notes())
    only = tmp_path / "links" / names[0]
    only.mkdir(parents=True)
    (only / "a.png").symlink_to(first)
    with pytest.raises(InputError, match="is a link to a file outside it"):
        load_dataset(tmp_path / "links", names)
