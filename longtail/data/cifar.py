"""CIFAR-10 / CIFAR-100 and their long-tailed versions (CIFAR-10-LT, CIFAR-100-LT).

Files are read in the standard python-pickle layout::

    root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    root/cifar-100-python/{train, test, meta}          (labels: ``fine_labels``)

``download=True`` fetches the official archive into ``root`` and verifies its MD5 before
extracting it; without it, missing files are an error. Files already present are used as they are
(their checksums are not checked, so that the rebuild of ``../shared/data/cifar10_from_jpeg.py``,
whose bytes differ from the release, can be used).

The long-tailed training subset follows the protocol of the whole field (Cao et al., LDAM code):
the random generator is seeded once with ``seed`` (0), then for each class in order the indices of
that class in the original training set are shuffled and the first ``n_c`` kept, with
``n_c = long_tail_counts(n_max, C, imbalance_ratio, profile)[c]``. The subset is stored class by
class. The test set is unchanged (balanced).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from ..errors import ConfigError, DataError
from .lt import DATASETS, ArrayImageDataset, DataBundle, counts_profile, long_tail_counts
from .transforms import CIFAR_MEAN, CIFAR_STD

_SHARED_REBUILD = "../shared/data/cifar10_from_jpeg.py"


def file_md5(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, UnicodeDecodeError, MemoryError, OSError) as err:
        raise DataError(f"{path}: corrupt CIFAR pickle file ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: corrupt CIFAR pickle file (holds a {type(obj).__name__}, not a dict)")
    # python-2 pickles of the original release may have bytes keys
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


class CIFAR10(ArrayImageDataset):
    """CIFAR-10, optionally long-tailed.

    Args:
        root: Folder holding ``cifar-10-batches-py`` (``cifar-100-python`` for CIFAR-100).
        train: Training split if True, test split otherwise.
        transform: Callable applied to the PIL image, or None.
        download: Fetch the official archive into ``root`` (MD5-verified) if files are missing.
        imbalance_ratio: rho of the long-tailed training subset; None keeps the full split.
            Ignored for the test split.
        profile: ``"exp"`` or ``"step"``.
        n_max: Images of the head class (default: the largest class of the original split,
            5000 for CIFAR-10, 500 for CIFAR-100).
        seed: Seed of the subset selection (the field uses 0).

    Attributes:
        data: np.uint8 (N, 32, 32, 3) images, class by class for a long-tailed subset.
        targets: np.int64 (N,) labels.
        indices: np.int64 (N,) positions of the kept images in the original split.
        classes: Class names from the meta file.
        num_classes, class_counts, transform: See :class:`~longtail.data.lt.ArrayImageDataset`.

    Raises:
        DataError: Missing files (with how to get them), corrupt pickles, an archive with a wrong
            checksum, or a class with fewer images than the profile asks for.
        ConfigError: Bad ``imbalance_ratio`` / ``profile`` / ``n_max``.
    """

    base_folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    archive_name = "cifar-10-python.tar.gz"
    archive_md5 = "c58f30108f718f92721af3b95e74349a"
    train_files = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
    test_files = ["test_batch"]
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"
    num_base_classes = 10
    default_n_max = 5000
    title = "CIFAR-10"

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        transform: Optional[Callable] = None,
        download: bool = False,
        imbalance_ratio: Optional[float] = None,
        profile: str = "exp",
        n_max: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(root).expanduser()
        self.train = bool(train)
        if self.train and imbalance_ratio is not None:  # check the parameters before reading files
            long_tail_counts(n_max or self.default_n_max, self.num_base_classes, imbalance_ratio, profile)
        if download:
            self.download()
        data, targets = self._load_split(self.train_files if self.train else self.test_files)
        classes = self._load_names()
        indices = np.arange(len(targets), dtype=np.int64)
        if self.train and imbalance_ratio is not None:
            indices = self.long_tail_indices(targets, imbalance_ratio, profile, n_max, seed, self.num_base_classes)
            data, targets = data[indices], targets[indices]
        self.indices = indices
        super().__init__(data, targets, num_classes=self.num_base_classes, transform=transform, classes=classes)

    # -- files ------------------------------------------------------------------------------

    @classmethod
    def required_files(cls) -> List[str]:
        """Names of the files the split folder must hold."""
        return cls.train_files + cls.test_files + [cls.meta_file]

    @property
    def folder(self) -> Path:
        """The split folder, ``root / base_folder``."""
        return self.root / self.base_folder

    def files_present(self) -> bool:
        """True if every required file exists."""
        return all((self.folder / name).is_file() for name in self.required_files())

    def _missing(self, path: Path) -> DataError:
        hint = f"set `data.download: true` (or download=True) to fetch the official {self.title} archive"
        if self.base_folder == CIFAR10.base_folder:
            hint += f", or rebuild it offline with `python3 {_SHARED_REBUILD} {self.root}`"
        return DataError(f"{self.title} file not found: {path}; {hint}")

    def download(self) -> None:
        """Fetch and extract the official archive into ``root`` unless the files are present.

        An archive already in ``root`` is reused. Its MD5 is checked before extraction.

        Raises:
            DataError: The download failed or the archive's MD5 does not match.
        """
        if self.files_present():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        archive = self.root / self.archive_name
        if not archive.is_file():
            from torchvision.datasets.utils import download_url

            try:
                download_url(self.url, str(self.root), self.archive_name)
            except Exception as err:  # network errors come in many types
                raise DataError(f"downloading {self.url} to {archive} failed: {err}") from err
        md5 = file_md5(archive)
        if md5 != self.archive_md5:
            raise DataError(
                f"{archive}: MD5 checksum mismatch (got {md5}, expected {self.archive_md5}); the file is "
                f"corrupt or incomplete - delete it and download again"
            )
        try:
            with tarfile.open(archive, "r:gz") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(self.root, filter="data")
                else:  # Python < 3.11.4; the archive's checksum is verified above
                    tar.extractall(self.root)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"{archive}: cannot extract ({err})") from err
        if not self.files_present():
            raise DataError(f"{archive} did not contain the expected files {self.required_files()}")

    def _load_split(self, names: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        chunks, labels = [], []
        for name in names:
            path = self.folder / name
            if not path.is_file():
                raise self._missing(path)
            batch = _load_pickle(path)
            if "data" not in batch or self.label_key not in batch:
                raise DataError(f"{path}: corrupt CIFAR pickle file (needs keys 'data' and '{self.label_key}')")
            try:
                rows = np.asarray(batch["data"], dtype=np.uint8)
                lab = np.asarray(batch[self.label_key], dtype=np.int64).reshape(-1)
            except (TypeError, ValueError) as err:
                raise DataError(f"{path}: corrupt CIFAR pickle file ({err})") from None
            if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32 or rows.shape[0] != len(lab):
                raise DataError(
                    f"{path}: corrupt CIFAR pickle file (data {rows.shape} for {len(lab)} labels; "
                    f"expected (N, 3072))"
                )
            if len(lab) and (lab.min() < 0 or lab.max() >= self.num_base_classes):
                raise DataError(f"{path}: labels outside [0, {self.num_base_classes})")
            chunks.append(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(lab)
        return np.ascontiguousarray(np.concatenate(chunks)), np.concatenate(labels)

    def _load_names(self) -> List[str]:
        path = self.folder / self.meta_file
        if not path.is_file():
            raise self._missing(path)
        meta = _load_pickle(path)
        names = meta.get(self.names_key)
        if names is None or len(names) != self.num_base_classes:
            raise DataError(f"{path}: corrupt CIFAR meta file (needs {self.num_base_classes} '{self.names_key}')")
        return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]

    # -- long-tailed subset -----------------------------------------------------------------

    @staticmethod
    def long_tail_indices(
        targets: np.ndarray,
        imbalance_ratio: float,
        profile: str = "exp",
        n_max: Optional[int] = None,
        seed: int = 0,
        num_classes: Optional[int] = None,
    ) -> np.ndarray:
        """Indices of the long-tailed subset, by the field's seed-0 protocol.

        Equivalent to the reference code's ``np.random.seed(seed)`` followed, for each class in
        order, by ``idx = np.where(targets == c)[0]; np.random.shuffle(idx); keep idx[:n_c]``,
        without touching numpy's global generator.

        Args:
            targets: Labels of the full training split.
            imbalance_ratio: rho.
            profile: ``"exp"`` or ``"step"``.
            n_max: Head-class count (default: the largest class count in ``targets``).
            seed: Seed of the generator.
            num_classes: C (default ``max(targets) + 1``).

        Returns:
            np.int64 indices into ``targets``, class by class.

        Raises:
            DataError: A class has fewer images than its target count.
        """
        targets = np.asarray(targets, dtype=np.int64)
        num_classes = int(targets.max()) + 1 if num_classes is None else int(num_classes)
        available = np.bincount(targets, minlength=num_classes)
        if n_max is None:
            n_max = int(available.max())
        counts = long_tail_counts(n_max, num_classes, imbalance_ratio, profile)
        rng = np.random.RandomState(seed)
        keep = []
        for c, n_c in enumerate(counts):
            idx = np.where(targets == c)[0]
            if len(idx) < n_c:
                raise DataError(
                    f"class {c} has {len(idx)} training images, fewer than the {n_c} the long-tail profile "
                    f"(n_max={n_max}, imbalance_ratio={imbalance_ratio}, profile={profile}) asks for"
                )
            rng.shuffle(idx)
            keep.append(idx[:n_c])
        return np.concatenate(keep).astype(np.int64)


class CIFAR100(CIFAR10):
    """CIFAR-100 (fine labels), optionally long-tailed. Arguments as :class:`CIFAR10`."""

    base_folder = "cifar-100-python"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    archive_name = "cifar-100-python.tar.gz"
    archive_md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    train_files = ["train"]
    test_files = ["test"]
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    num_base_classes = 100
    default_n_max = 500
    title = "CIFAR-100"


def _cifar_counts(cls: type) -> Callable[..., List[int]]:
    """The count profile of ``cls``'s long-tailed training subset (head class ``n_max``, default
    ``cls.default_n_max``), for :func:`~longtail.data.lt.counts_profile`."""

    def counts(imbalance_ratio: float, profile: str, n_max: Optional[int]) -> List[int]:
        return long_tail_counts(n_max or cls.default_n_max, cls.num_base_classes, imbalance_ratio, profile)

    return counts


def _build_cifar(
    cls: type,
    root: Optional[str],
    imbalance_ratio: float,
    profile: str,
    download: bool,
    n_max: Optional[int],
    seed: int,
) -> DataBundle:
    if not isinstance(download, bool):
        raise ConfigError(f"data.download must be true or false, got {download!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"data.params.seed must be a non-negative integer, got {seed!r}")
    root = "data" if root is None else root
    train = cls(root, train=True, download=download, imbalance_ratio=imbalance_ratio, profile=profile,
                n_max=n_max, seed=seed)
    test = cls(root, train=False)
    return DataBundle(train=train, test=test, val=None, num_classes=cls.num_base_classes,
                      class_counts=train.class_counts, class_names=train.classes,
                      mean=CIFAR_MEAN, std=CIFAR_STD, augment="cifar")


@DATASETS.register("cifar10_lt")
@counts_profile(_cifar_counts(CIFAR10))
def build_cifar10_lt(
    root: Optional[str] = None,
    imbalance_ratio: float = 100,
    profile: str = "exp",
    download: bool = False,
    n_max: Optional[int] = None,
    seed: int = 0,
) -> DataBundle:
    """CIFAR-10-LT: long-tailed training subset, balanced test set.

    Args:
        root: Folder holding ``cifar-10-batches-py`` (default ``data``).
        imbalance_ratio: rho (1 keeps every class at ``n_max``).
        profile: ``"exp"`` or ``"step"``.
        download: Fetch the official archive if files are missing.
        n_max: Head-class count (default 5000).
        seed: Subset-selection seed (the field's protocol: 0).

    Returns:
        A :class:`DataBundle` with augment ``cifar`` and the CIFAR mean / std.
    """
    return _build_cifar(CIFAR10, root, imbalance_ratio, profile, download, n_max, seed)


@DATASETS.register("cifar100_lt")
@counts_profile(_cifar_counts(CIFAR100))
def build_cifar100_lt(
    root: Optional[str] = None,
    imbalance_ratio: float = 100,
    profile: str = "exp",
    download: bool = False,
    n_max: Optional[int] = None,
    seed: int = 0,
) -> DataBundle:
    """CIFAR-100-LT: long-tailed training subset, balanced test set.

    Args:
        root: Folder holding ``cifar-100-python`` (default ``data``).
        imbalance_ratio: rho.
        profile: ``"exp"`` or ``"step"``.
        download: Fetch the official archive if files are missing.
        n_max: Head-class count (default 500).
        seed: Subset-selection seed (the field's protocol: 0).

    Returns:
        A :class:`DataBundle` with augment ``cifar`` and the CIFAR mean / std.
    """
    return _build_cifar(CIFAR100, root, imbalance_ratio, profile, download, n_max, seed)
