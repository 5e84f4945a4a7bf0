"""SAM preprocessing exactly as at run time on the device (and as the official SamPredictor does):
longest side resized to S with int(dim*scale+0.5) (PIL bilinear via torchvision, like
ResizeLongestSide.apply_image), RGB, (x-mean)/std, zero padding bottom/right to SxS.
The Rust runtime (src/preprocess.rs) ports this bit-exactly; tests/fixtures pins the agreement."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

from mobile_sam.utils.transforms import ResizeLongestSide

from sam_arch import PIXEL_MEAN, PIXEL_STD

# ../shared beside the project root (never copied into the project).
SHARED = pathlib.Path(__file__).resolve().parent.parent.parent / "shared"


def load_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def resize_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    return ResizeLongestSide(size).apply_image(rgb)


def preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxWx3 -> f32 [1,3,S,S]"""
    r = resize_uint8(rgb, size).astype(np.float32)
    x = (r - np.array(PIXEL_MEAN, np.float32)) / np.array(PIXEL_STD, np.float32)
    out = np.zeros((1, 3, size, size), np.float32)
    out[0, :, : x.shape[0], : x.shape[1]] = x.transpose(2, 0, 1)
    return out


def transform_coords(xy: np.ndarray, orig_hw, size: int) -> np.ndarray:
    return ResizeLongestSide(size).apply_coords(np.asarray(xy, np.float64), orig_hw).astype(np.float32)


class Recipe:
    """A model family's official input recipe and box transform (the manifest's `family`)."""

    def __init__(self, family: str, size: int):
        if family not in ("mobilesam", "lite_medsam"):
            raise SystemExit(f"error: unknown SAM family {family!r} (known: mobilesam, lite_medsam)")
        self.family, self.size = family, size

    def input(self, rgb: np.ndarray) -> np.ndarray:
        if self.family == "lite_medsam":
            import lite_medsam

            return lite_medsam.preprocess(rgb, self.size)
        return preprocess(rgb, self.size)

    def box(self, box, orig_hw) -> np.ndarray:
        """Box corners in the model frame, [1, 2, 2]."""
        if self.family == "lite_medsam":
            import lite_medsam

            return lite_medsam.box_to_model(box, orig_hw, self.size).reshape(1, 2, 2)
        return transform_coords(np.array(box, np.float32).reshape(2, 2), orig_hw, self.size)[None]


def load_mask(paths: list[pathlib.Path]) -> np.ndarray:
    """Union of the GT masks; a pixel is foreground where any channel > 127 (shared/README)."""
    m = None
    for p in paths:
        a = np.asarray(Image.open(p).convert("RGB")).max(axis=2) > 127
        m = a if m is None else (m | a)
    return m


def mask_box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def read_pairs(dataset_dir: pathlib.Path):
    """[(image path, [mask paths])] from a shared/data set's pairs.csv."""
    out = []
    with open(dataset_dir / "pairs.csv", newline="") as f:
        for row in csv.DictReader(f):
            img = dataset_dir / row["image"]
            masks = [dataset_dir / m for m in row["mask(s)"].split(";") if m]
            out.append((img, masks))
    return out


CALIBRATION_SETS = ("busi", "hc18")
# LiteMedSAM's int8 is judged on every labelled set: calibrate on three kinds of ultrasound.
LITE_CALIBRATION_SETS = ("busi", "hc18", "tg3k_thyroid_gland")
# ... and on every modality the cart may see (ultrasound, chest X-ray, endoscopy, brain MRI).
LITE_CALIBRATION_SETS_ALL = LITE_CALIBRATION_SETS + (
    "busbra_minitest", "bus_uc_malignant_minitest", "breast_lesions_usg_minitest",
    "shenzhen_cxr_lung", "kvasir_seg", "lgg_brain_mri_minitest",
)


def calibration_set(shared: pathlib.Path, per_set: int, held_out: bool = False, sets=CALIBRATION_SETS):
    """Evenly spaced frames with a non-empty GT from real ultrasound sets. `held_out` gives the
    frames half a step further on: disjoint from the calibration frames, for verification."""
    frames = []
    for name in sets:
        d = shared / "data" / name
        if not (d / "pairs.csv").exists():
            continue
        pairs = [p for p in read_pairs(d)]
        pairs = [p for p in pairs if mask_box(load_mask(p[1])) is not None]
        step = max(1, len(pairs) // per_set)
        frames += pairs[max(1, step // 2) if held_out else 0 :: step][:per_set]
    return frames
