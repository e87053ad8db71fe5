"""Your own data: ``data.name=folder`` (ImageFolder layout) and ``data.name=listfile``.

``folder``: class folders hold the images (searched recursively; extensions
:data:`IMAGE_EXTENSIONS`, case-insensitive); class names are the folder names, sorted::

    root/cat/*.jpg  root/dog/*.png ...                         (one pool: test held out, below)
    root/train/cat/... root/val/cat/... root/test/cat/...      (given splits; val/ and test/ optional)

``listfile``: ``relative/path label`` lines (``data.train_list``, optional ``data.val_list`` and
``data.test_list``; paths relative to ``data.root``, or to the list's folder without a root).
Labels are integers or strings, any number of classes; the sorted distinct training labels become
classes 0..K-1 and their names (``data.params.class_names``: a list or a file of one name a line,
indexed by an integer label, renames them).

Splits. Without a test split, a seeded stratified hold-out moves ``holdout_per_class`` images of
each class (never more than half of a class, so a 1-image class keeps its image for training) to the
test split, and ``val_per_class`` further images (same cap) to a val split; ``metrics.json``
records it under ``data.holdout``.

Images. Every image is decoded once when the dataset is built, so a broken file is found before
training. Modes: ``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGBA``, ``CMYK``, ``YCbCr`` ... are converted to
RGB with Pillow's ``convert("RGB")`` (alpha dropped, CMYK converted naively), after the EXIF
orientation is applied; 16-bit images (``I;16``, or ``I`` / ``F`` with values up to 65535) are
scaled to 8 bits. Conversions are counted in ``metrics.json`` (``data.converted_modes``).
Unreadable or truncated files are errors naming the files.

Bad input (an empty class folder, a class of val/test that training lacks, an unreadable or
truncated image, a list line whose label training lacks) raises :class:`~longtail.errors.DataError`
naming every culprit; with ``data.skip_bad=true`` they are skipped instead, and the count and the
names are printed and recorded in ``metrics.json`` (``data.skipped``). Files that are not images
(other extensions, hidden files) are ignored, and counted the same way (``data.ignored_files``).

Small images (every image at most ``small_max`` = 64 pixels a side, or ``image_size <= small_max``)
are decoded once into a uint8 array (N, S, S, 3) -- resized to ``image_size``, or to the most common
side but at least 32 (CIFAR's size, so that the ``cifar`` augmentation's crop padding of 4 pixels stays in
proportion) -- and cached on disk (``cache_dir``, default ``$LONGTAIL_CACHE`` or ``~/.cache/longtail``),
keyed by a hash of the file list (paths, sizes, modification times) and the size: the in-memory
CPU / GPU-resident paths then apply as for CIFAR (augment ``cifar``, ResNet-32 by the recipes'
``model.backbone: auto``, normalization by the training set's channel statistics). Larger images are
read lazily (augment ``imagenet`` with crop ``image_size``, default 224, ImageNet statistics, ResNet-50);
the result of their verification pass is cached the same way.

Shot groups: ``data.shot_thresholds: auto`` (the folder recipes) uses :func:`auto_shot_thresholds`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .lt import DATASETS, ArrayImageDataset, DataBundle, build_datasets
from .transforms import IMAGENET_MEAN, IMAGENET_STD

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
                    ".pnm", ".jfif")
SPLIT_NAMES = ("train", "val", "test")
CACHE_VERSION = 2
SMALL_MIN = 32  # small images below this side are upscaled to it (CIFAR's size: the crop padding 4 stays in proportion)
SHOWN = 10  # culprits named in a message before "... and N more"

# -- images -------------------------------------------------------------------------------------


def load_rgb(path: Union[str, os.PathLike]) -> Tuple[Image.Image, str]:
    """Decode an image fully as RGB; returns ``(image, original_mode)``.

    Raises:
        DataError: Missing, unreadable, truncated, or of an unsupported mode (names the path).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # a truncated file fails here (Pillow's LOAD_TRUNCATED_IMAGES is off)
            mode = img.mode
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img, mode, path), mode
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {path}: {err}") from None


