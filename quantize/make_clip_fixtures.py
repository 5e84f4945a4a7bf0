"""Regenerate the committed CLIP test fixtures. Needs ../shared (prompts, calibration frames).

tests/fixtures/clip_tokenizer.jsonl
  {"text": ..., "ids": [...]} per line: open_clip's own tokenizer (open-clip-torch 3.3.0, ftfy 6.3.1)
  on every prompt in ../shared/data/prompts_reference plus seeded generated strings (unicode,
  punctuation, numbers, HTML entities, control characters, empty, over-long). ids are the full
  77-token row without the zero padding. The Rust tokenizer must reproduce every row.
tests/fixtures/models_tiny/clip_*.onnx
  the `tiny` config of the open_clip ViT architecture (export_clip.TINY), seeded synthetic weights
  (NOT trained), exported and quantized by the same code as the full models, with onnxruntime
  references on the committed input.png:
    clip_ref_<prec>_pooled.f32 [1,D], clip_ref_<prec>_patches.f32 [1,G*G,D]
    clip_ref_<prec>_text.f32 [T,D] for the texts in clip_cases.json (tokenized by open_clip)
  The vocabulary is NOT committed (it is ../shared/models/clip_bpe, and the wheel's copy).
"""

from __future__ import annotations

import json
import pathlib
import random
import sys
import tomllib
import unicodedata

import ftfy
import numpy as np
import onnxruntime as ort
import open_clip
from PIL import Image

import clip_prep
import export_clip
import manifest
import preprocess
import quantize_clip

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
TINY_DIR = FIX / "models_tiny"

CLIP_CASES = [
    "breast tumor",
    "A medical breast ultrasound showing a hypoechoic tumor.",
    "fetal head",
    "",
]

WORDS = (
    "breast tumor fetal head thyroid nodule lung lungs chest x-ray ultrasound hypoechoic hyperechoic "
    "benign malignant lesion mass cyst gland skull brain MRI scan image showing a an the of with in "
    "well-defined irregular margins calcification Doppler echogenic shadowing posterior acoustic"
).split()
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "—", "–", "…", "«", "»", "¿", "¡", "·", "•", "§", "¶", "†"]
QUOTES = ["\u2018", "\u2019", "\u201c", "\u201d", "\u201a", "\u201e", "\u2032", "\u00b4", "`"]
NUMBERS = ["0", "7", "42", "3.5", "12.75", "1,000", "2024", "-3", "+5", "1e-3", "½", "¾", "²", "³", "µm", "5mm",
           "3.2cm", "10%", "٣", "५", "Ⅻ", "①", "⁴", "10⁻³", "0x1F"]
LETTERS = ["é", "É", "ü", "ß", "ñ", "ç", "ø", "å", "Æ", "œ", "ŀ", "ĳ", "İ", "ı", "Σ", "σ", "ς", "ΣΟΦΟΣ", "Ωmega",
           "αβγ", "Привет", "ЁЖ", "日本語", "超音波", "갑상선", "العربية", "हिन्दी", "ไทย", "עברית", "ǅ", "ǈ", "Ⓐ",
           "ᴀ", "ꝏ", "𝔘𝔫𝔦", "𝐁𝐨𝐥𝐝", "ﬁ", "ﬂ", "ﬀ", "ﬃ", "ﬅ", "Ａｂｃ", "１２３", "ｶﾀｶﾅ", "　", "e\u0301", "a\u0308",
           "n\u0303", "\u1e9b\u0323", "Å", "Ω", "K", "ℌ", "™", "℃", "№", "µ", "°", "±", "×", "÷"]
EMOJI = ["😀", "👍🏽", "👨‍⚕️", "🇫🇷", "❤️", "🩺", "🧠", "☺", "✓", "⚕"]
ENTITIES = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&apos;", "&nbsp;", "&eacute;", "&copy;", "&mu;", "&deg;",
            "&plusmn;", "&#x263a;", "&#8212;", "&amp;amp;", "&amp;lt;", "&hellip;", "&rarr;", "&times;", "&nbsp",
            "&amp", "&unknownentity;", "& amp;", "&#0;", "&#xD800;", "&#128512;"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "\u2009", "\u200b", "\u2028", "\u000b", "\u000c"]
CONTROLS = ["\x00", "\x07", "\x1b", "\x1b[31m", "\x1b[0m", "\x7f", "\x85", "\u200d", "\u200e", "\ufeff", "\u00ad", "\x1c"]
SPECIAL = ["<start_of_text>", "<end_of_text>", "<|endoftext|>", "<START_OF_TEXT>", "</w>"]
CONTRACTIONS = ["it's", "DON'T", "we'll", "they're", "I'm", "you'd", "can't", "'s", "rock'n'roll", "O'Brien"]


def _random_codepoint(rng: random.Random) -> str:
    """An assigned, non-surrogate, non-private code point (Python's Unicode database)."""
    while True:
        cp = rng.choice([rng.randrange(0x20, 0x3000), rng.randrange(0x3000, 0xD800), rng.randrange(0x10000, 0x1FAFF)])
        ch = chr(cp)
        if unicodedata.category(ch) not in ("Cn", "Cs", "Co"):
            return ch


