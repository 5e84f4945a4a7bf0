//! Everything mode's grid in tract: one decoder call per point prompt (batch 1, what sonomask
//! runs) against one call for B prompts with a decoder exported with a symbolic batch
//! dimension (`quantize/export_sam.py --batch-decoder DIR`). Prints ms per prompt for each
//! batch size, measured in the same run on the same embedding of a real BUSI frame.
//!
//! Run: `.venv/bin/python quantize/export_sam.py --synthetic --batch-decoder /tmp/dec_batch &&
//!       BATCH_DECODER=/tmp/dec_batch/sam_decoder.fp32.onnx cargo bench --bench decoder_batch`

use std::path::{Path, PathBuf};
use std::time::Instant;

use sonomask::input::image_io::load_rgb;
use sonomask::model::contract::{Contract, Dim, TensorContract};
use sonomask::model::onnx;
use sonomask::model::{Manifest, Precision};
use sonomask::pipelines::segment::SamSession;
use sonomask::timing::Timings;
use tract_onnx::prelude::*;

fn main() {
    sonomask::heap::keep_freed_memory();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = PathBuf::from(
        std::env::var("BATCH_DECODER").expect("BATCH_DECODER=path of a batch-symbolic decoder"),
    );
    let models = root.join("models");
    let m = Manifest::load(&models).expect("models/ (quantize/build_models.sh)");
    let mut sam = SamSession::load(&models, Precision::Fp32).unwrap();
    let frame = load_rgb(&root.join("../shared/data/busi/images/benign (1).png")).unwrap();
    let enc = sam.encode(&frame, &mut Timings::default()).unwrap();
    let s = &m.sam;
    let (c, e, l) = (
        s.embed_dim as usize,
        s.embedding_size as usize,
        s.low_res_size as usize,
    );
    let any = Dim::Any;
    let f = Dim::Fixed;
    let contract = Contract {
        inputs: vec![
            TensorContract::fixed("image_embeddings", &[1, c, e, e]),
            TensorContract {
                name: "point_coords",
                shape: vec![any, any, f(2)],
            },
            TensorContract {
                name: "point_labels",
                shape: vec![any, any],
            },
            TensorContract {
                name: "mask_input",
                shape: vec![any, f(1), f(l), f(l)],
            },
            TensorContract::fixed("has_mask_input", &[1]),
        ],
        outputs: vec![
            TensorContract {
                name: "low_res_masks",
                shape: vec![any, f(4), f(l), f(l)],
            },
            TensorContract {
                name: "iou_predictions",
                shape: vec![any, f(4)],
            },
        ],
    };
    let bytes = std::fs::read(&file).unwrap();
    let parsed = onnx::parse(&file, &bytes, contract).unwrap();
    let n_prompts = 64;
    println!("| batch | calls | ms per call | ms per prompt | vs batch 1 |\n|---|---|---|---|---|");
    let mut base = 0.0;
    for b in [1usize, 4, 16, 64] {
        let plan = parsed
            .plan(&[
                vec![1, c, e, e],
                vec![b, 2, 2],
                vec![b, 2],
                vec![b, 1, l, l],
                vec![1],
            ])
            .unwrap();
        let mut state = onnx::spawn(&plan).unwrap();
        let coords: Vec<f32> = (0..b)
            .flat_map(|i| [100.0 + 10.0 * i as f32, 300.0, 0.0, 0.0])
            .collect();
        let labels: Vec<f32> = (0..b).flat_map(|_| [1.0, -1.0]).collect();
        let inputs = || {
            tvec!(
                enc.embedding.0.clone(),
                Tensor::from_shape(&[b, 2, 2], &coords)
                    .unwrap()
                    .into_tvalue(),
                Tensor::from_shape(&[b, 2], &labels).unwrap().into_tvalue(),
                Tensor::zero::<f32>(&[b, 1, l, l]).unwrap().into_tvalue(),
                Tensor::zero::<f32>(&[1]).unwrap().into_tvalue()
            )
        };
        onnx::run(&mut state, inputs(), &file).unwrap();
        let calls = n_prompts / b;
        let t = Instant::now();
        for _ in 0..calls {
            onnx::run(&mut state, inputs(), &file).unwrap();
        }
        let per_call = t.elapsed().as_secs_f64() * 1e3 / calls as f64;
        let per_prompt = per_call / b as f64;
        if b == 1 {
            base = per_prompt;
        }
        println!(
            "| {b} | {calls} | {per_call:.1} | {per_prompt:.1} | {:.2}x |",
            base / per_prompt
        );
    }
}
