//! The fuzz corpora (tests/fuzz/corpus/<target>: seeds plus what the fuzz runs kept) replayed
//! through the same entry points the fuzz targets call, so a crash the fuzzer once found, or a
//! seed it grew from, stays covered in CI without nightly or cargo-fuzz.

mod common;

use common::Rng;
use std::path::Path;

/// The files of `target`'s corpus, in name order (so the mutation run is deterministic).
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn every_corpus_file_runs_without_panicking() {
    let mut total = 0;
    for &(target, run) in sonomask::fuzzing::TARGETS {
        let inputs = corpus(target);
        for data in &inputs {
            run(data);
        }
        eprintln!("{target}: {} corpus files replayed", inputs.len());
        total += inputs.len();
    }
    assert!(total >= sonomask::fuzzing::TARGETS.len());
}

/// A bounded, seeded mutation run of every target on stable Rust (CI has no nightly, so no
/// libFuzzer): each corpus file, mutated the way libFuzzer's basic mutators do (bit flips,
/// interesting bytes, erasures, insertions, truncations, splices with another file of the same
/// corpus), through the target's entry point. Deterministic; a few seconds per target. The long
/// coverage-guided runs are documented in docs/RELIABILITY.md.
#[test]
fn seeded_mutations_of_every_corpus_run_without_panicking() {
    const PER_FILE: usize = 256;
    const MAX_PER_TARGET: usize = 50_000;
    let mut rng = Rng(0x5EED_F022);
    for &(target, run) in sonomask::fuzzing::TARGETS {
        let inputs = corpus(target);
        let started = std::time::Instant::now();
        let mut runs = 0;
        'target: for (i, base) in inputs.iter().enumerate() {
            for _ in 0..PER_FILE {
                let other = &inputs[(i + 1 + rng.below(inputs.len())) % inputs.len()];
                let input = mutate(base, other, &mut rng);
                run(&input);
                runs += 1;
                if runs >= MAX_PER_TARGET {
                    break 'target;
                }
            }
        }
        eprintln!(
            "{target}: {runs} mutated inputs in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// One to four of libFuzzer's basic mutations of `base` (`other` for splices).
fn mutate(base: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x10, 0x20];
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            4 => v.truncate(at),
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = 1 + rng.below(other.len() - from);
                v.splice(at..at, other[from..from + n].iter().copied());
            }
            _ => {
                // A 2- or 4-byte field set to an extreme (lengths, sizes, counts).
                if v.len() >= 4 {
                    let i = at.min(v.len() - 4);
                    let x = [0u32, 1, 0x7fff_ffff, u32::MAX, 0xffff][rng.below(5)];
                    v[i..i + 4].copy_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    v
}