def _to_rgb(img: Image.Image, mode: str, path: Path) -> Image.Image:
    if mode == "RGB":
        return img.copy() if img.mode == "RGB" else img.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if top > 65535 or (arr.size and float(arr.min()) < 0):
            raise DataError(f"cannot decode image {path}: mode {mode} with values outside 0..65535 is not supported")
        arr = arr / 257.0 if (mode.startswith("I;16") or top > 255) else arr
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize to ``size x size`` (bilinear, Pillow's area-aware filter); no-op at that size."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BILINEAR)


# -- samples ------------------------------------------------------------------------------------


@dataclass
class _Listing:
    """Files of each split before decoding."""

    classes: List[str]
    paths: Dict[str, List[Path]] = field(default_factory=dict)       # split -> paths
    labels: Dict[str, List[int]] = field(default_factory=dict)       # split -> class index
    where: Dict[str, List[str]] = field(default_factory=dict)        # split -> "file" or "list:line"
    layout: str = "classes"
    problems: List[str] = field(default_factory=list)                # structural (skippable)
    skipped: List[str] = field(default_factory=list)                 # what skip_bad dropped
    ignored: List[str] = field(default_factory=list)                 # non-image files


def _image_files(folder: Path, ignored: List[str]) -> List[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(str(p))
            else:
                out.append(p)
    return out


def _class_dirs(folder: Path, ignored: List[str]) -> List[Path]:
    dirs = []
    for p in sorted(folder.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            dirs.append(p)
        elif p.is_file():
            ignored.append(str(p))
    return dirs


def list_folder(root: Path) -> _Listing:
    """Find the classes and files of a folder dataset (no image is opened)."""
    ignored: List[str] = []
    top = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    names = {p.name for p in top}
    if "train" in names:
        others = sorted(names - set(SPLIT_NAMES))
        if others:
            raise DataError(
                f"{root} holds train/ and other folders ({', '.join(others[:SHOWN])}): use either "
                f"train/ [val/] [test/] with class folders inside, or class folders only"
            )
        layout = "splits"
        split_dirs = {s: root / s for s in SPLIT_NAMES if s in names}
        for p in root.iterdir():
            if p.is_file():
                ignored.append(str(p))
    else:
        layout = "classes"
        split_dirs = {"train": root}
    per_split: Dict[str, Dict[str, List[Path]]] = {}
    for split, folder in split_dirs.items():
        per_split[split] = {d.name: _image_files(d, ignored) for d in _class_dirs(folder, ignored)}
    train = per_split["train"]
    if not train:
        raise DataError(f"{split_dirs['train']} has no class folders (expected {split_dirs['train']}/<class>/*.jpg)")
    listing = _Listing(classes=[], layout=layout, ignored=ignored)
    empty = [c for c, files in train.items() if not files]
    for c in empty:
        listing.problems.append(f"empty class folder {split_dirs['train'] / c} (no image files)")
    classes = sorted(c for c, files in train.items() if files)
    if not classes:
        raise DataError(f"no images under {split_dirs['train']} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    listing.classes = classes
    index = {c: i for i, c in enumerate(classes)}
    for split, by_class in per_split.items():
        paths, labels = [], []
        for c, files in by_class.items():
            if split != "train" and c not in train:
                listing.problems.append(
                    f"class '{c}' has {len(files)} image(s) in {split_dirs[split] / c} but no folder in "
                    f"{split_dirs['train']}")
                continue
            if c not in index:  # empty in training, already reported
                continue
            if split != "train" and not files:
                listing.problems.append(f"empty class folder {split_dirs[split] / c} (no image files)")
                continue
            paths += files
            labels += [index[c]] * len(files)
        listing.paths[split], listing.labels[split] = paths, labels
        listing.where[split] = [str(p) for p in paths]
    return listing


def _split_label(line: str) -> Optional[Tuple[str, str]]:
    parts = line.rsplit(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _read_lines(path: Path) -> List[Tuple[int, str, str]]:
    import gzip

    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")) as f:
            rows = []
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                pl = _split_label(line)
                if pl is None:
                    raise DataError(f"{path}:{lineno}: expected 'relative/path label', got {line!r}")
                rows.append((lineno, pl[0], pl[1]))
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise DataError(f"{path}: cannot read list file ({type(err).__name__}: {err})") from None
    if not rows:
        raise DataError(f"{path}: list file holds no samples")
    return rows


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _class_names_param(class_names: Any) -> Optional[List[str]]:
    if class_names is None:
        return None
    if isinstance(class_names, (list, tuple)):
        return [str(n) for n in class_names]
    if isinstance(class_names, str):
        p = Path(class_names).expanduser()
        if not p.is_file():
            raise DataError(f"data.params.class_names: file not found: {p}")
        return [l.strip() for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]
    raise ConfigError(f"data.params.class_names must be a list of names or a file path, got {class_names!r}")


def list_listfile(root: Optional[Path], lists: Dict[str, Path], class_names: Any = None) -> _Listing:
    """Read the list files of a listfile dataset (no image is opened)."""
    rows = {s: _read_lines(p) for s, p in lists.items()}
    train_labels = [lab for _, _, lab in rows["train"]]
    all_labels = [lab for r in rows.values() for _, _, lab in r]
    integer = all(_is_int(l) for l in all_labels)
    key = (lambda l: int(l)) if integer else (lambda l: l)
    distinct = sorted({key(l) for l in train_labels})
    index = {k: i for i, k in enumerate(distinct)}
    names = [str(k) for k in distinct]
    given = _class_names_param(class_names)
    if given is not None:
        if integer:
            bad = [k for k in distinct if not 0 <= k < len(given)]
            if bad:
                raise DataError(f"data.params.class_names has {len(given)} names but the training labels "
                                f"include {bad[0]}")
            names = [given[k] for k in distinct]
        else:
            raise ConfigError("data.params.class_names renames integer labels; string labels are the names")
    listing = _Listing(classes=names, layout="list")
    for split, path in lists.items():
        base = root if root is not None else path.parent
        paths, labels, where = [], [], []
        for lineno, rel, lab in rows[split]:
            k = key(lab)
            if k not in index:
                listing.problems.append(f"{path}:{lineno}: label {lab!r} does not occur in the training list "
                                        f"{lists['train']}")
                continue
            paths.append(base / rel)
            labels.append(index[k])
            where.append(f"{path}:{lineno}")
        listing.paths[split], listing.labels[split], listing.where[split] = paths, labels, where
    return listing


# -- decoding and the on-disk cache ---------------------------------------------------------------


def default_cache_dir() -> Path:
    env = os.environ.get("LONGTAIL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "longtail"


def _file_key(paths: Sequence[Path], extra: Any) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, extra]).encode())
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:32]


def _decode(path: Path, size: Optional[int], small_max: int) -> Tuple[Optional[str], Optional[str], Optional[tuple],
                                                                        Optional[np.ndarray]]:
    """``(error, mode, (w, h), array)``; the array only for small images (resized when ``size``)."""
    try:
        img, mode = load_rgb(path)
    except DataError as err:
        return str(err), None, None, None
    wh = img.size
    arr = None
    if size is not None and size <= small_max:
        arr = np.asarray(resize_square(img, size), dtype=np.uint8)
    elif size is None and max(wh) <= small_max:
        arr = np.asarray(img, dtype=np.uint8)
    return None, mode, wh, arr


def _common_side(sizes: Sequence[tuple]) -> int:
    sides = Counter(max(wh) for wh in sizes)
    top = max(sides.values())
    return max(s for s, n in sides.items() if n == top)


@dataclass
class _Decoded:
    bad: Dict[int, str]                   # index in the flat list -> error
    modes: Dict[str, int]                 # converted modes -> count
    small: bool
    size: Optional[int]                   # S of the array (small) or the crop (large)
    data: Optional[np.ndarray]            # (N, S, S, 3) uint8, zeros at bad indices (small only)
    cache_file: Optional[str]


_MEMO: Dict[str, _Decoded] = {}  # this process's last decodes (a run builds its data twice: resolve_auto, build)
_MEMO_SIZE = 2


def _remember(key: str, value: _Decoded) -> _Decoded:
    _MEMO.pop(key, None)
    _MEMO[key] = value
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.pop(next(iter(_MEMO)))
    return value


def decode_all(paths: List[Path], image_size: Optional[int], small_max: int, cache: bool,
               cache_dir: Optional[str], workers: Optional[int]) -> _Decoded:
    """Decode (or load from the cache) every image of the flat list ``paths``."""
    key = _file_key(paths, {"image_size": image_size, "small_max": small_max})
    if key in _MEMO:
        return _remember(key, _MEMO[key])
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    meta_path, arr_path = folder / f"{key}.json", folder / f"{key}.npy"
    if cache and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            data = np.load(arr_path, allow_pickle=False) if meta["small"] else None
            if data is None or (data.dtype == np.uint8 and data.shape[0] == len(paths)):
                out = _Decoded({int(k): v for k, v in meta["bad"].items()}, meta["modes"], meta["small"],
                               meta["size"], data, str(arr_path if meta["small"] else meta_path))
                return _remember(key, out)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    n_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = list(pool.map(lambda p: _decode(p, image_size, small_max), paths, chunksize=64))
    bad = {i: r[0] for i, r in enumerate(results) if r[0] is not None}
    good = [r for r in results if r[0] is None]
    modes = dict(Counter(r[1] for r in good if r[1] != "RGB"))
    if image_size is not None:
        small, size = image_size <= small_max, int(image_size)
    else:
        small = bool(good) and all(r[3] is not None for r in good)
        size = max(_common_side([r[2] for r in good]), SMALL_MIN) if small else 224
    data = None
    if small:
        data = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
        for i, r in enumerate(results):
            if r[0] is None:
                a = r[3]
                if a.shape[:2] != (size, size):
                    a = np.asarray(resize_square(Image.fromarray(a), size), dtype=np.uint8)
                data[i] = a
    cache_file = None
    if cache:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if small:
                tmp = folder / f".{key}.{os.getpid()}.npy"
                np.save(tmp, data)
                os.replace(tmp, arr_path)
            tmp = folder / f".{key}.{os.getpid()}.json"
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "n": len(paths), "bad": bad, "modes": modes,
                                       "small": small, "size": size}))
            os.replace(tmp, meta_path)
            cache_file = str(arr_path if small else meta_path)
        except OSError as err:
            warnings.warn(f"longtail: cannot write the image cache in {folder}: {err}")
    return _remember(key, _Decoded(bad, modes, small, size, data, cache_file))


