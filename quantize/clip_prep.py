"""CLIP preprocessing exactly as on the device (src/preprocess.rs `clip_input_into`): the whole
frame resized to SxS with PIL bilinear (no centre crop: saliency must cover the whole frame,
as in MedCLIP-SAM), RGB/255, normalised with the OpenAI CLIP mean/std."""

from __future__ import annotations

import numpy as np
from PIL import Image

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD


def clip_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxWx3 -> f32 [1,3,S,S]"""
    r = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR)).astype(np.float32) / 255.0
    x = (r - np.array(OPENAI_DATASET_MEAN, np.float32)) / np.array(OPENAI_DATASET_STD, np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)
