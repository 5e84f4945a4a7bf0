//! The fuzz corpora (tests/fuzz/corpus/<target>: seeds plus what the fuzz runs kept) replayed
//! through the same entry points the fuzz targets call, so a crash the fuzzer once found, or a
//! seed it grew from, stays covered in CI without nightly or cargo-fuzz.

use std::path::Path;

#[test]
fn every_corpus_file_runs_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let mut total = 0;
    for &(target, run) in sonomask::fuzzing::TARGETS {
        let dir = root.join(target);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        assert!(!files.is_empty(), "corpus {} is empty", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            run(&data);
        }
        eprintln!("{target}: {} corpus files replayed", files.len());
        total += files.len();
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let mut rng = Rng(0x5EED_F022);
    for &(target, run) in sonomask::fuzzing::TARGETS {
        let mut files: Vec<_> = std::fs::read_dir(root.join(target))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let inputs: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
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

/// xorshift64*, as tests/common's (this file stands alone).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
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
