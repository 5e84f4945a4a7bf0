//! Text clean-up before BPE, as open_clip's `SimpleTokenizer` does it (`clean='lower'`):
//! `ftfy.fix_text`, `html.unescape` twice, strip, whitespace runs to one space, lower case.
//!
//! ftfy's deterministic fixers are ported exactly (terminal escapes, HTML entities, C1 controls,
//! Latin ligatures, character width, curly quotes, line breaks, control characters, NFC, applied
//! line by line and repeated to a fixed point, as ftfy does). ftfy's *mojibake repair*
//! (`fix_encoding`: re-decoding text that looks like mis-decoded UTF-8, a heuristic over
//! hundreds of character classes) is not: a prompt that ftfy would re-decode tokenizes as typed.
//! Typed or stored prompts are not mojibake; the tokenizer fixture marks the rows where the
//! reference applied it, and every other row must match id for id.

use super::tables;
use unicode_normalization::UnicodeNormalization;

fn in_ranges(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(a, b)| {
            if b < c {
                std::cmp::Ordering::Less
            } else if a > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// `regex`'s `\p{L}`.
pub fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    in_ranges(tables::LETTER, c)
}

/// `regex`'s `\p{N}`.
pub fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    in_ranges(tables::NUMBER, c)
}

/// `regex`'s `\s`.
pub fn is_regex_space(c: char) -> bool {
    in_ranges(tables::REGEX_SPACE, c)
}

/// Python's `str.isspace`.
pub fn is_py_space(c: char) -> bool {
    in_ranges(tables::PY_SPACE, c)
}

fn lookup<'a>(table: &'a [(&str, &str)], key: &str) -> Option<&'a str> {
    table
        .binary_search_by(|(k, _)| (*k).cmp(key))
        .ok()
        .map(|i| table[i].1)
}

fn lookup_cp(table: &'static [(u32, &'static str)], c: char) -> Option<&'static str> {
    table
        .binary_search_by_key(&(c as u32), |&(k, _)| k)
        .ok()
        .map(|i| table[i].1)
}

/// The whole clean-up: the string the BPE sees.
pub fn clean(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let mut out = String::with_capacity(unescaped.len());
    for (i, w) in unescaped
        .split(is_py_space)
        .filter(|w| !w.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(w);
    }
    // Python's str.lower and Rust's to_lowercase both apply the full Unicode mappings,
    // including the final-sigma rule.
    out.to_lowercase()
}

/// `ftfy.fix_text` without mojibake repair (see the module doc): line by line, each line fixed
/// until it stops changing. HTML unescaping stops for good at the first line containing '<'.
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for segment in text.split_inclusive('\n') {
        if segment.contains('<') {
            unescape = false;
        }
        let mut s = segment.to_string();
        loop {
            let before = s.clone();
            if unescape {
                s = ftfy_unescape_html(&s);
            }
            s = fix_chars(&s);
            s = s.nfc().collect();
            if s == before {
                break;
            }
        }
        out.push_str(&s);
    }
    out
}

/// One pass of ftfy's character fixers, in ftfy's order: C1 controls, ligatures, width,
/// quotes, line breaks, terminal escapes, control characters.
fn fix_chars(s: &str) -> String {
    let mut a = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if ('\u{80}'..='\u{9f}').contains(&c) {
            tables::C1[c as usize - 0x80]
        } else {
            c
        };
        if let Some(r) = lookup_cp(tables::LIGATURES, c) {
            a.push_str(r);
        } else {
            a.push(c);
        }
    }
    let mut b = String::with_capacity(a.len());
    for c in a.chars() {
        if let Some(r) = lookup_cp(tables::WIDTH, c) {
            b.push_str(r);
        } else {
            b.push(c);
        }
    }
    let mut q = String::with_capacity(b.len());
    for c in b.chars() {
        q.push(match c {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            c => c,
        });
    }
    let q = q
        .replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
    let q = remove_terminal_escapes(&q);
    q.chars()
        .filter(|&c| {
            !matches!(c as u32,
                0x00..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0x206a..=0x206f | 0xfeff | 0xfff9..=0xfffc)
        })
        .collect()
}

/// ftfy's `ANSI_RE`: ESC '[' (digits | ';')* one ASCII letter.
fn remove_terminal_escapes(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i] == 0x1b && b.get(i + 1) == Some(&b'[') {
            let mut j = i + 2;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b';') {
                j += 1;
            }
            if j < b.len() && b[j].is_ascii_alphabetic() {
                out.push_str(&s[copied..i]);
                i = j + 1;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
    out
}

/// ftfy's `unescape_html`: `&#?[0-9A-Za-z]{1,24};` replaced by an HTML5 entity (with its
/// semicolon), an all-caps Latin one, or a complete numeric reference.
fn ftfy_unescape_html(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i] == b'&' {
            let start = i + 1 + usize::from(b.get(i + 1) == Some(&b'#'));
            let mut j = start;
            while j < b.len() && j - start < 24 && b[j].is_ascii_alphanumeric() {
                j += 1;
            }
            if j > start && b.get(j) == Some(&b';') {
                let ent = &s[i..=j];
                let rep = if let Some(r) = lookup(tables::HTML5, &ent[1..]) {
                    Some(r.to_string())
                } else if let Some(r) = lookup(tables::FTFY_UPPER_ENTITIES, ent) {
                    Some(r.to_string())
                } else if ent.starts_with("&#") {
                    let u = html_unescape(ent);
                    (!u.contains(';')).then_some(u)
                } else {
                    None
                };
                if let Some(r) = rep {
                    out.push_str(&s[copied..i]);
                    out.push_str(&r);
                    i = j + 1;
                    copied = i;
                    continue;
                }
            }
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
    out
}

