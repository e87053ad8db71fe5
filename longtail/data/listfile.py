"""List-file datasets: ImageNet-LT, Places-LT, iNaturalist 2018.

A list file has one sample a line, ``relative/path.jpg label``, the path relative to an image
root; it may be gzip-compressed (detected from its content, usually named ``*.gz``). The list is
parsed eagerly (labels, counts); images are decoded lazily in ``__getitem__`` with Pillow.

The registered builders look for the field's list names inside ``root`` when a list is not given:

=============  =====================================  ==========================  ==========================
dataset        train                                  val                         test
=============  =====================================  ==========================  ==========================
imagenet_lt    ImageNet_LT_train.txt                  ImageNet_LT_val.txt         ImageNet_LT_test.txt
places_lt      Places_LT_train.txt                    Places_LT_val.txt           Places_LT_test.txt
inat18         iNaturalist18_train.txt                (none)                      iNaturalist18_val.txt
=============  =====================================  ==========================  ==========================

each also as ``.gz``. iNaturalist 2018 has no test set: the field reports on its validation list,
so that list is the test split here. A missing val list leaves ``val`` None.
"""
from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .lt import DATASETS, DataBundle
from .transforms import IMAGENET_MEAN, IMAGENET_STD, size_needs

_GZIP_MAGIC = b"\x1f\x8b"


