"""Reference pixels for sonomask's DICOM reader, decoded by an independent reader (pydicom).

Writes tests/fixtures/dicom/:
  reference.json      for each of the three real files in ../shared/data/dicom_us (not copied):
                      geometry, photometric, transfer syntax, pixel spacing, and per frame the
                      sha256 of pydicom's RGB pixels (native files) or mean RGB (JPEG), plus
  ybr_frame{00,29}.png  pydicom's RGB decode of two JPEG frames (JPEG decoders differ by a few
                      levels, so the test compares these with a stated tolerance);
  variants/*.dcm      small files pydicom writes from crops of the real ones, one per encoding the
                      shared files lack (implicit VR LE, explicit VR BE, MONOCHROME1/2 8 and 16
                      bit, native YBR_FULL and YBR_FULL_422, planar RGB, multi-frame palette with
                      a 16-bit LUT), with variants/*.rgb: pydicom's pixels as RGB8 bytes.

Run: .venv/bin/python quantize/make_dicom_fixtures.py
"""
import hashlib
import json
import pathlib

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import convert_color_space, apply_color_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pydicom.filewriter import dcmwrite

# Beside the project root (as in preprocess.py; not imported from there to keep torch out).
SHARED = pathlib.Path(__file__).resolve().parent.parent.parent / "shared"

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dicom"
SRC = SHARED / "data" / "dicom_us"


def to_rgb8(ds, arr):
    """pydicom's pixel array as RGB8 the way a viewer shows it."""
    pi = ds.PhotometricInterpretation
    if pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return (rgb >> 8).astype(np.uint8) if rgb.dtype != np.uint8 else rgb
    # YBR_* (native or JPEG): pydicom's pixel_array is already RGB (as_rgb=True).
    if pi.startswith("MONOCHROME"):
        bits = ds.BitsStored
        a = arr.astype(np.int64)
        if bits > 8:
            a = a >> (bits - 8)
        a = a.astype(np.uint8)
        if pi == "MONOCHROME1":
            a = 255 - a
        return np.stack([a, a, a], axis=-1)
    return arr


def spacing(ds):
    if "PixelSpacing" in ds:
        return [float(v) for v in ds.PixelSpacing]
    for r in ds.get("SequenceOfUltrasoundRegions", []):
        if r.get("PhysicalUnitsXDirection") == 3 and r.get("PhysicalUnitsYDirection") == 3:
            return [float(r.PhysicalDeltaY) * 10.0, float(r.PhysicalDeltaX) * 10.0]
    return None


def real_files():
    ref = {}
    for name in ["examples_palette.dcm", "examples_rgb_color.dcm", "examples_ybr_color.dcm"]:
        ds = pydicom.dcmread(SRC / name)
        arr = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1))
        if frames == 1:
            arr = arr[None]
        rgb = np.stack([to_rgb8(ds, a) for a in arr])
        entry = {
            "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
            "photometric": ds.PhotometricInterpretation,
            "rows": ds.Rows,
            "columns": ds.Columns,
            "frames": frames,
            "pixel_spacing_mm": spacing(ds),
        }
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            entry["mean_rgb"] = [[round(float(v), 4) for v in f.reshape(-1, 3).mean(0)] for f in rgb]
            for k in (0, frames - 1):
                Image.fromarray(rgb[k]).save(OUT / f"ybr_frame{k:02d}.png")
        else:
            entry["sha256"] = [hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest() for f in rgb]
        ref[name] = entry
    return ref


def write_variant(name, ds, pixels, ts, photometric, rgb_ref):
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.6.1")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3.4")
    # A conformant File Meta group (its length, version and implementation UID; pydicom fills in
    # the length): strict readers (dicom-rs, tests/dicom_rs_crosscheck.rs) refuse files without it.
    ds.file_meta.FileMetaInformationGroupLength = 0
    ds.file_meta.FileMetaInformationVersion = b"\x00\x01"
    ds.file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds.PhotometricInterpretation = photometric
    ds.PixelData = pixels
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    path = OUT / "variants" / f"{name}.dcm"
    ds.preamble = b"\0" * 128
    dcmwrite(path, ds, little_endian=ts != ExplicitVRBigEndian,
             implicit_vr=ts == ImplicitVRLittleEndian, force_encoding=True)
    # Read back with pydicom: the reference is what an independent reader makes of the file.
    back = pydicom.dcmread(path)
    arr = back.pixel_array
    frames = int(back.get("NumberOfFrames", 1))
    if frames == 1:
        arr = arr[None]
    rgb = np.stack([to_rgb8(back, a) for a in arr]).astype(np.uint8)
    if rgb_ref is not None:
        assert np.abs(rgb.astype(int) - rgb_ref.astype(int)).max() <= 2, name
    (OUT / "variants" / f"{name}.rgb").write_bytes(rgb.tobytes())
    return {"rows": back.Rows, "columns": back.Columns, "frames": frames, "photometric": photometric}


