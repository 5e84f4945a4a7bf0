"""models/manifest.toml: what each model file is, bound by sha256. The device refuses a file whose
hash or I/O contract disagrees with it, and says when the weights are synthetic."""

from __future__ import annotations

import hashlib
import json
import pathlib

import onnx

import onnx_prep
import sam_arch

ROLES = {
    "sam_encoder": "SAM image encoder (TinyViT)",
    "sam_decoder": "SAM prompt encoder + mask decoder",
    "clip_image": "CLIP image encoder (pooled + dense patch embeddings)",
    "clip_text": "CLIP text encoder",
}


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _shape(vi) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def _toml_list(xs) -> str:
    return "[" + ", ".join(repr(x) if not isinstance(x, str) else f'"{x}"' for x in xs) + "]"


def _clip_section(models_dir: pathlib.Path) -> list[str]:
    """[clip] from the clip_meta.json that export_clip.py leaves beside the CLIP models."""
    p = models_dir / "clip_meta.json"
    if not p.exists():
        return []
    m = json.loads(p.read_text())
    out = ["[clip]"]
    for k in ("config", "image_size", "patch_size", "grid", "embed_dim", "context_length", "vocab_size",
              "pixel_mean", "pixel_std", "vocab", "vocab_sha256", "dense", "synthetic", "seed", "source"):
        v = m[k]
        if isinstance(v, bool):
            out.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, list):
            out.append(f"{k} = {_toml_list(v)}")
        elif isinstance(v, str):
            out.append(f'{k} = "{v}"')
        else:
            out.append(f"{k} = {v}")
    return out + [""]


def write(
    models_dir: pathlib.Path,
    config: str,
    source: str,
    synthetic: bool,
    seed: int | None,
    package: str = "",
    checkpoint_sha256: str = "",
) -> pathlib.Path:
    cfg = sam_arch.CONFIGS[config]
    family = sam_arch.FAMILY[config]
    # The family picks the recipe; min-max scaling has no constants (mean 0, std 1 are unused).
    mean_std = family == "mobilesam"
    lines = [
        "# sonomask model manifest (written by quantize/manifest.py; do not edit by hand).",
        "# synthetic = true means seeded random weights: NOT trained, outputs carry no meaning.",
        "format = 1",
        "",
        "[sam]",
        f'family = "{family}"',
        f'normalization = "{"mean_std" if mean_std else "min_max"}"',
        f'config = "{config}"',
        f"image_size = {cfg.image_size}",
        f"embed_dim = {cfg.embed_dim}",
        f"embedding_size = {cfg.embedding_size}",
        f"low_res_size = {cfg.low_res_size}",
        f"pixel_mean = {_toml_list(sam_arch.PIXEL_MEAN if mean_std else [0.0, 0.0, 0.0])}",
        f"pixel_std = {_toml_list(sam_arch.PIXEL_STD if mean_std else [1.0, 1.0, 1.0])}",
        "mask_threshold = 0.0",
        f"synthetic = {'true' if synthetic else 'false'}",
        f"seed = {seed if seed is not None else -1}",
        f'source = "{source}"',
        f'package = "{package}"',
        f'checkpoint_sha256 = "{checkpoint_sha256}"',
        "",
    ]
    lines += _clip_section(models_dir)
    for role in ROLES:
        # int8w7: the 7-bit-weight int8 variant sonomask loads where its int8 kernel is AVX2.
        for stem, precision in (("fp32", "fp32"), ("int8", "int8"), ("int8w7", "int8")):
            f = models_dir / f"{role}.{stem}.onnx"
            if not f.exists():
                continue
            m = onnx.load(str(f), load_external_data=False)
            # The width the weights have, read from the file (CLIP's int8 is 7-bit throughout).
            bits = None
            if precision == "int8":
                widest = onnx_prep.max_weight_magnitude(m)
                if stem == "int8w7" and widest > 64:
                    raise SystemExit(f"{f}: a 7-bit variant with an int8 weight of magnitude {widest}")
                bits = 7 if widest <= 64 else 8
            lines += [
                "[[model]]",
                f'file = "{f.name}"',
                f'role = "{role}"',
                f'precision = "{precision}"',
                f'sha256 = "{sha256(f)}"',
                f"bytes = {f.stat().st_size}",
            ]
            if bits is not None:
                lines.append(f"weight_bits = {bits}")
            for kind, vis in (("input", m.graph.input), ("output", m.graph.output)):
                inits = {i.name for i in m.graph.initializer}
                for vi in vis:
                    if vi.name in inits:
                        continue
                    lines += [f"[[model.{kind}]]", f'name = "{vi.name}"', f"shape = {_toml_list(_shape(vi))}"]
            lines.append("")
    out = models_dir / "manifest.toml"
    out.write_text("\n".join(lines))
    return out
