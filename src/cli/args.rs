//! Values of the declared flags (src/cli/flags.rs) parsed with messages that name the flag and
//! the value, as a user typed them.

use anyhow::Result;

/// An optional flag's value: `None` when absent, an error naming the flag when unparsable.
pub fn parse_opt<T: std::str::FromStr>(name: &str, value: Option<&str>) -> Result<Option<T>> {
    value
        .map(|v| {
            v.parse()
                .map_err(|_| anyhow::anyhow!("--{name} '{v}' is not valid"))
        })
        .transpose()
}

/// `value` parsed as a `T`, or `default` when the flag was not given.
pub fn parse_or<T: std::str::FromStr>(name: &str, value: Option<&str>, default: T) -> Result<T> {
    Ok(parse_opt(name, value)?.unwrap_or(default))
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
