//! `sonomask eval`'s oracle prompts are the ones the PyTorch reference is scored with: the boxes
//! and clicks src/prompting/oracle.rs draws from real ground truths equal those of
//! quantize/oracle_prompts.py (tests/fixtures/oracle_reference.toml, `make_fixtures.py oracle`).

mod common;

use sonomask::input::image_io::load_rgb;
use sonomask::mask::Mask;
use sonomask::prompting::oracle::{BoxNoise, interior_point, oracle_box};

#[test]
fn oracle_prompts_equal_the_python_reference_on_shared_masks() {
    let Some(shared) = common::shared() else {
        return;
    };
    let text = std::fs::read_to_string(common::fixtures().join("oracle_reference.toml")).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    let cases = t["case"].as_array().unwrap();
    assert!(cases.len() >= 12);
    let f = |v: &toml::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_float().unwrap() as f32)
            .collect()
    };
    for c in cases {
        let paths: Vec<_> = c["masks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| shared.join("data").join(m.as_str().unwrap()))
            .collect();
        let first = load_rgb(&paths[0]).unwrap();
        let data = sonomask::input::dataset::load_masks(&paths, first.width, first.height).unwrap();
        let gt = Mask {
            width: first.width,
            height: first.height,
            data,
        };
        let index = c["index"].as_integer().unwrap() as u64;
        for (key, noise) in [
            ("tight", BoxNoise::default()),
            (
                "loose20",
                BoxNoise {
                    loose: 0.2,
                    ..Default::default()
                },
            ),
            (
                "jitter10",
                BoxNoise {
                    jitter: 0.1,
                    seed: 3,
                    ..Default::default()
                },
            ),
            (
                "loose10_jitter20",
                BoxNoise {
                    loose: 0.1,
                    jitter: 0.2,
                    seed: 3,
                },
            ),
        ] {
            let b = oracle_box(&gt, &noise, index).unwrap();
            assert_eq!(vec![b.x0, b.y0, b.x1, b.y1], f(&c[key]), "{paths:?} {key}");
        }
        let p = interior_point(&gt).unwrap();
        assert_eq!(vec![p.x, p.y], f(&c["point"]), "{paths:?} point");
    }
}