def read_list_file(list_file: Union[str, os.PathLike]) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Parse a list file.

    Args:
        list_file: Path of a (possibly gzip-compressed) text file of ``path label`` lines.
            Blank lines are skipped; paths may contain spaces (the label is the last field).

    Returns:
        ``(paths, labels, line_numbers)``: relative paths, np.int64 labels and np.int64 1-based
        line numbers of each sample.

    Raises:
        DataError: The file is missing, unreadable, empty, or a line does not parse (the message
            gives ``file:line``).
    """
    path = Path(list_file)
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    paths: List[str] = []
    labels: List[int] = []
    line_numbers: List[int] = []
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
        opener = gzip.open if compressed else open
        with opener(path, "rb") as f:
            text = io.TextIOWrapper(f, encoding="utf-8")
            for lineno, line in enumerate(text, 1):
                line = line.strip()
                if not line:
                    continue
                parts = line.rsplit(None, 1)
                if len(parts) != 2:
                    raise DataError(f"{path}:{lineno}: expected 'relative/path label', got {line!r}")
                try:
                    label = int(parts[1])
                except ValueError:
                    raise DataError(f"{path}:{lineno}: label {parts[1]!r} is not an integer (line {line!r})") from None
                paths.append(parts[0])
                labels.append(label)
                line_numbers.append(lineno)
    except DataError:
        raise
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read list file ({type(err).__name__}: {err})") from None
    if not paths:
        raise DataError(f"{path}: list file holds no samples")
    return paths, np.asarray(labels, dtype=np.int64), np.asarray(line_numbers, dtype=np.int64)


class ListFileDataset(Dataset):
    """Images named by a list file, decoded lazily.

    Args:
        list_file: ``relative/path label`` lines, plain or gzip.
        image_root: Folder the relative paths start from (must exist).
        num_classes: C; labels must lie in [0, C). Default: ``max(label) + 1``
            (with ``remap_labels``: the number of distinct labels).
        remap_labels: False keeps labels as they are. True maps the sorted distinct labels of
            this list to 0..K-1; a mapping ``{original: new}`` (e.g. ``train.label_map``) applies
            that mapping, so val / test use the training split's.
        transform: Callable applied to the PIL RGB image, or None.
        require_all_classes: Raise if a class has no image (set for training splits, where an
            empty class would break every count-based method).

    Attributes:
        list_file: Path of the list file.
        image_root: Path of the image root.
        paths: Relative image paths.
        targets: np.int64 labels (after remapping).
        line_numbers: np.int64 line of each sample in the list file.
        num_classes: C.
        class_counts: np.int64 (C,) counts of this list.
        classes: Class names (the folder holding each class's first image).
        label_map: ``{original: new}`` when labels were remapped, else None.
        transform: The transform applied in ``__getitem__``.

    Raises:
        DataError: Unparsable line, label out of range, empty training class, missing root.
    """

    def __init__(
        self,
        list_file: Union[str, os.PathLike],
        image_root: Union[str, os.PathLike],
        num_classes: Optional[int] = None,
        remap_labels: Union[bool, Mapping[int, int]] = False,
        transform: Optional[Callable] = None,
        require_all_classes: bool = False,
    ) -> None:
        self.list_file = Path(list_file)
        self.image_root = Path(image_root).expanduser()
        if not self.image_root.is_dir():
            raise DataError(f"image root not found: {self.image_root} (needed by {self.list_file})")
        paths, labels, line_numbers = read_list_file(self.list_file)
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) != num_classes
                                        or num_classes < 1):
            raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.label_map: Optional[Dict[int, int]] = None
        if (labels < 0).any():  # before any remapping: a negative label never becomes a class
            i = int(np.argmax(labels < 0))
            raise DataError(f"{self.list_file}:{line_numbers[i]}: label {labels[i]} is negative "
                            f"(labels are integers >= 0)")
        if remap_labels is not False and remap_labels is not None:
            labels = self._remap(labels, line_numbers, remap_labels)
        if num_classes is None:
            num_classes = len(self.label_map) if self.label_map is not None else int(labels.max()) + 1
        num_classes = int(num_classes)
        bad = labels >= num_classes
        if bad.any():
            i = int(np.argmax(bad))
            shown = f" (label {int(self._original(labels[i]))} in the file)" if self.label_map else ""
            raise DataError(
                f"{self.list_file}:{line_numbers[i]}: label {labels[i]}{shown} outside [0, {num_classes})"
            )
        self.paths = paths
        self.targets = labels
        self.line_numbers = line_numbers
        self.num_classes = num_classes
        self.class_counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
        if require_all_classes and (self.class_counts == 0).any():
            empty = np.flatnonzero(self.class_counts == 0)
            listed = ", ".join(str(c) for c in empty[:10]) + (", ..." if len(empty) > 10 else "")
            raise DataError(
                f"{self.list_file}: class {empty[0]} has no images in the training list "
                f"({len(empty)} empty class(es) of {num_classes}: {listed}); every class needs at least one"
            )
        self.classes = self._class_names()
        self.transform = transform

    @property
    def transform(self) -> Optional[Callable]:
        """The transform applied in ``__getitem__``. Setting one of longtail's transforms that
        needs a minimum image size or one size for all images (``data.augment`` ``cifar`` or
        ``none``) checks the images' headers first (:meth:`check_image_sizes`)."""
        return self._transform

    @transform.setter
    def transform(self, value: Optional[Callable]) -> None:
        min_size, same = size_needs(value)
        if min_size or same:
            self.check_image_sizes(min_size, same)
        self._transform = value

    def check_files_exist(self) -> None:
        """Raise DataError when a listed image file is missing (one ``stat`` per file; images are
        not opened). The message names the first missing files with their list lines."""
        missing = [i for i, rel in enumerate(self.paths) if not os.path.isfile(self.image_root / rel)]
        if missing:
            shown = "; ".join(f"{self.image_root / self.paths[i]} (line {self.line_numbers[i]})" for i in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"{self.list_file}: {len(missing)} of {len(self.paths)} listed images not found: "
                            f"{shown}{more}")

    def check_image_sizes(self, min_size: int = 0, same_size: bool = False) -> None:
        """Read every image's header (not its pixels) and raise DataError for an image smaller
        than ``min_size`` on a side or, with ``same_size``, for images of different sizes (they
        cannot be batched without a resize)."""
        first: Optional[Tuple[int, Tuple[int, int]]] = None
        for i in range(len(self.paths)):
            path, where = self.image_path(i), f"{self.list_file}:{self.line_numbers[i]}"
            try:
                with Image.open(path) as img:
                    size = img.size
            except FileNotFoundError:
                raise DataError(f"image not found: {path} (listed at {where})") from None
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
                raise DataError(f"cannot decode image {path} (listed at {where}): {err}") from None
            if min(size) < min_size:
                raise DataError(f"image {path} (listed at {where}) is {size[0]}x{size[1]}, smaller than the "
                                f"{min_size}x{min_size} the training crop of data.augment=cifar needs; use "
                                f"data.augment=imagenet, which resizes")
            if same_size:
                if first is None:
                    first = (i, size)
                elif size != first[1]:
                    j, s0 = first
                    raise DataError(
                        f"images of different sizes in {self.list_file}: {self.image_path(j)} (line "
                        f"{self.line_numbers[j]}) is {s0[0]}x{s0[1]} but {path} (line {self.line_numbers[i]}) is "
                        f"{size[0]}x{size[1]}; this augment keeps the image size, so batches need one size: use "
                        f"data.augment=imagenet, which resizes and crops"
                    )

    def _remap(self, labels: np.ndarray, line_numbers: np.ndarray, remap: Any) -> np.ndarray:
        if remap is True:
            uniq = np.unique(labels)
            self.label_map = {int(u): i for i, u in enumerate(uniq)}
            return np.searchsorted(uniq, labels).astype(np.int64)
        if not isinstance(remap, Mapping):
            raise ConfigError(f"remap_labels must be true, false or a mapping, got {remap!r}")
        self.label_map = {int(k): int(v) for k, v in remap.items()}
        out = np.empty_like(labels)
        for i, lab in enumerate(labels.tolist()):
            new = self.label_map.get(lab)
            if new is None:
                raise DataError(
                    f"{self.list_file}:{line_numbers[i]}: label {lab} does not occur in the training list "
                    f"it is remapped by"
                )
            out[i] = new
        return out

    def _original(self, label: int) -> int:
        inverse = {v: k for k, v in (self.label_map or {}).items()}
        return inverse.get(int(label), int(label))

    def _class_names(self) -> List[str]:
        names = [str(c) for c in range(self.num_classes)]
        seen = np.zeros(self.num_classes, dtype=bool)
        for rel, lab in zip(self.paths, self.targets.tolist()):
            if not seen[lab]:
                seen[lab] = True
                parent = Path(rel).parent.name
                if parent:
                    names[lab] = parent
        return names

    def image_path(self, index: int) -> Path:
        """Absolute path of sample ``index``."""
        return self.image_root / self.paths[index]

    def load_image(self, index: int) -> Image.Image:
        """Decode sample ``index`` as a PIL RGB image.

        Raises:
            DataError: The image is missing or cannot be decoded (names the path and the list line).
        """
        path = self.image_path(index)
        where = f"{self.list_file}:{self.line_numbers[index]}"
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"image not found: {path} (listed at {where})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise DataError(f"cannot decode image {path} (listed at {where}): {err}") from None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image = self.load_image(index)
        if self.transform is not None:
            try:
                image = self.transform(image)
            except DataError as err:
                raise DataError(f"{self.image_path(index)} (listed at {self.list_file}:"
                                f"{self.line_numbers[index]}): {err}") from None
        return image, int(self.targets[index])


# -- builders -----------------------------------------------------------------------------------


def _resolve_list(
    name: str, key: str, given: Optional[str], root: Path, defaults: Sequence[str], required: bool
) -> Optional[Path]:
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_absolute() and not path.exists() and (root / path).exists():
            path = root / path
        if not path.is_file():
            raise DataError(f"{name}: data.{key} not found: {path}")
        return path
    candidates = [root / stem for stem in defaults] + [root / f"{stem}.gz" for stem in defaults]
    for path in candidates:
        if path.is_file():
            return path
    if required:
        looked = ", ".join(str(p) for p in candidates)
        raise DataError(f"{name}: no {key} given and none of the default list files exists: {looked}")
    return None


def build_list_bundle(
    name: str,
    root: Optional[str],
    num_classes: int,
    train_list: Optional[str],
    val_list: Optional[str],
    test_list: Optional[str],
    defaults: Mapping[str, Sequence[str]],
    remap_labels: bool = False,
) -> DataBundle:
    """Build the train / val / test list-file datasets of one dataset.

    Args:
        name: Dataset name (for messages).
        root: Image root; list files default to the field's names inside it.
        num_classes: C (ignored with ``remap_labels``, where the training list's distinct labels
            define the classes).
        train_list: Training list path, or None for the default.
        val_list: Validation list path, or None for the default (missing: no val split).
        test_list: Test list path, or None for the default.
        defaults: ``{"train": [...], "val": [...], "test": [...]}`` file names tried in ``root``.
        remap_labels: Map the training list's sorted distinct labels to 0..K-1 (and val / test
            by the same mapping).

    Returns:
        A :class:`DataBundle` with augment ``imagenet`` and ImageNet's mean / std.
    """
    if root is None:
        raise ConfigError(f"data.root is required for dataset '{name}' (the folder the list paths start from)")
    if not isinstance(remap_labels, bool):
        raise ConfigError(f"data.params.remap_labels must be true or false, got {remap_labels!r}")
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"{name}: data.root not found: {root_path}")
    train_path = _resolve_list(name, "train_list", train_list, root_path, defaults.get("train", ()), True)
    val_path = _resolve_list(name, "val_list", val_list, root_path, defaults.get("val", ()), False)
    test_path = _resolve_list(name, "test_list", test_list, root_path, defaults.get("test", ()), True)
    train = ListFileDataset(train_path, root_path, num_classes=None if remap_labels else num_classes,
                            remap_labels=bool(remap_labels), require_all_classes=True)
    mapping = train.label_map if remap_labels else False

    def other(path: Path) -> ListFileDataset:
        return ListFileDataset(path, root_path, num_classes=train.num_classes, remap_labels=mapping)

    val = other(val_path) if val_path is not None else None
    test = other(test_path)
    for ds in (train, val, test):  # a cheap stat per file, before a run folder exists
        if ds is not None:
            ds.check_files_exist()
    return DataBundle(train=train, test=test, val=val, num_classes=train.num_classes,
                      class_counts=train.class_counts, class_names=train.classes,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, augment="imagenet", in_memory=False)


