"""Export an open_clip ViT CLIP (default TinyCLIP-ViT-8M-16-Text-3M) to the two ONNX files the
device runs, with the official open_clip model code.

image encoder: image f32 [B,3,S,S] (CLIP-normalised; B symbolic, the device pins 1 and a batch)
               -> image_embedding f32 [B,D]      the model's own pooled embedding (encode_image)
               -> patch_embeddings f32 [B,G*G,D] dense per-patch embeddings in the same joint space
text encoder:  tokens i64 [1,77] -> text_embedding f32 [1,D]   (encode_text; NOT normalised)

Dense patch embeddings (MaskCLIP / ClearCLIP value path): the last transformer block's q-k
attention mixes every patch with the global token, so its output carries little locality. The
value path of that block keeps it: patch tokens entering the last block -> ln_1 -> the value
projection of the block's attention -> its out_proj -> ln_post -> the visual projection `proj`.
No residual, no MLP (ClearCLIP found both add noise to the dense map). Same weights as the pooled
path, so the patch embeddings live in the space the text embeddings are compared in.

Weights: `--checkpoint` (an open_clip state dict, e.g. the TinyCLIP release) or `--synthetic
--seed N`: open_clip's own initialisation under a seeded generator. Synthetic weights are NOT
trained: they prove loading, op coverage and numerics, never accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import pathlib
import shutil
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

warnings.filterwarnings("ignore")

import open_clip  # noqa: E402
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # noqa: E402

OPSET = 17
ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DEFAULT_CONFIG = "TinyCLIP-ViT-8M-16-Text-3M"
VOCAB = "bpe_simple_vocab_16e6.txt.gz"

# A small config of the same architecture for the committed test fixture (tests/fixtures/clip_tiny).
# The vocabulary stays the real 49408 tokens so the real tokenizer's ids are valid input.
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 1},
}


def load_config(name: str) -> dict:
    """A config by name: ../shared/models/clip_configs, then open_clip's own; or a JSON path."""
    if name == "tiny":
        return json.loads(json.dumps(TINY))
    p = pathlib.Path(name)
    if p.suffix == ".json" and p.exists():
        return json.loads(p.read_text())
    shared = SHARED / "models" / "clip_configs" / f"{name}.json"
    if shared.exists():
        return json.loads(shared.read_text())
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise SystemExit(f"unknown CLIP config '{name}' (not in {shared.parent} nor open_clip)")
    return cfg


