//! Values of the declared flags (src/cli/flags.rs) parsed with messages that name the flag and
//! the value, as a user typed them.

use anyhow::Result;

/// `value` parsed as a `T`, or `default` when the flag was not given.
pub fn parse_or<T: std::str::FromStr>(name: &str, value: Option<&str>, default: T) -> Result<T> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("--{name} '{v}' is not valid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_name_the_flag() {
        assert_eq!(parse_or::<usize>("runs", None, 3).unwrap(), 3);
        assert_eq!(parse_or::<usize>("runs", Some("7"), 3).unwrap(), 7);
        let e = parse_or::<usize>("runs", Some("x7"), 3)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--runs 'x7' is not valid");
    }
}
