//! The `sonomask` command line: subcommand dispatch; each subcommand lives in its own module.

pub mod args;
pub mod bench;
pub mod cine;
pub mod common;
pub mod doctor;
pub mod eval;
pub mod listen;
pub mod run;
pub mod segment;
pub mod stream;
pub mod textseg;

use anyhow::{Result, bail};

pub const USAGE: &str = "\
sonomask: edge runtime for prompted medical image segmentation (MobileSAM on tract)

usage: sonomask <command> [options]      (sonomask <command> --help for details)

commands:
  segment   segment one image with box/point prompts or a text prompt (CLIP + SAM)
  prompt-bank  precompute text-prompt embeddings bound to the text model
  stream    device side: segment frames and stream masks over serial/USB/TCP/stdout
  listen    host side: receive masks (PNG + JSON lines), send prompts
  run       stream as a board profile says (boards/NAME.toml): the service entry point
  eval      score a pipeline on a labelled set (pairs.csv): Dice, IoU, NSD; CSV + JSON
  bench     time preprocessing, encoder and decoder on one image (JSON)
  doctor    CPU features, chosen kernels/precision, model and serial port status
  version   print the version

environment: SONOMASK_LOG=debug|info|warn|error (default info: per-stage timings on stderr),
             SONOMASK_MODELS=DIR (default ./models)";

/// An orderly stop with its own exit status (e.g. 143 after SIGTERM), not a failure: `main`
/// prints the message (when there is one) and exits with `code`.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

pub fn main(argv: &[String]) -> Result<()> {
    let Some((cmd, rest)) = argv.split_first() else {
        println!("{USAGE}");
        return Ok(());
    };
    match cmd.as_str() {
        "segment" => segment::run(rest),
        "prompt-bank" => textseg::run_bank(rest),
        "stream" => stream::run(rest),
        "listen" => listen::run(rest),
        "run" => run::run(rest),
        "bench" => bench::run(rest),
        "eval" => eval::run(rest),
        "doctor" => doctor::run(rest),
        "version" | "--version" => {
            println!("sonomask {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command '{other}'\n\n{USAGE}"),
    }
}
