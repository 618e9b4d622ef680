"""Calibration and held-out evaluation sets for the benchmarks, built from the real data on disk.

Every set is a dict ``{input_name: float32 array}`` (plus ``"label"`` where there are labels), stacked
along axis 0, ready for ``np.savez`` and ``onnxq.data.open_dataset``. Calibration and evaluation samples
never coincide; how they are kept apart is said per model below. Everything is seeded, so two runs of a
benchmark see the same samples.

* ``sample_models/*``: ``sample_models/calib.npz`` (200 images) to calibrate, ``sample_models/test.npz``
  (400 other images, with labels) to evaluate.
* ``squeezenet1.1``: random 224x224 crops (and horizontal flips) of the 14 photos in
  ``../shared/models/photos``, after resizing the shorter side to 256, with the model's Caffe
  preprocessing (BGR, 0..255, minus the mean [104, 117, 123]). Calibration and evaluation crops are drawn
  with different seeds, and a crop (photo, position, flip) already used for calibration is never reused
  for evaluation.
* ``ppocr_mobile_v2_cls``: the recorded text-line crops; ``input_00..02`` (18 lines of one image) for
  calibration, ``input_03..04`` (7 lines of two other images) for evaluation. Each set is widened with
  what the real pipeline also produces: the same line rotated by 180 degrees (the upside-down case this
  classifier exists for) and shorter crops of the line (a text box holding fewer characters), re-padded
  on the right with zeros exactly as RapidOCR pads.

Pillow is needed for the photos (``pip install 'onnxq[bench]'``); nothing in the package imports this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"
SAMPLE_MODELS = ROOT / "sample_models"
SQUEEZENET_DIR = SHARED / "squeezenet1.1"
PPOCR_DIR = SHARED / "ppocr_mobile_v2_cls"
PHOTOS_DIR = SHARED / "photos"

CAFFE_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
SHORT_SIDE = 256
CROP = 224
PPOCR_MIN_WIDTH = 48  # a text box narrower than it is tall is not a line of text


# --- sample models -----------------------------------------------------------------------------


def sample_model_sets() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(calibration, evaluation) for the sample models: calib.npz and test.npz (with labels)."""
    with np.load(SAMPLE_MODELS / "calib.npz", allow_pickle=False) as f:
        calib = {"input": f["input"].astype(np.float32)}
    with np.load(SAMPLE_MODELS / "test.npz", allow_pickle=False) as f:
        test = {"input": f["input"].astype(np.float32), "label": f["label"].astype(np.int64)}
    return calib, test


# --- squeezenet: crops of real photos ----------------------------------------------------------


def load_photo(path: Path) -> np.ndarray:
    """The photo as RGB uint8 [H, W, 3], its shorter side resized to 256 (bilinear), as the README says."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
        w, h = rgb.size
        scale = SHORT_SIDE / min(w, h)
        size = (max(SHORT_SIDE, round(w * scale)), max(SHORT_SIDE, round(h * scale)))
        return np.asarray(rgb.resize(size, Image.BILINEAR), dtype=np.uint8)


def caffe_tensor(rgb_crop: np.ndarray) -> np.ndarray:
    """RGB uint8 [224, 224, 3] -> float32 [3, 224, 224]: BGR, 0..255, minus the Caffe mean."""
    bgr = rgb_crop[:, :, ::-1].astype(np.float32) - CAFFE_MEAN_BGR
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))


def center_crop(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - CROP) // 2, (w - CROP) // 2
    return img[top : top + CROP, left : left + CROP]


def photo_paths() -> list[Path]:
    exts = {".jpg", ".jpeg", ".png"}
    return sorted(p for p in PHOTOS_DIR.iterdir() if p.suffix.lower() in exts)


def _random_crops(
    photos: list[np.ndarray], n: int, seed: int, exclude: set[tuple[int, int, int, bool]]
) -> tuple[np.ndarray, set[tuple[int, int, int, bool]]]:
    """``n`` distinct random (photo, top, left, flip) crops not in ``exclude``, round-robin over photos."""
    rng = np.random.default_rng(seed)
    out, used = [], set()
    i = 0
    while len(out) < n:
        k = i % len(photos)
        i += 1
        h, w = photos[k].shape[:2]
        key = (k, int(rng.integers(0, h - CROP + 1)), int(rng.integers(0, w - CROP + 1)), bool(rng.integers(0, 2)))
        if key in exclude or key in used:
            continue
        used.add(key)
        crop = photos[k][key[1] : key[1] + CROP, key[2] : key[2] + CROP]
        out.append(caffe_tensor(crop[:, ::-1] if key[3] else crop))
    return np.stack(out), used


def squeezenet_sets(n_calib: int = 64, n_eval: int = 98) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(calibration, evaluation) crops of the photos for squeezenet1.1's input ``data_0``."""
    photos = [load_photo(p) for p in photo_paths()]
    calib, used = _random_crops(photos, n_calib, seed=0, exclude=set())
    held_out, _ = _random_crops(photos, n_eval, seed=1, exclude=used)
    return {"data_0": calib}, {"data_0": held_out}


# --- ppocr: recorded text lines, rotated and cropped --------------------------------------------


def content_width(line: np.ndarray) -> int:
    """Columns before RapidOCR's right zero padding (normalized pixels are never exactly 0: (p/255-.5)/.5)."""
    cols = np.flatnonzero(np.any(line != 0, axis=(0, 1)))
    return int(cols[-1]) + 1 if cols.size else 0


def _pad_right(content: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros(content.shape[:2] + (width,), dtype=np.float32)
    out[:, :, : content.shape[2]] = content
    return out


def ppocr_variants(lines: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` samples: every line, every line rotated 180 degrees, then random shorter crops of random lines
    (rotated or not) until there are ``n``."""
    width = lines.shape[3]
    contents = [line[:, :, : content_width(line)] for line in lines]
    out = [_pad_right(c, width) for c in contents]
    out += [_pad_right(c[:, ::-1, ::-1], width) for c in contents]
    rng = np.random.default_rng(seed)
    while len(out) < n:
        c = contents[int(rng.integers(len(contents)))]
        if c.shape[2] <= PPOCR_MIN_WIDTH:
            continue
        w = int(rng.integers(PPOCR_MIN_WIDTH, c.shape[2]))
        left = int(rng.integers(0, c.shape[2] - w + 1))
        piece = c[:, :, left : left + w]
        out.append(_pad_right(piece[:, ::-1, ::-1] if rng.integers(2) else piece, width))
    return np.stack(out[:n]).astype(np.float32)


def ppocr_sets(n_calib: int = 64, n_eval: int = 64) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(calibration, evaluation) for ppocr_mobile_v2_cls's input ``x``; the two come from different images."""
    real = PPOCR_DIR / "real_inputs"
    calib_lines = np.concatenate([np.load(real / f"input_0{i}.npy", allow_pickle=False) for i in (0, 1, 2)])
    eval_lines = np.concatenate([np.load(real / f"input_0{i}.npy", allow_pickle=False) for i in (3, 4)])
    return {"x": ppocr_variants(calib_lines, n_calib, seed=0)}, {"x": ppocr_variants(eval_lines, n_eval, seed=1)}
