//! `sonomask run --board NAME`: the service entry point. Loads boards/NAME.toml and streams with
//! its source, sink, models, precisions, threads and pipeline settings; command-line options
//! after the board name override the profile (they are passed to `stream`).

use anyhow::{Result, bail};
use std::path::PathBuf;

use super::flags::{RunArgs, StreamArgs};
use crate::board::Board;
use crate::cpu::CpuFeatures;

pub fn run(a: RunArgs) -> Result<()> {
    let mut board_name = a.board;
    let mut dir = a
        .boards
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("SONOMASK_BOARDS").map(PathBuf::from));
    let mut dry = a.dry_run;
    // The stream options come last, but run's own flags may still be among them (`run --board
    // x --sink stdout --dry-run`): clap hands everything after the first stream option over.
    let mut rest: Vec<String> = Vec::new();
    let mut it = a.stream.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--board" => board_name = it.next(),
            "--boards" => dir = it.next().map(PathBuf::from),
            "--dry-run" => dry = true,
            _ => rest.push(arg),
        }
    }
    let Some(name) = board_name else {
        bail!("run needs --board NAME\n\n{}", super::usage::<RunArgs>())
    };
    let dir = dir.unwrap_or_else(|| {
        let local = PathBuf::from("boards");
        if local.is_dir() {
            local
        } else {
            PathBuf::from("/opt/sonomask/boards")
        }
    });
    let b = Board::load(&name, &dir)?;
    let missing = b.missing_features(&CpuFeatures::detect());
    if !missing.is_empty() {
        log::warn!(
            "board {} expects CPU features this CPU lacks: {} (running anyway; check `sonomask doctor`)",
            b.name,
            missing.join(", ")
        );
    }
    let mut args: Vec<String> = vec![
        "--source".into(),
        b.io.source.clone(),
        "--sink".into(),
        b.io.sink.clone(),
        "--models".into(),
        b.models.dir.display().to_string(),
        "--precision".into(),
        b.models.sam_encoder.as_str().into(),
        "--decoder-precision".into(),
        b.models.sam_decoder.as_str().into(),
        "--threads".into(),
        b.threads.to_string(),
        "--queue".into(),
        b.pipeline.queue.to_string(),
        "--cine-threshold".into(),
        b.pipeline.cine_threshold.to_string(),
        "--reencode-every".into(),
        b.pipeline.reencode_every.to_string(),
    ];
    if let Some(text) = &b.pipeline.text {
        args.extend([
            "--text".into(),
            text.clone(),
            "--pipeline".into(),
            b.pipeline.mode.clone(),
        ]);
    }
    if let Some(m) = &b.pipeline.measure {
        args.extend(["--measure".into(), m.clone()]);
    }
    if let Some(mm) = b.pipeline.pixel_size_mm {
        args.extend(["--pixel-size".into(), mm.to_string()]);
    }
    // A later flag wins in the stream parser: overrides go last.
    args.extend(rest);
    if dry {
        println!("sonomask stream {}", args.join(" "));
        return Ok(());
    }
    log::info!(
        "board {} ({}): sonomask stream {}",
        b.name,
        b.description,
        args.join(" ")
    );
    super::stream::run(super::parse::<StreamArgs>("stream", &args)?)
}
