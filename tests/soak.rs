//! The soak's short version (the long one is `cargo bench --bench soak`, docs/RELIABILITY.md):
//! 500 frames of a real ultrasound cine, looped through the real pipeline (the tiny fixture
//! models: the link and the loop are under test, not the weights) to a pty link that is
//! unplugged and replugged, read slowly for a while and damaged for a while. The counts must
//! add up and no damaged mask may be accepted. No timing is asserted.

mod common;

use common::soak::{Config, run};
use std::time::Duration;

#[test]
fn short_soak_counts_add_up_and_nothing_corrupted_is_accepted() {
    let Some(shared) = common::shared() else {
        return;
    };
    let cfg = Config {
        bin: env!("CARGO_BIN_EXE_sonomask").into(),
        models: common::models_tiny(),
        source: shared.join("data/dicom_us/examples_ybr_color.dcm"),
        prompt_box: "60,40,260,200".into(),
        frames: 500,
        threads: 1,
        fps: Some(50),
        period: 500,
        unplug_at: vec![100],
        unplug_for: Duration::from_millis(1000),
        slow: (200, 300),
        slow_bytes_per_s: 300,
        noisy: (300, 400),
        flip_one_in: 1500,
        work: common::tmp_dir("soak"),
    };
    let r = run(&cfg);
    let report = r.table(100);
    eprintln!("{report}\n{}", r.device_stderr_tail.join("\n"));
    assert!(
        r.device_exit.is_some_and(|s| s.success()),
        "device failed: {:?}\n{}",
        r.device_exit,
        r.device_stderr_tail.join("\n")
    );
    assert_eq!(r.dev("frames"), 500, "{report}");
    assert_eq!(r.dev("errors"), 0, "{report}");
    assert_eq!(r.unplugs, 1);
    assert!(
        r.dev("reconnects") >= 1,
        "no reconnect after the replug: {report}"
    );
    let bad = r.inconsistencies();
    assert!(bad.is_empty(), "{bad:?}\n{report}");
    // Masks reached the host before the unplug and after the replug.
    let frames: Vec<u64> = r.sent.keys().map(|k| k.0).collect();
    assert!(frames.iter().any(|&f| f < 100), "{report}");
    assert!(frames.iter().any(|&f| f > 420), "{report}");
    assert!(r.received > 100, "{report}");
    // Every heartbeat reported resident memory.
    let beats: Vec<u32> = r.rss.iter().map(|s| s.0).collect();
    assert_eq!(beats, [100, 200, 300, 400, 500], "{report}");
    // A line that damaged bytes had them caught by the receiver, not passed on.
    if r.damaged_bytes >= 10 {
        assert!(
            r.host("frame_errors") + r.host("parse_errors") + r.host("masks_dropped") > 0,
            "{} bytes damaged and nothing rejected: {report}",
            r.damaged_bytes
        );
    }
}
