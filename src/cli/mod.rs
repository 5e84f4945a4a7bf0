//! The `sonomask` command line: subcommand dispatch; each subcommand lives in its own module.

pub mod args;
pub mod bench;
pub mod cine;
pub mod common;
pub mod doctor;
pub mod eval;
pub mod flags;
pub mod listen;
pub mod run;
pub mod segment;
pub mod stream;
pub mod textseg;

use anyhow::{Result, bail};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};

use flags::{Cli, Command};

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

/// Runs the command line `argv` (without the program name).
pub fn main(argv: &[String]) -> Result<()> {
    if argv.is_empty() {
        print_help::<Cli>();
        return Ok(());
    }
    let cli: Cli = parse("", argv)?;
    match cli.command {
        Command::Segment(a) => segment::run(a),
        Command::PromptBank(a) => textseg::run_bank(a),
        Command::Stream(a) => stream::run(a),
        Command::Listen(a) => listen::run(a),
        Command::Run(a) => run::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Version => {
            println!("sonomask {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

/// Parses `argv` as the subcommand `name`'s flags (`""`: the whole command line). `--help`
/// and `--version` print and end the process's work with status 0 (an [`Exit`] without a
/// message); a bad flag is an error in sonomask's words, with the usage.
pub fn parse<T: Parser>(name: &str, argv: &[String]) -> Result<T> {
    let bin = if name.is_empty() {
        "sonomask".to_string()
    } else {
        format!("sonomask {name}")
    };
    let e = match T::try_parse_from(std::iter::once(bin).chain(argv.iter().cloned())) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let context = |k: ContextKind| match e.get(k) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(v)) => v.join(", "),
        _ => String::new(),
    };
    // `--box <x0,y0,x1,y1>` -> `--box`
    let flag = || {
        context(ContextKind::InvalidArg)
            .split([' ', '='])
            .next()
            .unwrap_or("")
            .to_string()
    };
    let usage = || {
        let mut c = T::command();
        c.build();
        match argv.first().and_then(|s| c.find_subcommand_mut(s)) {
            Some(sub) => sub.render_usage().to_string(),
            None => c.render_usage().to_string(),
        }
    };
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            Err(Exit {
                code: 0,
                message: String::new(),
            }
            .into())
        }
        ErrorKind::InvalidSubcommand => {
            bail!(
                "unknown command '{}'\n\n{}",
                context(ContextKind::InvalidSubcommand),
                Cli::command().render_help()
            )
        }
        ErrorKind::UnknownArgument => {
            let arg = context(ContextKind::InvalidArg);
            if arg.starts_with('-') {
                bail!("unknown option {arg}\n\n{}", usage())
            }
            bail!("unexpected argument '{arg}'\n\n{}", usage())
        }
        ErrorKind::InvalidValue if context(ContextKind::InvalidValue).is_empty() => {
            bail!("{} needs a value\n\n{}", flag(), usage())
        }
        ErrorKind::TooManyValues if flag().starts_with("--") => {
            bail!("{} takes no value\n\n{}", flag(), usage())
        }
        _ => {
            let text = format!("{}", e.render());
            bail!("{}", text.trim_end().trim_start_matches("error: "))
        }
    }
}

/// The usage line of a subcommand, for errors that need it.
pub fn usage<T: CommandFactory>() -> String {
    format!("{}", T::command().render_usage())
}

fn print_help<T: CommandFactory>() {
    println!("{}", T::command().render_help());
}
