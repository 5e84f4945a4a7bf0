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