/// Python's `html.unescape` (HTML5 rules: numeric references with or without ';', named
/// references by longest known prefix).
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i] != b'&' {
            i += 1;
            continue;
        }
        // Python: &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)
        let mut rep: Option<(String, usize)> = None; // replacement, end index (exclusive)
        if b.get(i + 1) == Some(&b'#') {
            let hex = matches!(b.get(i + 2), Some(b'x' | b'X'));
            let ds = i + 2 + usize::from(hex);
            let mut j = ds;
            while j < b.len()
                && (if hex {
                    b[j].is_ascii_hexdigit()
                } else {
                    b[j].is_ascii_digit()
                })
            {
                j += 1;
            }
            if j > ds {
                let end = j + usize::from(b.get(j) == Some(&b';'));
                rep = Some((numeric_charref(&s[ds..j], hex), end));
            }
        } else {
            let ns = i + 1;
            let mut j = ns;
            for (chars, (off, c)) in s[ns..].char_indices().enumerate() {
                if chars == 32 || matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';') {
                    break;
                }
                j = ns + off + c.len_utf8();
            }
            if j > ns {
                let end = j + usize::from(b.get(j) == Some(&b';'));
                let name = &s[ns..end];
                rep = Some(match lookup(tables::HTML5, name) {
                    Some(r) => (r.to_string(), end),
                    None => {
                        // the longest prefix (at least 2 characters) that is an entity
                        let cuts: Vec<usize> =
                            name.char_indices().map(|(k, _)| k).skip(2).collect();
                        match cuts
                            .iter()
                            .rev()
                            .find_map(|&k| lookup(tables::HTML5, &name[..k]).map(|r| (r, k)))
                        {
                            Some((r, k)) => (format!("{r}{}", &name[k..]), end),
                            None => (format!("&{name}"), end),
                        }
                    }
                });
            }
        }
        match rep {
            Some((r, end)) => {
                out.push_str(&s[copied..i]);
                out.push_str(&r);
                i = end;
                copied = end;
            }
            None => i += 1,
        }
    }
    out.push_str(&s[copied..]);
    out
}

fn numeric_charref(digits: &str, hex: bool) -> String {
    // Python parses arbitrarily long numbers; anything past u32 is out of range anyway.
    let num = u64::from_str_radix(digits.trim_start_matches('0'), if hex { 16 } else { 10 })
        .unwrap_or(if digits.trim_start_matches('0').is_empty() {
            0
        } else {
            u64::MAX
        });
    if let Ok(n) = u32::try_from(num)
        && let Ok(i) = tables::INVALID_CHARREFS.binary_search_by_key(&n, |&(k, _)| k)
    {
        return tables::INVALID_CHARREFS[i].1.to_string();
    }
    if (0xD800..=0xDFFF).contains(&num) || num > 0x10FFFF {
        return "\u{fffd}".into();
    }
    let c = char::from_u32(num as u32).unwrap_or('\u{fffd}');
    if in_ranges(tables::INVALID_CODEPOINTS, c) {
        return String::new();
    }
    c.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_unescape_matches_python_rules() {
        assert_eq!(html_unescape("a &amp; b"), "a & b");
        assert_eq!(html_unescape("&amp"), "&");
        assert_eq!(html_unescape("&ampfoo"), "&foo"); // longest known prefix, rest kept
        assert_eq!(html_unescape("&notit;"), "¬it;");
        assert_eq!(html_unescape("&#39;&#x263a;&#X263A"), "'☺☺");
        assert_eq!(html_unescape("&#0;"), "\u{fffd}");
        assert_eq!(html_unescape("&#128;"), "€"); // invalid charref table
        assert_eq!(html_unescape("&#xD800;"), "\u{fffd}");
        assert_eq!(html_unescape("&#99999999999999999999;"), "\u{fffd}");
        assert_eq!(html_unescape("&unknown; & x"), "&unknown; & x");
    }

    #[test]
    fn ftfy_steps() {
        assert_eq!(
            fix_text("\u{201c}quoted\u{201d} it\u{2019}s"),
            "\"quoted\" it's"
        );
        assert_eq!(fix_text("ﬁne ＡＢＣ１"), "fine ABC1");
        assert_eq!(fix_text("\x1b[31mred\x1b[0m\x07"), "red");
        assert_eq!(fix_text("a\r\nb\u{2028}c"), "a\nb\nc");
        assert_eq!(fix_text("e\u{301}"), "é");
        assert_eq!(fix_text("P&EACUTE;REZ &lt;"), "PÉREZ <");
        assert_eq!(fix_text("<b> &amp;"), "<b> &amp;"); // '<' turns HTML unescaping off
        assert_eq!(fix_text("\u{85}"), "…"); // C1 control as Windows-1252
    }

    #[test]
    fn clean_is_lower_single_spaced() {
        assert_eq!(clean("  A\u{a0}Breast\t\tTUMOR \n"), "a breast tumor");
        assert_eq!(clean("ΣΟΦΟΣ"), "\u{3c3}\u{3bf}\u{3c6}\u{3bf}\u{3c2}"); // final sigma
        assert_eq!(clean(""), "");
    }
}