def build(cfg: dict, checkpoint: str | None, seed: int | None) -> nn.Module:
    vc = cfg["vision_cfg"]
    if "timm_model_name" in vc or isinstance(vc.get("layers"), (list, tuple)):
        raise SystemExit("only open_clip ViT image towers have the dense-patch contract")
    if seed is not None:
        torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    if checkpoint:
        sd = torch.load(checkpoint, map_location="cpu", weights_only=False)
        sd = sd.get("state_dict", sd)
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if "attn_mask" not in k]
        if missing or unexpected:
            raise SystemExit(f"{checkpoint}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


class ImageOnnx(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.v = clip.visual

    def forward(self, image):
        v = self.v
        x = v._embeds(image)
        t = v.transformer
        if not t.batch_first:
            x = x.transpose(0, 1)
        blocks = list(t.resblocks)
        for blk in blocks[:-1]:
            x = blk(x)
        last = blocks[-1]
        pooled, _ = v._pool(last(x) if t.batch_first else last(x).transpose(0, 1))
        if not t.batch_first:
            x = x.transpose(0, 1)
        pooled = pooled @ v.proj
        # the value path of the last block (see the module doc)
        attn = last.attn
        d = attn.embed_dim
        val = F.linear(last.ln_1(x), attn.in_proj_weight[2 * d :], attn.in_proj_bias[2 * d :])
        val = attn.out_proj(val)
        dense = v.ln_post(val[:, 1:]) @ v.proj
        return pooled, dense


class TextOnnx(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, tokens):
        return self.clip.encode_text(tokens)


def export(model, cfg: dict, out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    # nn.MultiheadAttention's fused inference kernel has no ONNX form; the plain path does.
    torch.backends.mha.set_fastpath_enabled(False)
    out.mkdir(parents=True, exist_ok=True)
    s = cfg["vision_cfg"]["image_size"]
    ctx = cfg["text_cfg"].get("context_length", 77)
    img_path, txt_path = out / "clip_image.fp32.onnx", out / "clip_text.fp32.onnx"
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    tok = open_clip.tokenize(["a breast ultrasound showing a tumor"], context_length=ctx)
    with torch.no_grad():
        img = ImageOnnx(model)
        pooled, dense = img(x)
        ref = model.encode_image(x)
        if not torch.allclose(pooled, ref, atol=1e-5, rtol=1e-4):
            raise SystemExit("internal: the ONNX image wrapper's pooled output differs from encode_image")
        torch.onnx.export(
            img, (x,), str(img_path),
            input_names=["image"], output_names=["image_embedding", "patch_embeddings"],
            dynamic_axes={"image": {0: "batch"}, "image_embedding": {0: "batch"}, "patch_embeddings": {0: "batch"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
        torch.onnx.export(
            TextOnnx(model), (tok,), str(txt_path),
            input_names=["tokens"], output_names=["text_embedding"],
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    return img_path, txt_path


def copy_vocab(out: pathlib.Path) -> pathlib.Path:
    """The device's tokenizer reads the real CLIP BPE merges, shipped beside the models (the
    copy inside the pinned open-clip-torch wheel; its sha256 goes into the manifest)."""
    src = pathlib.Path(open_clip.__file__).parent / VOCAB
    dst = out / VOCAB
    shutil.copyfile(src, dst)
    with gzip.open(dst) as f:
        if not f.readline().startswith(b"\"bpe_simple_vocab_16e6.txt#version"):
            raise SystemExit(f"{src}: not the CLIP BPE vocabulary")
    return dst


def write_meta(out: pathlib.Path, config: str, cfg: dict, source: str, synthetic: bool, seed: int | None):
    vc, tc = cfg["vision_cfg"], cfg["text_cfg"]
    vocab = out / VOCAB
    meta = {
        "config": config,
        "image_size": vc["image_size"],
        "patch_size": vc["patch_size"],
        "grid": vc["image_size"] // vc["patch_size"],
        "embed_dim": cfg["embed_dim"],
        "context_length": tc.get("context_length", 77),
        "vocab_size": tc.get("vocab_size", 49408),
        "pixel_mean": [round(v * 255, 4) for v in OPENAI_DATASET_MEAN],
        "pixel_std": [round(v * 255, 4) for v in OPENAI_DATASET_STD],
        "vocab": VOCAB,
        "vocab_sha256": hashlib.sha256(vocab.read_bytes()).hexdigest(),
        "dense": "value path of the last block (MaskCLIP/ClearCLIP): ln_1 -> v -> out_proj -> ln_post -> proj",
        "synthetic": synthetic,
        "seed": seed if seed is not None else -1,
        "source": source,
    }
    (out / "clip_meta.json").write_text(json.dumps(meta, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="an open_clip checkpoint (state dict) for --config")
    src.add_argument("--synthetic", action="store_true", help="seeded random weights (NOT trained)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="open_clip ViT config name or JSON file")
    ap.add_argument("--out", default="models", type=pathlib.Path)
    a = ap.parse_args()
    cfg = load_config(a.config)
    model = build(cfg, a.checkpoint, a.seed if a.synthetic else None)
    for p in export(model, cfg, a.out):
        print(p)
    copy_vocab(a.out)
    if a.synthetic:
        source = f"synthetic seed {a.seed}, official open_clip {a.config} architecture"
    else:
        source = f"checkpoint {pathlib.Path(a.checkpoint).name} ({a.config})"
    write_meta(a.out, a.config, cfg, source, a.synthetic, a.seed if a.synthetic else None)


if __name__ == "__main__":
    main()
