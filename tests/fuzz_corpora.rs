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