# -- datasets -----------------------------------------------------------------------------------


class ImageFileDataset(Dataset):
    """Images read lazily from files (large images).

    Attributes:
        paths, targets, num_classes, class_counts, classes, transform: as the other datasets.
    """

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], num_classes: int, classes: Sequence[str],
                 transform: Optional[Callable] = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        self.num_classes = int(num_classes)
        self.class_counts = np.bincount(self.targets, minlength=self.num_classes).astype(np.int64)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image, _ = load_rgb(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


# -- shot groups, hold-out ----------------------------------------------------------------------


def auto_shot_thresholds(class_counts: Sequence[int]) -> Tuple[int, int, str]:
    """Many / few thresholds from the training counts: ``(many, few, rule)``.

    * The field's ``many > 100``, ``few < 20`` when the largest class has at least 500 images and
      the smallest fewer than 20 (the range of CIFAR-100-LT, ImageNet-LT, Places-LT), so numbers
      stay comparable with published ones.
    * Otherwise the log-count range ``[n_min, n_max]`` is cut in thirds:
      ``many = floor(n_min * r^(2/3))``, ``few = ceil(n_min * r^(1/3))`` with ``r = n_max / n_min``
      (classes above ``many`` are many-shot, below ``few`` few-shot).
    """
    c = np.asarray(class_counts, dtype=np.int64)
    c = c[c > 0]
    if not len(c):
        return 100, 20, "field"
    hi, lo = int(c.max()), int(c.min())
    if hi >= 500 and lo < 20:
        return 100, 20, "field: many > 100, few < 20"
    r = hi / lo
    many = int(math.floor(lo * r ** (2.0 / 3.0) + 1e-9))
    few = int(math.ceil(lo * r ** (1.0 / 3.0) - 1e-9))
    few = min(few, many)
    return many, few, f"log-thirds of the training counts [{lo}, {hi}]"


def holdout_split(targets: np.ndarray, num_classes: int, per_class: int, seed: int,
                  exclude: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices held out: per class ``min(per_class, n_c // 2)`` drawn with ``seed`` (stratified)."""
    rng = np.random.RandomState(seed)
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(targets == c)
        if exclude is not None:
            idx = idx[~exclude[idx]]
        k = min(int(per_class), len(idx) // 2)
        if k > 0:
            out.append(np.sort(rng.permutation(idx)[:k]))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


# -- building the bundle ------------------------------------------------------------------------


def _report(message: str) -> None:
    print(f"longtail: data: {message}", file=sys.stderr, flush=True)


def _culprits(items: Sequence[str]) -> str:
    shown = "\n  ".join(items[:SHOWN])
    more = f"\n  ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"\n  {shown}{more}"


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"data.params.{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


_REPORTED: set = set()


def build_generic(name: str, listing: _Listing, *, root: Optional[Path], skip_bad: bool, image_size: Optional[int],
                  holdout_per_class: int, val_per_class: int, split_seed: int, small_max: int, cache: bool,
                  cache_dir: Optional[str], workers: Optional[int]) -> DataBundle:
    """Decode, check, split and wrap a listing into a :class:`DataBundle`."""
    if not isinstance(skip_bad, bool):
        raise ConfigError(f"data.skip_bad must be true or false, got {skip_bad!r}")
    holdout_per_class = _check_int("holdout_per_class", holdout_per_class, 1)
    val_per_class = _check_int("val_per_class", val_per_class, 0)
    small_max = _check_int("small_max", small_max, 1)
    if image_size is not None:
        image_size = _check_int("image_size", image_size, 1)
    problems = list(listing.problems)
    splits = [s for s in SPLIT_NAMES if s in listing.paths]
    flat = [p for s in splits for p in listing.paths[s]]
    where = [w for s in splits for w in listing.where[s]]
    dec = decode_all(flat, image_size, small_max, cache, cache_dir, workers)
    bad_files = [f"{dec.bad[i]}" + (f" (listed at {where[i]})" if where[i] != str(flat[i]) else "")
                 for i in sorted(dec.bad)]
    problems += bad_files
    if problems and not skip_bad:
        raise DataError(f"{name}: {len(problems)} problem(s) with the data in {root}:{_culprits(problems)}\n"
                        f"fix them, or set data.skip_bad=true to skip them (they are then counted and reported)")
    keep = np.ones(len(flat), dtype=bool)
    keep[list(dec.bad)] = False
    targets_all = np.asarray([l for s in splits for l in listing.labels[s]], dtype=np.int64)
    split_of = np.asarray([s for s in splits for _ in listing.paths[s]])
    classes = list(listing.classes)
    C = len(classes)
    train_mask = (split_of == "train") & keep
    train_counts = np.bincount(targets_all[train_mask], minlength=C)
    if (train_counts == 0).any():
        lost = [classes[c] for c in np.flatnonzero(train_counts == 0)]
        if not skip_bad:  # only reachable when every image of a class is bad, which raised above
            raise DataError(f"{name}: class(es) without training images: {', '.join(lost)}")
        # drop classes whose every training image was bad, renumbering the rest
        problems += [f"class '{c}' has no readable training image: dropped" for c in lost]
        alive = train_counts > 0
        new_index = np.cumsum(alive) - 1
        keep &= alive[targets_all]
        targets_all = np.where(alive[targets_all], new_index[targets_all], -1)
        classes = [c for c, a in zip(classes, alive) if a]
        C = len(classes)
        if C == 0:
            raise DataError(f"{name}: no readable training image in {root}")
    info: Dict[str, Any] = {"dataset": name, "root": str(root) if root is not None else None,
                            "layout": listing.layout, "num_classes": C}
    # splits: given, or held out of the training pool
    idx = {s: np.flatnonzero((split_of == s) & keep) for s in splits}
    held: Dict[str, Any] = {}
    if "test" not in idx:
        pool = idx["train"]
        t = holdout_split(targets_all[pool], C, holdout_per_class, split_seed)
        idx["test"] = pool[t]
        rest = np.setdiff1d(np.arange(len(pool)), t)
        pool = pool[rest]
        held["test_per_class"] = holdout_per_class
        held["test_counts"] = np.bincount(targets_all[idx["test"]], minlength=C).tolist()
        if val_per_class > 0 and "val" not in idx:
            v = holdout_split(targets_all[pool], C, val_per_class, split_seed + 1)
            idx["val"] = pool[v]
            pool = pool[np.setdiff1d(np.arange(len(pool)), v)]
            held["val_per_class"] = val_per_class
            held["val_counts"] = np.bincount(targets_all[idx["val"]], minlength=C).tolist()
        idx["train"] = pool
        held.update({"seed": split_seed, "rule": "per class min(n, class size // 2), stratified, seeded"})
        info["holdout"] = held
        msg = (f"no test split given: held out {len(idx['test'])} training images as the test split "
               f"(up to {holdout_per_class} per class, seed {split_seed})")
        if "val_per_class" in held:
            msg += f" and {len(idx['val'])} as the val split (up to {val_per_class} per class)"
        if (name, msg) not in _REPORTED:
            _REPORTED.add((name, msg))
            _report(msg)
    elif val_per_class > 0 and "val" not in idx:
        pool = idx["train"]
        v = holdout_split(targets_all[pool], C, val_per_class, split_seed + 1)
        idx["val"] = pool[v]
        idx["train"] = pool[np.setdiff1d(np.arange(len(pool)), v)]
        held.update({"val_per_class": val_per_class, "seed": split_seed,
                     "val_counts": np.bincount(targets_all[idx["val"]], minlength=C).tolist()})
        info["holdout"] = held
    info["split_sizes"] = {s: int(len(i)) for s, i in idx.items()}
    skipped = problems if skip_bad else []
    info["skipped"] = {"count": len(skipped), "items": skipped[:100]}
    info["ignored_files"] = {"count": len(listing.ignored), "files": listing.ignored[:100]}
    info["converted_modes"] = dec.modes
    key = (name, str(root), len(skipped), len(listing.ignored))
    if key not in _REPORTED:
        _REPORTED.add(key)
        if skipped:
            _report(f"skipped {len(skipped)} bad item(s) (data.skip_bad=true):{_culprits(skipped)}")
        if listing.ignored:
            _report(f"ignored {len(listing.ignored)} file(s) that are not images:{_culprits(listing.ignored)}")
        if dec.modes:
            _report("converted to RGB: " + ", ".join(f"{n} {m} image(s)" for m, n in sorted(dec.modes.items())))

    def make(s: str):
        ii = idx[s]
        if dec.small:
            return ArrayImageDataset(dec.data[ii], targets_all[ii], num_classes=C, classes=classes)
        return ImageFileDataset([flat[i] for i in ii], targets_all[ii], C, classes)

    train = make("train")
    counts = train.class_counts
    if (counts == 0).any():  # e.g. a hold-out leaving a class empty cannot happen (cap at half), but be explicit
        empty = [classes[c] for c in np.flatnonzero(counts == 0)]
        raise DataError(f"{name}: class(es) without training images after the split: {', '.join(empty)}")
    test = make("test")
    val = make("val") if "val" in idx else None
    if dec.small:
        flat_px = train.data.reshape(-1, 3).astype(np.float64) / 255.0
        mean = tuple(round(float(v), 4) for v in flat_px.mean(0))
        std = tuple(round(max(float(v), 1e-3), 4) for v in flat_px.std(0))
        augment = "cifar"
    else:
        mean, std, augment = IMAGENET_MEAN, IMAGENET_STD, "imagenet"
    many, few, rule = auto_shot_thresholds(counts)
    info.update({"in_memory": dec.small, "image_size": dec.size, "cache_file": dec.cache_file,
                 "auto_shot_thresholds": {"many": many, "few": few, "rule": rule}})
    bundle = DataBundle(train=train, test=test, val=val, num_classes=C, class_counts=counts, class_names=classes,
                        mean=mean, std=std, augment=augment, in_memory=dec.small)
    bundle.image_size = dec.size
    bundle.info = info
    return bundle


@DATASETS.register("folder")
def build_folder(
    root: Optional[str] = None,
    skip_bad: bool = False,
    image_size: Optional[int] = None,
    holdout_per_class: int = 10,
    val_per_class: int = 0,
    split_seed: int = 0,
    small_max: int = 64,
    cache: bool = True,
    cache_dir: Optional[str] = None,
    workers: Optional[int] = None,
) -> DataBundle:
    """Images in class folders (``root/<class>/*``, or ``root/{train,val,test}/<class>/*``).

    Args:
        root: The folder (``data.root``).
        skip_bad: Skip (and report) bad files and folders instead of raising (``data.skip_bad``).
        image_size: Resize to this square side; ``<= small_max`` keeps the images in memory,
            larger is the crop of the ``imagenet`` augmentation. Default: the images' common side
            (at least 32) when they are small, else 224.
        holdout_per_class: Test images held out per class when there is no ``test/`` folder.
        val_per_class: Validation images held out per class when there is no ``val/`` (0: none).
        split_seed: Seed of the hold-out.
        small_max: Largest side of a "small" image (in-memory path).
        cache: Cache the decoded array (small) / the verification (large) on disk.
        cache_dir: Cache folder (default ``$LONGTAIL_CACHE`` or ``~/.cache/longtail``).
        workers: Decoding threads (default min(8, CPUs)).
    """
    if root is None:
        raise ConfigError("data.root is required for dataset 'folder' (the folder holding one folder per class)")
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"folder: data.root not found: {root_path}")
    return build_generic("folder", list_folder(root_path), root=root_path, skip_bad=skip_bad, image_size=image_size,
                         holdout_per_class=holdout_per_class, val_per_class=val_per_class, split_seed=split_seed,
                         small_max=small_max, cache=cache, cache_dir=cache_dir, workers=workers)


@DATASETS.register("listfile")
def build_listfile(
    root: Optional[str] = None,
    train_list: Optional[str] = None,
    val_list: Optional[str] = None,
    test_list: Optional[str] = None,
    skip_bad: bool = False,
    class_names: Any = None,
    image_size: Optional[int] = None,
    holdout_per_class: int = 10,
    val_per_class: int = 0,
    split_seed: int = 0,
    small_max: int = 64,
    cache: bool = True,
    cache_dir: Optional[str] = None,
    workers: Optional[int] = None,
) -> DataBundle:
    """``path label`` list files with integer or string labels.

    Args:
        root: Folder the list paths start from (default: each list's own folder).
        train_list: Training list (required; relative paths are tried in ``root`` too).
        val_list: Validation list (optional).
        test_list: Test list (optional: without it the test split is held out of training).
        class_names: Names of integer labels (a list, or a file of one name a line).
        Others: as :func:`build_folder`.
    """
    root_path = Path(root).expanduser() if root is not None else None
    if root_path is not None and not root_path.is_dir():
        raise DataError(f"listfile: data.root not found: {root_path}")
    if train_list is None:
        raise ConfigError("data.train_list is required for dataset 'listfile' (lines 'relative/path label')")
    lists = {}
    for split, given in (("train", train_list), ("val", val_list), ("test", test_list)):
        if given is None:
            continue
        p = Path(given).expanduser()
        if not p.is_absolute() and not p.exists() and root_path is not None and (root_path / p).exists():
            p = root_path / p
        if not p.is_file():
            raise DataError(f"listfile: data.{split}_list not found: {p}")
        lists[split] = p
    return build_generic("listfile", list_listfile(root_path, lists, class_names), root=root_path or lists["train"].parent,
                         skip_bad=skip_bad, image_size=image_size, holdout_per_class=holdout_per_class,
                         val_per_class=val_per_class, split_seed=split_seed, small_max=small_max, cache=cache,
                         cache_dir=cache_dir, workers=workers)


# -- 'auto' values of a config, from the data ----------------------------------------------------

#: Image side up to which ``model.backbone: auto`` picks ResNet-32 (else ResNet-50).
SMALL_BACKBONE_MAX = 64


def auto_epochs(num_train: int) -> int:
    """Epochs for ``optim.epochs: auto``: ``200 * sqrt(12400 / N)`` within [30, 400].

    Anchored at the CIFAR-LT protocol (200 epochs for ~12.4k images); a smaller set gets more
    epochs (but still fewer iterations), a larger one fewer (ImageNet-LT size: ~65).
    """
    return int(min(400, max(30, round(200 * math.sqrt(12400 / max(int(num_train), 1))))))


def data_summary(bundle: DataBundle) -> Dict[str, Any]:
    """What a run records about its data in ``metrics.json`` (``data``): class names, the
    preprocessing an inference needs, and the dataset's own report (hold-out, skipped files)."""
    info = dict(getattr(bundle, "info", None) or {})
    size = getattr(bundle, "image_size", None)
    if bundle.in_memory:
        shape = getattr(bundle.train, "data").shape
        pre = {"kind": "small", "image_size": int(shape[1]), "resize": "square, bilinear"}
    else:
        crop = int(size or 224)
        pre = {"kind": "large", "image_size": crop, "resize": f"shorter side {int(round(crop * 256 / 224))}, "
                                                          f"center crop {crop}"}
    pre.update({"mean": list(bundle.mean), "std": list(bundle.std)})
    info.update({"class_names": list(bundle.class_names), "class_counts": [int(c) for c in bundle.class_counts],
                 "preprocess": pre, "augment": bundle.augment})
    return info


def resolve_auto(cfg: dict) -> dict:
    """Fill, in place, the values the folder recipes leave to the data.

    * ``model.backbone: auto`` -- ResNet-32 for in-memory images of side <= 64, else ResNet-50;
    * ``optim.nominal_epochs: E0`` -- the recipe's epoch-valued keys (warm-up, milestones, DRW / GA
      switch, end of mixup) are written for E0 epochs. ``optim.epochs == E0`` (not overridden) is
      replaced by :func:`auto_epochs` of the training-set size; those keys then move to the same
      fraction of ``optim.epochs`` (also when ``optim.epochs`` was overridden);
    * ``data.auto_shot_thresholds: true`` -- ``data.shot_thresholds`` from the training counts
      (:func:`auto_shot_thresholds`).

    Afterwards the config holds plain values (``nominal_epochs`` null, ``auto_shot_thresholds``
    false): ``config.yaml`` records what ran, and re-training, resuming and evaluating do not
    resolve again. A config without these settings is returned unchanged and no data is read.
    """
    from ..config import EPOCH_KEYS_STAGE1, get_key, scaled_epoch_overrides

    data, model, optim = cfg["data"], cfg["model"], cfg["optim"]
    nominal = optim.get("nominal_epochs")
    need = model.get("backbone") == "auto" or bool(data.get("auto_shot_thresholds")) or (
        bool(nominal) and optim.get("epochs") == nominal)
    bundle = build_datasets(data) if need else None
    if model.get("backbone") == "auto":
        small = bool(bundle.in_memory) and max(bundle.train.data.shape[1:3]) <= SMALL_BACKBONE_MAX
        model["backbone"] = "resnet32" if small else "resnet50"
    if data.get("auto_shot_thresholds"):
        many, few, _ = auto_shot_thresholds(bundle.class_counts)
        data["shot_thresholds"] = [many, few]
        data["auto_shot_thresholds"] = False
    if nominal:
        if optim.get("epochs") == nominal:
            optim["epochs"] = auto_epochs(len(bundle.train))
        ref = copy.deepcopy(cfg)
        ref["optim"]["epochs"] = int(nominal)
        for text in scaled_epoch_overrides(ref, "optim.epochs", int(optim["epochs"]), EPOCH_KEYS_STAGE1):
            key, value = text.split("=", 1)
            block, _, leaf = key.rpartition(".")
            node = get_key(cfg, block)
            if isinstance(node, dict):
                node[leaf] = json.loads(value)
        optim["nominal_epochs"] = None
    return cfg


def annotate_metrics(metrics: Dict[str, Any], bundle: DataBundle) -> Dict[str, Any]:
    """Add the class names to ``per_class`` entries (``name``) and :func:`data_summary` as ``data``."""
    names = list(bundle.class_names)
    for row in metrics.get("per_class") or []:
        c = row.get("class")
        if isinstance(c, int) and 0 <= c < len(names):
            row["name"] = names[c]
    metrics["data"] = data_summary(bundle)
    return metrics
