//! The synthetic MobileSAM (quantize/sam_arch.py) has exactly the official checkpoint's tensors:
//! the list that quantize/make_fixtures.py wrote from the synthetic model equals the official
//! key/shape/dtype list in ../shared/models/mobilesam_state_dict_keys.tsv.

mod common;

use std::collections::BTreeSet;

#[test]
fn synthetic_state_dict_matches_official_checkpoint_layout() {
    let Some(shared) = common::shared() else {
        return;
    };
    let official =
        std::fs::read_to_string(shared.join("models/mobilesam_state_dict_keys.tsv")).unwrap();
    let want: BTreeSet<(String, String, String)> = official
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let dtype = match f[3] {
                "FloatStorage" => "torch.float32",
                "LongStorage" => "torch.int64",
                other => panic!("unexpected dtype {other}"),
            };
            (f[0].to_string(), f[1].to_string(), dtype.to_string())
        })
        .collect();
    let ours =
        std::fs::read_to_string(common::fixtures().join("mobilesam_synthetic_state_dict.tsv"))
            .unwrap();
    let got: BTreeSet<(String, String, String)> = ours
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect();
    assert_eq!(want.len(), 439);
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
}
