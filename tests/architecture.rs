//! The layout is the architecture (docs/ARCHITECTURE.md): data flows one way, so a module of
//! the `sonomask` crate may import only stages before its own. This test reads every source
//! file and fails on an import against the flow (which is also what would close a circle), or
//! on a top-level module that has no place in the order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module's place; a module may use `crate::m` only for `m` at or below it.
/// Platform modules are 0; `link` (the transports) is the I/O edge both ends use.
const ORDER: &[(&str, u8)] = &[
    ("bounded", 0),
    ("cpu", 0),
    ("heap", 0),
    ("logger", 0),
    ("timing", 0),
    ("simd", 0),
    ("wire", 0),
    ("link", 1),
    ("input", 2),
    ("preprocess", 3),
    ("text", 3),
    ("model", 4),
    ("mask", 5),
    ("prompting", 6),
    ("output", 7),
    ("stream", 8),
    ("pipelines", 9),
    ("board", 10),
    ("cli", 11),
    ("fuzzing", 11),
];

fn rank(m: &str) -> Option<u8> {
    ORDER.iter().find(|(n, _)| *n == m).map(|(_, r)| *r)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::name` occurrences in a line, outside `//` comments.
fn crate_refs(line: &str) -> Vec<&str> {
    let code = line.split("//").next().unwrap_or("");
    code.match_indices("crate::")
        .filter(|(i, _)| {
            // not `sonomask_crate::` or a longer identifier ending in "crate"
            *i == 0
                || !code.as_bytes()[i - 1].is_ascii_alphanumeric() && code.as_bytes()[i - 1] != b'_'
        })
        .map(|(i, _)| {
            let rest = &code[i + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn modules_import_only_earlier_stages() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 40, "found the sources");
    let mut against = Vec::new();
    let mut unplaced = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(from) = rank(&top) else {
            unplaced.insert(top, rel.display().to_string());
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for m in crate_refs(line) {
                match rank(m) {
                    Some(to) if to <= from || m == top => {}
                    Some(_) => against.push(format!(
                        "{}:{}: {top} imports {m}: {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    )),
                    None => {
                        unplaced.insert(m.to_string(), rel.display().to_string());
                    }
                }
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules without a place in ORDER (add them, docs/ARCHITECTURE.md): {unplaced:?}"
    );
    assert!(
        against.is_empty(),
        "imports against the data flow:\n{}",
        against.join("\n")
    );
}

#[test]
fn the_checker_sees_an_import_against_the_flow() {
    assert_eq!(
        crate_refs("use crate::pipelines::segment::SamSession; // crate::cli"),
        vec!["pipelines"]
    );
    assert_eq!(
        crate_refs("let x = crate::mask::Mask::default(); sonomask_crate::y"),
        vec!["mask"]
    );
    assert!(rank("mask") < rank("pipelines"));
}

/// SIMD lives in the kernels crate alone (tract-linalg's rule: kernels know nothing of graphs,
/// operators nothing of instruction sets): no other crate of the workspace compiles code for a
/// target feature or calls vector intrinsics. Feature *detection* (`doctor`'s CPU report) is
/// not SIMD and is allowed.
#[test]
fn simd_code_lives_only_in_the_kernels_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "crates/sonomask-ops/src", "crates/sonomask-wire/src"] {
        sources(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut kernels = Vec::new();
    sources(&root.join("crates/sonomask-kernels/src"), &mut kernels);
    let simd = |line: &str| {
        let code = line.split("//").next().unwrap_or("");
        code.contains("#[target_feature")
            || ["std::arch::", "core::arch::"]
                .iter()
                .any(|p| code.contains(p) && !code.contains("_feature_detected"))
    };
    // The check sees what it looks for: the kernels crate is full of it.
    let seen = kernels
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|l| simd(l))
        .count();
    assert!(
        seen > 40,
        "the check found only {seen} SIMD lines in the kernels crate"
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            assert!(
                !simd(line),
                "{}:{}: SIMD outside the kernels crate: {}",
                f.display(),
                i + 1,
                line.trim()
            );
        }
    }
}
