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


# ---------------------------------------------------------------------------- one rule for what lies inside a typed folder


def _results_folder(folder: Path, dataset: str = "/srv/elsewhere/private-set") -> Path:
    """A minimal results folder, as load_results reads one."""
    folder.mkdir(parents=True)
    (folder / "per_image.csv").write_text("image,setting,method,value,pred,label,correct,gflops,tokens_final\n")
    (folder / "summary.csv").write_text("setting,method,value,top1,gflops_mean\n")
    (folder / "results.json").write_text(f'{{"model": "embedded", "images": 11, "dataset": "{dataset}", '
                                         '"full_gflops": 0.375, "class_names": ["circle"]}')
    return folder


def test_a_class_folder_linking_out_of_the_dataset_is_neither_walked_nor_named(monkeypatch, tmp_path):
    """Issue 24, item 5: the outside folder's file names leaked into the notes."""
    from ats_viz.data import load_dataset
    from ats_viz.synthetic import write_imagefolder

    shared = tmp_path / "shared"
    root = write_imagefolder(shared / "shapes", per_class=1, seed=3)
    names = sorted(p.name for p in root.iterdir())
    private = tmp_path / "private" / "square"
    private.mkdir(parents=True)
    (private / "secret_name.png").write_bytes(next((root / "square").iterdir()).read_bytes())
    (root / "square").rename(tmp_path / "square-was-here")
    (root / "square").symlink_to(private)
    for roots in (None, str(shared)):
        if roots is None:
            monkeypatch.delenv("ATS_VIZ_ROOTS", raising=False)
        else:
            monkeypatch.setenv("ATS_VIZ_ROOTS", roots)
        ds = load_dataset(root, names)
        assert len(ds.items) == 9 and not any(it.label == "square" for it in ds.items)
        notes = " ".join(ds.notes())
        assert "secret_name" not in notes and str(private) not in notes
        assert "1 class folder(s) left out: they are links to folders outside the folder" in notes and "'square'" in notes
    only = shared / "only-links"
    only.mkdir()
    (only / "square").symlink_to(private)
    with pytest.raises(InputError) as err:
        load_dataset(only, names)
    assert "has no images in class folders of its own; 'square' link to folders outside it, which are not read" \
        in str(err.value)
    assert "secret_name" not in str(err.value) and str(private) not in str(err.value)


def test_a_labels_csv_never_looks_outside_the_folder(tmp_path):
    """A CSV's names that lead out are missing, whether or not a file is there (no probing)."""
    from ats_viz.data import load_dataset

    (tmp_path / "data").mkdir()
    (tmp_path / "outside.png").write_bytes(b"x")
    csv = tmp_path / "data" / "labels.csv"
    csv.write_text("../outside.png,circle\n../outside,circle\n../absent.png,circle\n")
    with pytest.raises(InputError, match="The CSV names 3 file"):  # 2 would say '../outside' found outside.png
        load_dataset(tmp_path / "data", ["circle"], csv)
    csv.write_text("../outside.png,circle\n../outside,square\n")
    with pytest.raises(InputError, match="The CSV names 2 file"):  # not 'two labels': that too would tell
        load_dataset(tmp_path / "data", ["circle", "square"], csv)


def test_a_results_folder_whose_files_link_out_is_refused_under_roots(monkeypatch, tmp_path):
    """Issue 24, item 6: confine() resolved the folder only, and load_results followed its files' links."""
    from ats_viz.results import load_results

    inside = tmp_path / "shared"
    outside = _results_folder(tmp_path / "private" / "run")
    folder = inside / "run"
    folder.mkdir(parents=True)
    for name in ("per_image.csv", "summary.csv", "results.json"):
        (folder / name).symlink_to(outside / name)
    monkeypatch.setenv("ATS_VIZ_ROOTS", str(inside))
    with pytest.raises(InputError) as err:
        load_results(confine(folder))
    said = str(err.value)
    assert "link to files outside the folder, which this server does not read" in said and "'per_image.csv'" in said
    assert str(outside) not in said and "private" not in said
    own = _results_folder(inside / "own")
    assert load_results(confine(own)).manifest["images"] == 11  # a plain folder still opens
    monkeypatch.delenv("ATS_VIZ_ROOTS")
    assert load_results(folder).manifest["images"] == 11  # unconfined, as on one's own machine


def test_a_loop_of_links_is_refused_with_a_sentence(monkeypatch, tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    monkeypatch.setenv("ATS_VIZ_ROOTS", str(tmp_path))
    with pytest.raises(InputError, match="is outside the folders this server may read"):
        confine(tmp_path / "a")