def variants():
    (OUT / "variants").mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(SRC / "examples_rgb_color.dcm")
    crop = np.ascontiguousarray(base.pixel_array[100:130, 140:180])  # 30 x 40 RGB
    h, w = crop.shape[:2]
    out = {}

    def fresh(samples, bits=8, frames=1):
        ds = pydicom.dcmread(SRC / "examples_rgb_color.dcm")
        del ds.PixelData
        ds.Rows, ds.Columns, ds.SamplesPerPixel = h, w, samples
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        if samples == 3:
            ds.PlanarConfiguration = 0
        elif "PlanarConfiguration" in ds:
            del ds.PlanarConfiguration
        if frames > 1:
            ds.NumberOfFrames = frames
        return ds

    for name, ts in [("implicit_le_rgb", ImplicitVRLittleEndian), ("explicit_be_rgb", ExplicitVRBigEndian)]:
        out[name] = write_variant(name, fresh(3), crop.tobytes(), ts, "RGB", crop[None])

    ds = fresh(3)
    ds.PlanarConfiguration = 1
    out["rgb_planar"] = write_variant("rgb_planar", ds, crop.transpose(2, 0, 1).tobytes(),
                                      ExplicitVRLittleEndian, "RGB", crop[None])

    ybr = convert_color_space(crop, "RGB", "YBR_FULL")
    out["ybr_full_native"] = write_variant("ybr_full_native", fresh(3), ybr.tobytes(),
                                           ExplicitVRLittleEndian, "YBR_FULL", crop[None])
    # 4:2:2: Y0 Y1 Cb Cr per horizontal pair, chroma averaged over the pair.
    y = ybr[..., 0]
    cb = ((ybr[:, 0::2, 1].astype(int) + ybr[:, 1::2, 1]) // 2).astype(np.uint8)
    cr = ((ybr[:, 0::2, 2].astype(int) + ybr[:, 1::2, 2]) // 2).astype(np.uint8)
    packed = np.stack([y[:, 0::2], y[:, 1::2], cb, cr], axis=-1)
    out["ybr_full_422_native"] = write_variant("ybr_full_422_native", fresh(3), packed.tobytes(),
                                               ExplicitVRLittleEndian, "YBR_FULL_422", None)

    gray = np.ascontiguousarray(crop[..., 1])
    for name, pi in [("mono2_8", "MONOCHROME2"), ("mono1_8", "MONOCHROME1")]:
        out[name] = write_variant(name, fresh(1), gray.tobytes(), ExplicitVRLittleEndian, pi, None)
    ds = fresh(1, bits=16)
    ds.BitsStored, ds.HighBit = 12, 11
    g16 = (gray.astype(np.uint16) << 4) | 0x9
    out["mono2_16"] = write_variant("mono2_16", ds, g16.astype("<u2").tobytes(), ExplicitVRLittleEndian,
                                    "MONOCHROME2", None)

    pal = pydicom.dcmread(SRC / "examples_palette.dcm")
    idx = np.ascontiguousarray(pal.pixel_array[150:180, 300:340])
    frames = np.stack([idx, idx[::-1], 255 - idx])
    ds = pal
    del ds.PixelData
    ds.Rows, ds.Columns, ds.NumberOfFrames = h, w, 3
    out["palette_3frames"] = write_variant("palette_3frames", ds, frames.tobytes(), ExplicitVRLittleEndian,
                                           "PALETTE COLOR", None)
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    ref = {"source": "pydicom " + pydicom.__version__, "real": real_files(), "variants": variants()}
    (OUT / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
