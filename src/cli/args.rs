//! A small argument parser: `--flag value`, `--flag=value`, repeated flags, switches and
//! positionals, with errors that say which flag is wrong. Kept in-tree: the CLI surface is small
//! and the device binary stays lean.

use anyhow::{Result, bail};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Args {
    pub positional: Vec<String>,
    values: HashMap<String, Vec<String>>,
    switches: Vec<String>,
}

/// `spec_values`: flags that take a value; `spec_switches`: flags that do not.
pub fn parse(argv: &[String], spec_values: &[&str], spec_switches: &[&str]) -> Result<Args> {
    let mut a = Args::default();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        if let Some(flag) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-').filter(|f| f.len() == 1))
        {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            let name = if name == "o" { "out" } else { name };
            if spec_switches.contains(&name) {
                if inline.is_some() {
                    bail!("--{name} takes no value");
                }
                a.switches.push(name.to_string());
            } else if spec_values.contains(&name) {
                let v = match inline {
                    Some(v) => v,
                    None => match it.next() {
                        Some(v) => v.clone(),
                        None => bail!("--{name} needs a value"),
                    },
                };
                a.values.entry(name.to_string()).or_default().push(v);
            } else {
                bail!("unknown option --{name}");
            }
        } else {
            a.positional.push(arg.clone());
        }
    }
    Ok(a)
}

impl Args {
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// The last value given for `name` (a later flag overrides an earlier one).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).last().map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    pub fn parse_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("--{name} '{v}' is not valid")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn values_switches_positionals() {
        let a = parse(
            &s(&[
                "img.png",
                "--box",
                "1,2,3,4",
                "--box=5,6,7,8",
                "-o",
                "m.png",
                "--json",
            ]),
            &["box", "out"],
            &["json"],
        )
        .unwrap();
        assert_eq!(a.positional, vec!["img.png"]);
        assert_eq!(a.all("box"), &["1,2,3,4", "5,6,7,8"]);
        assert_eq!(a.get("out"), Some("m.png"));
        assert!(a.has("json"));
        assert!(
            parse(&s(&["--nope"]), &[], &[])
                .unwrap_err()
                .to_string()
                .contains("unknown option --nope")
        );
        assert!(
            parse(&s(&["--box"]), &["box"], &[])
                .unwrap_err()
                .to_string()
                .contains("needs a value")
        );
        assert!(parse(&s(&["--json=1"]), &[], &["json"]).is_err());
        assert!(a.parse_or::<usize>("box", 1).is_err());
    }
}
