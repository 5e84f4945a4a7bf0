//! The Rust CLIP tokenizer against open_clip's (open-clip-torch 3.3.0, ftfy 6.3.1) on the
//! committed fixture: every MedCLIP-SAMv2 / SaLIP prompt in ../shared plus generated unicode,
//! punctuation, numbers, HTML entities, control characters, empty and over-long strings
//! (quantize/make_clip_fixtures.py). Rows where ftfy repaired mojibake are marked and counted
//! apart (see src/text/clean.rs); every other row must match id for id.

mod common;

use sonomask::text::Tokenizer;

fn vocab() -> Option<std::path::PathBuf> {
    let p = common::clip_vocab()?;
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} missing (the real CLIP BPE vocabulary is in ../shared)",
            p.display()
        );
        None
    }
}

#[test]
fn ids_match_open_clip_on_the_fixture() {
    let Some(vocab) = vocab() else { return };
    let tok = Tokenizer::from_gz_file(&vocab, 77).unwrap();
    assert_eq!(tok.vocab_size(), 49408);
    assert_eq!((tok.sot, tok.eot), (49406, 49407));
    let text = std::fs::read_to_string(common::fixtures().join("clip_tokenizer.jsonl")).unwrap();
    let (mut rows, mut matched, mut mojibake, mut truncated) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = row["text"].as_str().unwrap();
        let want: Vec<i64> = row["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let got = tok.tokenize(s);
        rows += 1;
        let ok = got.ids[..got.len] == want[..] && got.ids[got.len..].iter().all(|&i| i == 0);
        if row["mojibake"].as_bool().unwrap_or(false) {
            mojibake += 1;
            continue;
        }
        truncated += usize::from(got.truncated);
        if ok {
            matched += 1;
        } else if failures.len() < 10 {
            failures.push(format!(
                "{s:?}\n  want {want:?}\n  got  {:?}",
                &got.ids[..got.len]
            ));
        }
    }
    println!(
        "{matched}/{} rows identical ({mojibake} mojibake rows excluded, {truncated} truncated)",
        rows - mojibake
    );
    assert!(
        failures.is_empty(),
        "{} mismatches, first:\n{}",
        rows - mojibake - matched,
        failures.join("\n")
    );
    assert!(matched >= 2000, "only {matched} rows");
    assert!(truncated >= 5, "over-long strings must be in the fixture");
}

#[test]
fn truncation_keeps_the_end_token() {
    let Some(vocab) = vocab() else { return };
    let tok = Tokenizer::from_gz_file(&vocab, 77).unwrap();
    let long = "tumor ".repeat(200);
    let t = tok.tokenize(&long);
    assert!(t.truncated);
    assert_eq!(t.len, 77);
    assert_eq!(t.ids[76], tok.eot as i64);
    assert_eq!(t.ids[0], tok.sot as i64);
    let e = tok.tokenize("   ");
    assert_eq!((e.len, e.truncated), (2, false));
    assert_eq!(
        tok.decode(&tok.encode("A Breast  TUMOR")),
        "a breast tumor "
    );
}

/// Any text a user can type or a file can hold tokenizes without a panic into a valid row:
/// start token, ids inside the vocabulary, end token, zero padding.
#[test]
fn random_text_never_panics_and_rows_are_well_formed() {
    let Some(vocab) = vocab() else { return };
    let tok = Tokenizer::from_gz_file(&vocab, 77).unwrap();
    let mut rng = common::Rng(0x5eed);
    let pieces = [
        "&", "&#", "&amp", ";", "\u{1b}[", "<", "'s", "\r\n", "\u{85}", "\u{301}", " ", "ﬁ", "Ａ",
    ];
    for _ in 0..5000 {
        let mut s = String::new();
        for _ in 0..rng.below(40) {
            if rng.below(3) == 0 {
                s.push_str(pieces[rng.below(pieces.len())]);
            } else {
                // any scalar value, weighted toward ASCII and the BMP
                let cp = match rng.below(4) {
                    0 => rng.below(0x80) as u32,
                    1 => rng.below(0x800) as u32,
                    2 => rng.below(0x10000) as u32,
                    _ => rng.below(0x110000) as u32,
                };
                s.extend(char::from_u32(cp));
            }
        }
        let t = tok.tokenize(&s);
        assert_eq!(t.ids.len(), 77);
        assert!(t.len >= 2 && t.len <= 77, "{s:?}");
        assert_eq!(t.ids[0], tok.sot as i64);
        assert_eq!(t.ids[t.len - 1], tok.eot as i64);
        assert!(
            t.ids[1..t.len - 1]
                .iter()
                .all(|&i| (0..tok.vocab_size() as i64).contains(&i))
        );
        assert!(t.ids[t.len..].iter().all(|&i| i == 0));
    }
}
