"""Host toolchain tests (run: .venv/bin/python -m pytest quantize or python quantize/test_sam_arch.py).

The synthetic MobileSAM has exactly the official checkpoint's keys, shapes and dtypes, as listed
in ../shared/models/mobilesam_state_dict_keys.tsv."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import preprocess  # noqa: E402
import sam_arch  # noqa: E402

TSV = preprocess.SHARED / "models" / "mobilesam_state_dict_keys.tsv"
DTYPES = {"FloatStorage": "torch.float32", "LongStorage": "torch.int64"}


def state_dict_rows(seed=0):
    sd = sam_arch.build("vit_t", seed=seed).state_dict()
    return [(k, list(v.shape), str(v.dtype)) for k, v in sd.items()]


def test_synthetic_matches_official_key_list():
    if not TSV.exists():
        raise AssertionError(f"{TSV} is missing: this test needs ../shared/models")
    want = []
    for line in TSV.read_text().splitlines()[1:]:
        key, shape, _, dtype, _ = line.split("\t")
        want.append((key, eval(shape), DTYPES[dtype]))
    got = state_dict_rows()
    assert sorted(got) == sorted(want), set(map(str, got)) ^ set(map(str, want))
    assert len(got) == 439
    assert sum(eval("*".join(map(str, s)) or "1") for _, s, _ in got) == 10_140_231


def test_synthetic_is_seeded():
    a = sam_arch.build("vit_t", seed=3).state_dict()
    b = sam_arch.build("vit_t", seed=3).state_dict()
    c = sam_arch.build("vit_t", seed=4).state_dict()
    k = "image_encoder.patch_embed.seq.0.c.weight"
    assert (a[k] == b[k]).all() and not (a[k] == c[k]).all()


if __name__ == "__main__":
    test_synthetic_matches_official_key_list()
    test_synthetic_is_seeded()
    print("2 passed, 0 failed")