def generated(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    pools = [WORDS] * 6 + [PUNCT, QUOTES, NUMBERS, NUMBERS, LETTERS, LETTERS, EMOJI, ENTITIES, SPACES, CONTROLS,
                           SPECIAL, CONTRACTIONS]
    out = ["", " ", "   ", "\t\n", "\u00a0", "\x00", ".", "a", "A", "I", "0", "12345678901234567890"]
    # over-long strings: truncation at 77 tokens must keep <end_of_text> last
    for k in (60, 75, 76, 77, 78, 120, 400):
        out.append(" ".join(rng.choice(WORDS) for _ in range(k)))
    out.append("ab" * 3000)
    out.append("x" * 100 + " " + "y" * 100)
    out.append("1" * 200)
    out.append("😀" * 80)
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 14)):
            r = rng.random()
            if r < 0.05:
                parts.append(_random_codepoint(rng))
            else:
                pool = rng.choice(pools)
                s = rng.choice(pool)
                if pool is WORDS and rng.random() < 0.3:
                    s = s.upper() if rng.random() < 0.5 else s.capitalize()
                parts.append(s)
            parts.append(rng.choice(["", " ", " ", " ", "  ", "\t", "\u00a0"]) if rng.random() < 0.8 else "")
        out.append("".join(parts))
    return out


def tokenizer_fixture(shared: pathlib.Path) -> int:
    strings = quantize_clip.reference_prompts(shared)
    # every SaLIP / MedCLIP-SAMv2 prompt, also upper-cased (case folding is part of the contract)
    strings += [s.upper() for s in strings[:40]]
    strings += generated(2400)
    tok = open_clip.get_tokenizer("ViT-B-32")  # the plain SimpleTokenizer, context 77
    # ftfy's mojibake repair (fix_encoding and its sub-steps) is not ported: mark the rows where
    # it changed the text, so the Rust test can count them apart.
    no_repair = ftfy.TextFixerConfig(fix_encoding=False, restore_byte_a0=False, replace_lossy_sequences=False,
                                     decode_inconsistent_utf8=False)
    lines = []
    for s in strings:
        ids = tok([s])[0].tolist()
        while ids and ids[-1] == 0:
            ids.pop()
        row = {"text": s, "ids": ids}
        if ftfy.fix_text(s) != ftfy.fix_text(s, no_repair):
            row["mojibake"] = True
        lines.append(json.dumps(row, ensure_ascii=True))
    (FIX / "clip_tokenizer.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def models_fixture(shared: pathlib.Path) -> None:
    model = export_clip.build(export_clip.load_config("tiny"), None, 0)
    cfg = export_clip.load_config("tiny")
    export_clip.export(model, cfg, TINY_DIR)
    export_clip.copy_vocab(TINY_DIR)
    export_clip.write_meta(TINY_DIR, "tiny", cfg, "synthetic seed 0, tiny fixture config of the open_clip ViT architecture",
                           True, 0)
    frames, images, texts = quantize_clip.calibration(shared, 4, 224, 77)
    quantize_clip.quantize_one(TINY_DIR / "clip_image.fp32.onnx", TINY_DIR / "clip_image.int8.onnx", images)
    quantize_clip.quantize_one(TINY_DIR / "clip_text.fp32.onnx", TINY_DIR / "clip_text.int8.onnx", texts)
    rgb = np.asarray(Image.open(TINY_DIR / "input.png").convert("RGB"))
    x = clip_prep.clip_input(rgb, 224)
    toks = open_clip.tokenize(CLIP_CASES).numpy()
    for prec in ("fp32", "int8"):
        img = ort.InferenceSession(str(TINY_DIR / f"clip_image.{prec}.onnx"), providers=["CPUExecutionProvider"])
        pooled, patches = img.run(None, {"image": x})
        pooled.astype("<f4").tofile(TINY_DIR / f"clip_ref_{prec}_pooled.f32")
        patches.astype("<f4").tofile(TINY_DIR / f"clip_ref_{prec}_patches.f32")
        txt = ort.InferenceSession(str(TINY_DIR / f"clip_text.{prec}.onnx"), providers=["CPUExecutionProvider"])
        emb = np.concatenate([txt.run(None, {"tokens": toks[i : i + 1]})[0] for i in range(len(CLIP_CASES))])
        emb.astype("<f4").tofile(TINY_DIR / f"clip_ref_{prec}_text.f32")
    cases = {"texts": CLIP_CASES, "tokens": [[int(x) for x in row] for row in toks]}
    (TINY_DIR / "clip_cases.json").write_text(json.dumps(cases) + "\n")
    sam = tomllib.loads((TINY_DIR / "manifest.toml").read_text())["sam"]
    manifest.write(TINY_DIR, sam["config"], sam["source"], sam["synthetic"], sam["seed"])
    (TINY_DIR / export_clip.VOCAB).unlink()  # shared data: never committed
    # clip_meta.json stays: make_fixtures.py rewrites the manifest from it
    for p in (TINY_DIR / "reports").glob("*"):
        p.unlink()
    if (TINY_DIR / "reports").exists():
        (TINY_DIR / "reports").rmdir()


def main():
    shared = preprocess.SHARED
    if not (shared / "data" / "prompts_reference").is_dir():
        sys.exit(f"{shared}/data/prompts_reference not found")
    print("tokenizer rows:", tokenizer_fixture(shared))
    if "--tokenizer-only" not in sys.argv:
        models_fixture(shared)
        print("models:", sorted(p.name for p in TINY_DIR.glob("clip*")))


if __name__ == "__main__":
    main()
