"""Reading and validating what people give us: images (and, below, datasets).

Every refusal is an InputError with a sentence saying what was wrong and what to do.
Decoding never runs on a header we have not checked (the decompression-bomb guard).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import random
import re
import shutil
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from . import cachebudget
from .cachebudget import cache_root
from .atomic import atomic_folder, atomic_write, why_not
from .errors import InputError
from .paths import within

MAX_PIXELS = 40_000_000  # 40 megapixels: a 20000 x 20000 image (400 MP) is refused unread
MIN_SIDE = 16  # one patch
IMAGE_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")
MAX_SCAN_ENTRIES = 200_000  # files and folders walked in a dataset folder before it is refused
MAX_ZIP_BYTES = 4_000_000_000  # uncompressed: a zip bomb is refused before anything is written
MAX_ZIP_FILES = 200_000


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha over white, 16-bit and float scaled, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.round().astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def read_image(data: bytes, name: str = "the image") -> Image.Image:
    """Decode uploaded bytes into an RGB image (a GIF's first frame), upright, or say why not.

    Upright: a phone stores a portrait photo as landscape pixels plus an EXIF orientation,
    which is applied here, so the model sees what the person saw.
    """
    if not data:
        raise InputError(f"'{name}' is empty (0 bytes). Choose an image file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise InputError(f"'{name}' is {w} x {h} pixels, more than the {MAX_PIXELS // 1_000_000} "
                                 "megapixel limit. Downscale it first.")
            if min(w, h) < MIN_SIDE:
                raise InputError(f"'{name}' is only {w} x {h} pixels; the model needs at least "
                                 f"{MIN_SIDE} x {MIN_SIDE}. Choose a larger image.")
            img = next(ImageSequence.Iterator(img))  # a GIF or multi-page TIFF: the first frame
            img.load()
            img = ImageOps.exif_transpose(img)
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        if isinstance(err, UnidentifiedImageError):
            raise InputError(f"'{name}' is not an image we can read. Use PNG, JPEG, WebP, BMP, TIFF or GIF.") from None
        raise InputError(f"'{name}' declares far more than the {MAX_PIXELS // 1_000_000} megapixel limit "
                         f"({err}). Downscale it first.") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise InputError(f"'{name}' looks truncated or corrupt ({str(err)[:120]}). Try exporting it again.") from None
    return to_rgb(img)


# ---------------------------------------------------------------------------- datasets
# A dataset is a folder in ImageFolder layout (one subfolder per class) or a folder plus a
# CSV of filename,label. Labels are matched to the model's class names; what matches no
# class is left out and counted, never fatal unless nothing matches at all. ImageNet's own
# LOC_val_solution.csv is such a CSV: its ImageId lacks the .JPEG and its PredictionString
# starts with the synset ("n01751748 123 45 ...", then the boxes).


_SYNSET = re.compile(r"n\d{8}")
_HEADER_FILE = {"filename", "file", "image", "path", "name", "imageid", "image_id", "file_name"}
_HEADER_LABEL = {"label", "class", "target", "category", "predictionstring", "synset", "wnid", "class_index"}


@dataclass(frozen=True)
class DatasetItem:
    """One image of a dataset: where it is, what the dataset calls it, which class that is."""

    path: Path  # absolute
    name: str  # relative to the dataset's folder, forward slashes
    label: str  # the label as the dataset writes it
    target: int  # index into the model's class names


@dataclass
class Dataset:
    """The images to evaluate, matched to a model's classes, and what was left out."""

    root: Path
    items: list[DatasetItem]
    class_names: list[str]
    found: int  # images found before unmatched labels and subsetting took any out
    unmatched: dict[str, int] = field(default_factory=dict)  # label -> images left out for it
    badly_named: list[str] = field(default_factory=list)  # left out: names not valid UTF-8
    outside: list[str] = field(default_factory=list)  # left out: links leading out of the folder
    outside_folders: list[str] = field(default_factory=list)  # left out: class folders linking out of it

    def fingerprint(self) -> list[tuple[str, int, int]]:
        """(path, size, mtime in ns) of every image: a changed file changes the fingerprint."""
        return fingerprint(self.items)

    def notes(self) -> list[str]:
        """Sentences about what was left out, for a page or the command line."""
        notes = []
        if self.unmatched:
            left = sum(self.unmatched.values())
            labels = ", ".join(f"'{k}' ({v})" for k, v in sorted(self.unmatched.items())[:10])
            more = f" and {len(self.unmatched) - 10} more" if len(self.unmatched) > 10 else ""
            notes.append(f"{left} image(s) left out: their labels match none of the model's classes: "
                         f"{labels}{more}.")
        if self.badly_named:
            notes.append(f"{len(self.badly_named)} image(s) left out: their file names are not valid UTF-8 "
                         f"(rename them): {_few(self.badly_named)}.")
        if self.outside:
            notes.append(f"{len(self.outside)} image(s) left out: they are links to files outside the folder "
                         f"(copy the files in instead): {_few(self.outside)}.")
        if self.outside_folders:  # named by the link's own name: what lies outside is never listed
            notes.append(f"{len(self.outside_folders)} class folder(s) left out: they are links to folders outside "
                         f"the folder (copy them in instead): {_few(self.outside_folders)}.")
        matched = self.found - sum(self.unmatched.values()) - len(self.badly_named) - len(self.outside)
        if len(self.items) < matched:
            notes.append(f"Evaluating a random subset of {len(self.items)} of {matched} images.")
        return notes


def fingerprint(items: Iterable[DatasetItem]) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of each image: a changed file changes the fingerprint."""
    out = []
    for item in items:
        st = item.path.stat()
        out.append((str(item.path), st.st_size, st.st_mtime_ns))
    return out


def _few(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(f"'{x}'" for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def match_labels(labels: Iterable[str], class_names: Sequence[str]) -> dict[str, int]:
    """Map each label that names a class to its index: exact, then case-insensitive, then
    (for a 1000-class model) an ImageNet synset id such as n01440764, then a class index
    (0-based, in the model's order: for ImageNet, sorted synsets, as timm and torchvision
    number them; not the devkit's 1-based ILSVRC2012_ID). Others are absent."""
    exact = {c: i for i, c in enumerate(class_names)}
    folded: dict[str, int] = {}
    for i, c in enumerate(class_names):
        folded.setdefault(c.casefold(), i)
    synsets: dict[str, int] | None = None
    out = {}
    for label in labels:
        if label in exact:
            out[label] = exact[label]
        elif label.casefold() in folded:
            out[label] = folded[label.casefold()]
        elif len(class_names) == 1000 and _SYNSET.fullmatch(label):
            if synsets is None:
                from timm.data import ImageNetInfo

                synsets = {s: i for i, s in enumerate(ImageNetInfo().label_names())}
            if label in synsets:
                out[label] = synsets[label]
        elif label.isdecimal() and int(label) < len(class_names):
            out[label] = int(label)
    return out


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower().lstrip(".") in IMAGE_TYPES


def _imagefolder(root: Path, linked_out: list[str]) -> list[tuple[Path, str]]:
    """(image, class folder name) pairs; class folders that link out of ``root`` are added to
    ``linked_out`` by their own names, never walked."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(f"The folder '{root}' is empty. Put the images in one subfolder per class "
                         "(ImageFolder layout), or give a CSV of filename,label.")
    pairs, seen = [], 0
    for folder in sorted(p for p in entries if p.is_dir()):
        if within(folder, root) is None:  # walking it would list a folder outside (past ATS_VIZ_ROOTS)
            linked_out.append(folder.name.encode("utf-8", "replace").decode())
            continue
        files = []
        for parent, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            # A mistyped path ("/", a home folder) would otherwise be walked to the end.
            seen += len(dirs) + len(names)
            if seen > MAX_SCAN_ENTRIES:
                raise InputError(f"'{root}' holds more than {MAX_SCAN_ENTRIES:,} files and folders, which is "
                                 "more than a dataset for this page. Give the dataset's own folder, or a CSV "
                                 "of filename,label.")
            files += [p for p in (Path(parent) / n for n in names) if _is_image(p)]
        pairs += [(p, folder.name) for p in sorted(files)]
    if not pairs:
        if linked_out:
            raise InputError(f"'{root}' has no images in class folders of its own; {_few(linked_out)} "
                             "link to folders outside it, which are not read: copy the images in instead.")
        if any(_is_image(p) for p in entries):
            raise InputError(f"'{root}' has images but no class subfolders. Put each class's images in a "
                             "subfolder named after the class (ImageFolder layout), or give a CSV of "
                             "filename,label.")
        raise InputError(f"The folder '{root}' has no images ({', '.join(IMAGE_TYPES)}) in its subfolders.")
    return pairs


def _csv_pairs(root: Path, csv_path: Path) -> list[tuple[Path, str]]:
    if not csv_path.is_file():
        raise InputError(f"No CSV file at '{csv_path}'.")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"'{csv_path.name}' is not a UTF-8 text file; save it as CSV (filename,label).") from None
    rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), 1) if any(c.strip() for c in r)]
    if rows and rows[0][1][0].strip().lower() in _HEADER_FILE and len(rows[0][1]) > 1 \
            and rows[0][1][1].strip().lower() in _HEADER_LABEL:
        rows = rows[1:]
    if not rows:
        raise InputError(f"The CSV '{csv_path.name}' has no rows; write one filename,label per line.")
    pairs, missing = [], []
    seen: dict[Path, tuple[int, str, str]] = {}  # the file, resolved -> (line, name as written, label)
    base = root.resolve()
    for line, row in rows:
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"Line {line} of '{csv_path.name}' is not filename,label: {','.join(row)[:80]!r}.")
        name, label = row[0].strip(), row[1].strip()
        first = label.split()[0]
        if first != label and _SYNSET.fullmatch(first):  # a PredictionString: the synset, then boxes
            label = first
        # One rule for a file named twice, whatever the spelling ('a.png', './a.png', 'x/../a.png',
        # a link): the resolved file is the key, as it is the results' (DatasetItem.name).
        path = _image_path(base, name)
        if path in seen:
            _same_file_again(csv_path.name, base, path, seen[path], (line, name, label))
            continue
        seen[path] = (line, name, label)
        if not path.is_relative_to(base) or not path.is_file():
            missing.append(name)
        else:
            pairs.append((path, label))
    if missing:
        raise InputError(f"The CSV names {len(missing)} file(s) that are not in '{root}': {_few(missing)}. "
                         "Filenames are relative to the folder.")
    return pairs


def _same_file_again(csv_name: str, base: Path, path: Path, first: tuple[int, str, str],
                     again: tuple[int, str, str]) -> None:
    """A CSV naming one file twice: with the same label it counts once; with two labels it is
    refused, since which one is right is the person's call, not ours."""
    (line1, name1, label1), (line2, name2, label2) = first, again
    if label1 == label2:
        return
    shown = path.relative_to(base).as_posix() if path.is_relative_to(base) else name1
    spelt = "" if name1 == name2 == shown else f" (written '{name1}' and '{name2}')"
    raise InputError(f"The CSV '{csv_name}' gives '{shown}' two labels: '{label1}' on line {line1} and "
                     f"'{label2}' on line {line2}{spelt}. Keep one line per file, with its right label.")


def _image_path(base: Path, name: str) -> Path:
    """The file a CSV names, resolved; a name without an image extension (ImageNet's ImageId)
    gets the first that exists, .JPEG first. Only what lies inside ``base`` is looked at: a name
    leading out comes back outside it, unprobed (whether a file is there is never told)."""
    path = within(base / name, base)
    if path is None:  # outside, or a loop of links
        try:
            return (base / name).resolve()
        except (OSError, RuntimeError):
            return Path(os.path.normpath(base / name))  # no file: is_file() says so
    if path.is_file() or name.rsplit(".", 1)[-1].lower() in IMAGE_TYPES:
        return path
    for ext in ("JPEG", *IMAGE_TYPES, *(t.upper() for t in IMAGE_TYPES)):
        candidate = within(base / f"{name}.{ext}", base)
        if candidate is not None and candidate.is_file():
            return candidate
    return path


def load_dataset(folder: str | Path, class_names: Sequence[str], csv_path: str | Path | None = None,
                 subset: int | None = None, seed: int = 0) -> Dataset:
    """Find a dataset's images and match their labels to ``class_names``.

    ``subset`` keeps that many images chosen at random (seeded), in their original order, so
    a quick look at a large set is a fair sample of it.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"No folder at '{root}'. Give the folder that holds the images.")
    linked_out: list[str] = []  # class folders that link out of the folder: left out, never walked
    pairs = _csv_pairs(root, Path(csv_path).expanduser()) if csv_path else _imagefolder(root, linked_out)
    matched = match_labels({label for _, label in pairs}, class_names)
    unmatched: dict[str, int] = {}
    for _, label in pairs:
        if label not in matched:
            unmatched[label] = unmatched.get(label, 0) + 1
    if not matched:
        labels = sorted(unmatched)
        raise InputError(f"None of the labels ({_few(labels)}) match the model's classes ({_few(list(class_names))}). "
                         "Name the class folders (or the CSV's labels) after the model's classes.")
    base = root.resolve()
    items, badly_named, outside = [], [], []
    listed: dict[str, tuple[str, Path]] = {}  # resolved name -> (label, the path it was listed under)
    twice = 0
    for p, label in pairs:
        if label not in matched:
            continue
        if within(p, base) is None:  # a link out: reading it would step past ATS_VIZ_ROOTS
            outside.append(p.relative_to(root).as_posix().encode("utf-8", "replace").decode())
            continue
        name = p.resolve().relative_to(base).as_posix()
        if name in listed:  # a link in a class folder to another image of the folder: results key by name
            if listed[name][0] != label:
                first, again = (q.relative_to(root).as_posix() if q.is_relative_to(root) else str(q)
                                for q in (listed[name][1], p))
                raise InputError(f"'{name}' is in '{root}' twice with two labels: '{listed[name][0]}' (as "
                                 f"'{first}') and '{label}' (as '{again}'). Remove the link, or copy the file.")
            twice += 1  # the same file and label again: counted once
            continue
        listed[name] = (label, p)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # tables and CSV files cannot hold such a name
            badly_named.append(name.encode("utf-8", "replace").decode())
            continue
        items.append(DatasetItem(p.resolve(), name, label, matched[label]))
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
            raise InputError(f"The subset size must be a whole number of at least 1 (got {subset!r}).")
        if subset < len(items):
            keep = sorted(random.Random(seed).sample(range(len(items)), subset))
            items = [items[i] for i in keep]
    if not items and outside and not badly_named:
        raise InputError(f"Every image in '{root}' is a link to a file outside it: copy the files in instead.")
    if not items:
        raise InputError(f"No image in '{root}' has a file name in valid UTF-8: rename them.")
    return Dataset(base, items, list(class_names), len(pairs) - twice, unmatched, badly_named, outside,
                   linked_out)


def dataset_stamp(folder: str | Path, csv_path: str | Path | None = None) -> tuple:
    """A cheap sign that :func:`load_dataset` would list something else: the mtimes of the
    folder and of its immediate subfolders (adding, removing or renaming a file changes its
    folder's), and the CSV's mtime and size. A few stats, where listing walks every file;
    changes deeper than the class folders are not seen."""
    def stat(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:  # missing: load_dataset says so, the stamp need not
            return None
        return st.st_mtime_ns, st.st_size

    root = Path(folder).expanduser()
    try:
        with os.scandir(root) as entries:
            subfolders = sorted((e.name, e.stat().st_mtime_ns) for e in entries  # not a folder linked out
                                if not e.name.startswith(".") and (not e.is_symlink() or within(e.path, root))
                                and e.is_dir())
    except OSError:
        subfolders = []
    return stat(root), tuple(subfolders), stat(Path(csv_path).expanduser()) if csv_path else None


class Decoded(torch.utils.data.Dataset):
    """Dataset items decoded and preprocessed, for a DataLoader and its worker processes.

    An unreadable image comes back as its sentence instead of raising, so one bad file
    neither stops the workers nor the sweep: the main process lists it as skipped.
    """

    def __init__(self, items: Sequence[DatasetItem], transform) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        item = self.items[index]
        try:
            img = read_image(item.path.read_bytes(), item.name)
        except (InputError, OSError) as err:
            return index, None, str(err)
        return index, self.transform(img), None


def collate_decoded(batch: list[tuple[int, torch.Tensor | None, str | None]]
                    ) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """(indices of the images read, their tensors stacked or None, (index, why) of the others)."""
    good = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, why) for i, x, why in batch if x is None]
    return [i for i, _ in good], (torch.stack([x for _, x in good]) if good else None), bad


@functools.cache
def _heldout_key() -> str:
    """What the bundled set's images depend on: its seed and how the shapes are drawn.

    One image per class stands for the drawing, so a cached set from an older version of
    ``synthetic`` (another seed, another texture) is never read for this one.
    """
    from .synthetic import CLASSES, HELDOUT_SEED, sample

    digest = hashlib.sha1(str(HELDOUT_SEED).encode())
    for ci in range(len(CLASSES)):
        digest.update(sample((HELDOUT_SEED, ci, 0), label=ci)[0].tobytes())
    return f"{HELDOUT_SEED}-{digest.hexdigest()[:10]}"


def heldout_description() -> str:
    """The bundled held-out set in words, for a page."""
    from .synthetic import CLASSES, HELDOUT_PER_CLASS, HELDOUT_SEED

    return f"{len(CLASSES) * HELDOUT_PER_CLASS:,} synthetic scenes of 1 to 8 shapes (seed {HELDOUT_SEED})"


def heldout_path(per_class: int | None = None) -> Path:
    """Where the bundled held-out set (``per_class`` images per class) lives in the cache."""
    from .synthetic import HELDOUT_PER_CLASS

    return cache_root() / f"heldout-{_heldout_key()}-{per_class or HELDOUT_PER_CLASS}"


def heldout_folder(per_class: int | None = None) -> Path:
    """The bundled held-out set as an ImageFolder, written into the cache on first use.

    It is written to a temporary folder and renamed, so a half-written set is never read.
    """
    from .synthetic import HELDOUT_PER_CLASS, HELDOUT_SEED, write_imagefolder

    per_class = per_class or HELDOUT_PER_CLASS
    out = heldout_path(per_class)
    if out.is_dir():
        cachebudget.touch(out)
        return out
    with atomic_folder(out) as tmp:  # another process finishing first wrote the same images
        write_imagefolder(tmp, per_class, HELDOUT_SEED)
    cachebudget.trim(keep=[out])
    return out


# ---------------------------------------------------------------------------- uploaded archives


def _archive_root(root: Path) -> Path:
    """Step into a lone wrapping folder ("shapes/circle/..."), but not into a lone class folder."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir() or any(_is_image(p) for p in entries[0].iterdir()):
            return root
        root = entries[0]


def extract_zip(data: bytes, name: str = "the archive",
                kinds: Sequence[str] = (*IMAGE_TYPES, "csv")) -> Path:
    """Unpack an uploaded ZIP (only files whose extension is in ``kinds``) into the cache.

    The folder is named by the archive's digest, so uploading the same archive again reuses
    it, files, mtimes and all, and cached sweep results stay valid. Paths that would leave
    the folder, links and oversized archives are refused or skipped, never written. It is
    unpacked within the cache's budget (``cachebudget``): the least recently used entries make
    room, and an archive that cannot fit is refused before anything is written.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise InputError(f"'{name}' is not a ZIP archive we can read. Zip the folder again and upload that.") from None
    wanted = [m for m in members if not m.is_dir() and m.filename.rsplit(".", 1)[-1].lower() in kinds
              and not any(part.startswith(".") or part in ("", "..", "__MACOSX")
                          for part in m.filename.replace("\\", "/").split("/"))
              and not m.filename.startswith("/") and (m.external_attr >> 16) & 0o170000 != 0o120000]
    if not wanted:
        raise InputError(f"'{name}' holds no {', '.join(kinds)} files.")
    if len(wanted) > MAX_ZIP_FILES or sum(m.file_size for m in wanted) > MAX_ZIP_BYTES:
        raise InputError(f"'{name}' unpacks to more than {MAX_ZIP_FILES:,} files or "
                         f"{MAX_ZIP_BYTES // 1_000_000_000} GB. Evaluate a smaller part of it.")
    out = cache_root() / "uploads" / hashlib.sha256(data).hexdigest()[:24]
    if out.is_dir():
        cachebudget.touch(out)
    else:
        need = sum(cachebudget.blocks(m.file_size) for m in wanted)  # zipfile reads no more than a member declares
        try:
            # another session unpacking the same archive first: the same files
            with cachebudget.room(need, name), atomic_folder(out) as tmp:
                for m in wanted:
                    target = tmp / m.filename.replace("\\", "/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(m) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except OSError as err:
            if err.errno is None:  # raised while reading the archive, not while writing it out
                raise InputError(f"'{name}' is damaged ({str(err)[:120]}). Zip the folder again.") from None
            raise InputError(f"'{name}' could not be unpacked into the cache: {why_not(err)}. Free some space "
                             "or set ATS_VIZ_CACHE to a folder with room.") from None
        except (zipfile.BadZipFile, EOFError, zlib.error) as err:  # a corrupt member
            raise InputError(f"'{name}' is damaged ({str(err)[:120]}). Zip the folder again.") from None
    return _archive_root(out)


def keep_upload(data: bytes | memoryview, name: str, kind: str, suffix: str) -> Path:
    """An uploaded file kept in the cache as ``uploads/<kind>-<digest><suffix>``, within the
    cache's budget (the least recently used entries go first): the same bytes again, from any
    session, reuse it. For what is read from a path (a labels CSV, a video for OpenCV)."""
    path = cache_root() / "uploads" / f"{kind}-{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
    try:
        if path.is_file():
            cachebudget.touch(path)
            return path
        with cachebudget.room(cachebudget.blocks(len(data)), name):
            atomic_write(path, data)
    except OSError as err:
        raise InputError(f"'{name}' could not be kept on this server: {why_not(err)}. Free some space or set "
                         "ATS_VIZ_CACHE to a folder with room.") from None
    return path