@DATASETS.register("imagenet_lt")
def build_imagenet_lt(
    root: Optional[str] = None,
    train_list: Optional[str] = None,
    val_list: Optional[str] = None,
    test_list: Optional[str] = None,
    remap_labels: bool = False,
) -> DataBundle:
    """ImageNet-LT (Liu et al. 2019): 1000 classes, 5..1280 training images each.

    Args:
        root: ImageNet image root (the list paths start from it, e.g. ``train/n01440764/...``).
        train_list: Default ``ImageNet_LT_train.txt[.gz]`` in ``root``.
        val_list: Default ``ImageNet_LT_val.txt[.gz]`` (optional).
        test_list: Default ``ImageNet_LT_test.txt[.gz]``.
        remap_labels: Map the training list's distinct labels to 0..K-1 (subsets).

    Returns:
        A :class:`DataBundle` (augment ``imagenet``).
    """
    stems = {s: [f"ImageNet_LT_{s}.txt"] for s in ("train", "val", "test")}
    return build_list_bundle("imagenet_lt", root, 1000, train_list, val_list, test_list, stems, remap_labels)


@DATASETS.register("places_lt")
def build_places_lt(
    root: Optional[str] = None,
    train_list: Optional[str] = None,
    val_list: Optional[str] = None,
    test_list: Optional[str] = None,
    remap_labels: bool = False,
) -> DataBundle:
    """Places-LT (Liu et al. 2019): 365 classes, 5..4980 training images each.

    Args:
        root: Places-365 image root.
        train_list: Default ``Places_LT_train.txt[.gz]`` in ``root``.
        val_list: Default ``Places_LT_val.txt[.gz]`` (optional).
        test_list: Default ``Places_LT_test.txt[.gz]``.
        remap_labels: Map the training list's distinct labels to 0..K-1 (subsets).

    Returns:
        A :class:`DataBundle` (augment ``imagenet``).
    """
    stems = {s: [f"Places_LT_{s}.txt"] for s in ("train", "val", "test")}
    return build_list_bundle("places_lt", root, 365, train_list, val_list, test_list, stems, remap_labels)


@DATASETS.register("inat18")
def build_inat18(
    root: Optional[str] = None,
    train_list: Optional[str] = None,
    val_list: Optional[str] = None,
    test_list: Optional[str] = None,
    remap_labels: bool = False,
) -> DataBundle:
    """iNaturalist 2018: 8142 classes. The validation list is the test split (as in the field).

    Args:
        root: iNaturalist image root (list paths start with ``train_val2018/``).
        train_list: Default ``iNaturalist18_train.txt[.gz]`` in ``root``.
        val_list: No default: a separate validation split only when given.
        test_list: Default ``iNaturalist18_val.txt[.gz]``.
        remap_labels: Map the training list's distinct labels to 0..K-1 (subsets).

    Returns:
        A :class:`DataBundle` (augment ``imagenet``).
    """
    stems = {"train": ["iNaturalist18_train.txt"], "val": [], "test": ["iNaturalist18_val.txt"]}
    return build_list_bundle("inat18", root, 8142, train_list, val_list, test_list, stems, remap_labels)
