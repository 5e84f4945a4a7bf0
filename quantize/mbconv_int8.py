"""Which of stage 0's MBConv 1x1 convolutions LiteMedSAM survives in int8, and with which
activation quantization: the PyTorch model with those convolutions fake-quantized (weights
symmetric 8-bit per output channel after folding the batch norm; activations asymmetric u8 per
tensor from calibration frames, per image row, or per pixel; the output f32), embedding cosine
to fp32 on held-out frames. Unlike onnxruntime's QLinearConv (int8_sweep.py), the output is not
rounded to u8: the form sonomask's int8 MBConv projection computes (docs/ACCURACY.md, "int8").

usage: .venv/bin/python quantize/mbconv_int8.py   (about 2 minutes on 2 cores)
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import lite_medsam  # noqa: E402
import preprocess as P  # noqa: E402


def folded(m):
    """Conv2d_BN's convolution with its batch norm folded in: (weight, bias)."""
    s = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)
    return m.c.weight * s[:, None, None, None], m.bn.bias - m.bn.running_mean * s


def q_weights(w):
    s = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12) / 127
    return torch.round(w / s).clamp(-127, 127) * s


def q_u8(x, lo, hi):
    """Asymmetric u8 over [min(lo, 0), max(hi, 0)] (broadcast), dequantized."""
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    s = ((hi - lo) / 255).clamp(min=1e-12)
    z = torch.round(-lo / s)
    return (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s


ACTIVATIONS = {
    "f32 (weights only)": lambda x, st: x,
    "per tensor, calibrated": lambda x, st: q_u8(x, torch.tensor(st[0]), torch.tensor(st[1])),
    "per image row (dynamic)": lambda x, st: q_u8(x, x.amin(dim=(1, 3), keepdim=True), x.amax(dim=(1, 3), keepdim=True)),
    "per pixel (dynamic)": lambda x, st: q_u8(x, x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)),
}


def main():
    torch.set_num_threads(2)
    enc = lite_medsam.build().image_encoder
    recipe = P.Recipe("lite_medsam", 256)
    sets = P.LITE_CALIBRATION_SETS
    cal = [torch.from_numpy(recipe.input(P.load_rgb(i))) for i, _ in P.calibration_set(P.SHARED, 3, sets=sets)]
    held = [torch.from_numpy(recipe.input(P.load_rgb(i))) for i, _ in P.calibration_set(P.SHARED, 2, held_out=True, sets=sets)]
    with torch.no_grad():
        refs = [enc(x).double().ravel() for x in held]
    # Stage 0's blocks and the patch merging after it: expansion (conv1) and projection (conv3).
    blocks = list(enc.layers[0].blocks) + [enc.layers[0].downsample]
    convs = {"expansion": [b.conv1 for b in blocks], "projection": [b.conv3 for b in blocks]}
    stats = {}

    def patch(mods, act):
        for m in mods:
            w, b = folded(m)
            wq = q_weights(w)

            def fwd(x, m=m, w=w, b=b, wq=wq):
                if act is None:  # calibration: the input's range over every frame
                    st = stats.setdefault(id(m), [0.0, 0.0])
                    st[0], st[1] = min(st[0], x.min().item()), max(st[1], x.max().item())
                    return F.conv2d(x, w, b, m.c.stride)
                return F.conv2d(act(x, stats.get(id(m))), wq, b, m.c.stride)

            m.forward = fwd

    def unpatch(mods):
        for m in mods:
            del m.forward

    every = convs["expansion"] + convs["projection"]
    patch(every, None)
    with torch.no_grad():
        for x in cal:
            enc(x)
    unpatch(every)
    print(f"{len(cal)} calibration frames, {len(held)} held-out frames ({', '.join(sets)})")
    print("| stage-0 1x1 convolutions in int8 | activations | embedding cosine to fp32, mean | min |")
    print("|---|---|---|---|")
    for which, mods in [("expansion + projection", every), ("projection only", convs["projection"])]:
        for name, act in ACTIVATIONS.items():
            patch(mods, act)
            with torch.no_grad():
                cos = []
                for x, r in zip(held, refs):
                    y = enc(x).double().ravel()
                    cos.append(float(y @ r / (y.norm() * r.norm())))
            unpatch(mods)
            print(f"| {which} | {name} | {np.mean(cos):.4f} | {np.min(cos):.4f} |", flush=True)


if __name__ == "__main__":
    main()
