"""Re-encode a CIFAR copy as JPEG at a lower quality: the dose of a copy-sensitivity probe.

The CIFAR-10 on the project's machines is a JPEG copy of the release (quality 75, 4:2:0 chroma).
Whether a method loses more than CE on that copy cannot be checked without the original images.
What can be measured is the dose response: train CE and the method again on the copy re-encoded at
a lower quality, and compare how much each loses from the copy to the re-encoded copy
(``results/notes.md``, the FBL paragraph).

    python3 benchmarks/recompress_cifar.py /work/cifar /work/cifar-q50 --quality 50
    longtail train cifar10_lt/fbl data.root=/work/cifar-q50 ...

SRC and DST are roots that hold (or will hold) ``cifar-10-batches-py/`` or ``cifar-100-python/``.
Every batch file is written again with its keys, labels and order unchanged and each image encoded
as JPEG at ``--quality`` and decoded (Pillow); every other file is copied byte for byte. The PSNR
of the re-encoded images against SRC's, over all pixels of each file, is printed and written to
``DST/recompress.json``. DST must not hold a CIFAR folder yet: nothing is overwritten.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from longtail.data.cifar import CIFAR10, CIFAR100, _load_pickle  # noqa: E402
from longtail.errors import DataError  # noqa: E402

FOLDERS = (CIFAR10.base_folder, CIFAR100.base_folder)
SUBSAMPLING = ("4:4:4", "4:2:2", "4:2:0")


def jpeg_roundtrip(img: np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """One HWC uint8 RGB image encoded as JPEG and decoded again."""
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.uint8)


def recompress_rows(rows: np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """CIFAR rows (N, 3 * 32 * 32, channel-planar) with every image re-encoded."""
    rows = np.asarray(rows, dtype=np.uint8)
    if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR rows must be (N, 3072) uint8, got {rows.shape}")
    imgs = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    out = np.stack([jpeg_roundtrip(np.ascontiguousarray(im), quality, subsampling) for im in imgs]) if len(imgs) \
        else imgs.copy()
    return out.transpose(0, 3, 1, 2).reshape(len(rows), -1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all pixels of two uint8 arrays (inf where they are equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def cifar_folder(root: Path) -> Path:
    for name in FOLDERS:
        if (root / name).is_dir():
            return root / name
    raise SystemExit(f"{root}: holds neither {' nor '.join(FOLDERS)} (make the copy with "
                     "`python3 ../shared/data/cifar10_from_jpeg.py DIR`)")


def recompress(src: Path, dst: Path, quality: int, subsampling: str = "4:2:0") -> dict:
    """Write DST's CIFAR folder from SRC's; returns the record written to ``DST/recompress.json``."""
    folder = cifar_folder(src)
    out = dst / folder.name
    if src.resolve() == dst.resolve():
        raise SystemExit(f"{dst}: the destination is the source")
    if out.exists():
        raise SystemExit(f"{out}: already exists; choose another destination (nothing was overwritten)")
    out.mkdir(parents=True)
    files = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            batch = _load_pickle(path)
        except DataError:  # not a pickle (a README, an archive): copied as it is
            batch = None
        if batch is None or "data" not in batch:
            shutil.copyfile(path, out / path.name)
            continue
        rows = np.asarray(batch["data"], dtype=np.uint8)
        new = recompress_rows(rows, quality, subsampling)
        with open(out / path.name, "wb") as f:
            pickle.dump({**batch, "data": new}, f, protocol=2)
        files[path.name] = {"images": int(len(rows)), "psnr_db": round(psnr(rows, new), 3)}
        print(f"{path.name}: {len(rows)} images, PSNR {files[path.name]['psnr_db']:.2f} dB against {src}")
    record = {"source": str(src), "quality": quality, "subsampling": subsampling, "files": files}
    (dst / "recompress.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path, help="root holding cifar-10-batches-py/ or cifar-100-python/")
    ap.add_argument("dst", type=Path, help="root to write the re-encoded folder into")
    ap.add_argument("--quality", type=int, required=True, help="JPEG quality, 1..95")
    ap.add_argument("--subsampling", choices=SUBSAMPLING, default="4:2:0",
                    help="chroma subsampling (the copy's is 4:2:0)")
    args = ap.parse_args(argv)
    if not 1 <= args.quality <= 95:
        ap.error(f"--quality {args.quality}: must be within 1..95")
    recompress(args.src, args.dst, args.quality, args.subsampling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
