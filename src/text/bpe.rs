//! CLIP's byte-level BPE tokenizer (open_clip `SimpleTokenizer`), in Rust, reading the real
//! `bpe_simple_vocab_16e6.txt.gz`. Ids are identical to open_clip's on the committed fixture
//! (tests/clip_tokenizer.rs).

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::clean::{clean, is_letter, is_number, is_regex_space};

/// Merges the tokenizer uses: the file's lines 1..=48894 (`49152 - 256 - 2`), as open_clip.
const MERGES: usize = 49152 - 256 - 2;
const SOT: &str = "<start_of_text>";
const EOT: &str = "<end_of_text>";

/// One tokenized text: `context_length` ids, zero padded, `<start_of_text>` first and
/// `<end_of_text>` after the last kept token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<i64>,
    /// Ids before padding (start and end tokens included).
    pub len: usize,
    /// The text had more tokens than fit; the end token replaced the last kept one.
    pub truncated: bool,
}

pub struct Tokenizer {
    /// Vocabulary id of each byte's character (`+ 256`: the same character ending a word).
    byte_id: [u32; 256],
    /// Byte character -> byte (for decoding).
    char_byte: HashMap<char, u8>,
    /// Vocabulary string -> id.
    encoder: HashMap<String, u32>,
    /// Id -> vocabulary string (for decoding and logs).
    decoder: Vec<String>,
    /// (left id, right id) -> (merge rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    pub sot: u32,
    pub eot: u32,
    pub context_length: usize,
}

/// GPT-2's reversible byte -> printable character map, in the order open_clip lists the 256
/// byte characters (its vocabulary's first ids): printable bytes first, then the rest mapped to
/// U+0100 onwards.
fn byte_characters() -> Vec<(u8, char)> {
    let mut out: Vec<(u8, char)> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .map(|b| (b, char::from(b)))
        .collect();
    let mut n = 0;
    for b in 0..=255u8 {
        if !out.iter().any(|&(x, _)| x == b) {
            out.push((b, char::from_u32(256 + n).expect("byte map is in the BMP")));
            n += 1;
        }
    }
    out
}

impl Tokenizer {
    /// Read the gzipped merges file (as shipped in open-clip-torch and beside the models).
    pub fn from_gz_file(path: &Path, context_length: usize) -> Result<Self> {
        let raw = crate::bounded::read(path, crate::bounded::TEXT_BYTES, "CLIP vocabulary")?;
        Self::from_gz(&raw, context_length)
            .with_context(|| format!("CLIP vocabulary {}", path.display()))
    }

    pub fn from_gz(raw: &[u8], context_length: usize) -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(raw)
            .read_to_string(&mut text)
            .context("not a gzip-compressed UTF-8 text (expected bpe_simple_vocab_16e6.txt.gz)")?;
        Self::from_merges_text(&text, context_length)
    }

    pub fn from_merges_text(text: &str, context_length: usize) -> Result<Self> {
        if context_length < 2 {
            bail!("context length {context_length} leaves no room for the start and end tokens");
        }
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < MERGES + 1 || !lines[0].starts_with("\"bpe_simple_vocab_16e6.txt#version")
        {
            bail!(
                "not the CLIP BPE merges file ({} lines, first line {:?}; expected at least {} lines)",
                lines.len(),
                lines[0].chars().take(40).collect::<String>(),
                MERGES + 1
            );
        }
        let bytes = byte_characters();
        let mut byte_id = [0u32; 256];
        let mut decoder: Vec<String> = Vec::with_capacity(49408);
        for (i, &(b, c)) in bytes.iter().enumerate() {
            byte_id[b as usize] = i as u32;
            decoder.push(c.to_string());
        }
        for i in 0..256 {
            let s = format!("{}</w>", decoder[i]);
            decoder.push(s);
        }
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(MERGES);
        for (n, line) in lines[1..=MERGES].iter().enumerate() {
            let mut it = line.split_whitespace();
            match (it.next(), it.next(), it.next()) {
                (Some(a), Some(b), None) => pairs.push((a, b)),
                _ => bail!("merge line {} is malformed: {:?}", n + 2, line),
            }
        }
        for (a, b) in &pairs {
            decoder.push(format!("{a}{b}"));
        }
        decoder.push(SOT.into());
        decoder.push(EOT.into());
        // dict(zip(vocab, range)): a repeated string keeps its last id, as in Python.
        let mut encoder = HashMap::with_capacity(decoder.len());
        for (i, s) in decoder.iter().enumerate() {
            encoder.insert(s.clone(), i as u32);
        }
        let mut merges = HashMap::with_capacity(MERGES);
        for (rank, (a, b)) in pairs.iter().enumerate() {
            let (Some(&l), Some(&r)) = (encoder.get(*a), encoder.get(*b)) else {
                bail!(
                    "merge {} ({a} {b}) uses a symbol not in the vocabulary",
                    rank + 2
                );
            };
            let m = encoder[&format!("{a}{b}")];
            // the first (lowest-rank) occurrence of a pair wins, as in bpe_ranks
            merges.entry((l, r)).or_insert((rank as u32, m));
        }
        Ok(Tokenizer {
            byte_id,
            char_byte: bytes.iter().map(|&(b, c)| (c, b)).collect(),
            sot: encoder[SOT],
            eot: encoder[EOT],
            encoder,
            decoder,
            merges,
            context_length,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// Token ids of `text` without the start/end tokens or truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = clean(text);
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        for piece in split(&text) {
            if let Some(&id) = self.encoder.get(piece)
                && (piece == SOT || piece == EOT)
            {
                out.push(id);
                continue;
            }
            self.bpe(piece, &mut out);
        }
        out
    }

    /// `[sot] + encode(text) + [eot]`, truncated to the context (end token kept last), padded
    /// with zeros, as open_clip's `tokenize`.
    pub fn tokenize(&self, text: &str) -> Tokens {
        let body = self.encode(text);
        let mut ids: Vec<i64> = Vec::with_capacity(self.context_length);
        ids.push(self.sot as i64);
        ids.extend(body.iter().map(|&i| i as i64));
        ids.push(self.eot as i64);
        let truncated = ids.len() > self.context_length;
        if truncated {
            ids.truncate(self.context_length);
            *ids.last_mut().expect("context >= 2") = self.eot as i64;
        }
        let len = ids.len();
        ids.resize(self.context_length, 0);
        Tokens {
            ids,
            len,
            truncated,
        }
    }

    /// The text of a token sequence (for logs): byte characters back to bytes, `</w>` to spaces.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(s) = self.decoder.get(id as usize) else {
                continue;
            };
            let s = s.replace("</w>", " ");
            for c in s.chars() {
                match self.char_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend(c.to_string().bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn bpe(&self, piece: &str, out: &mut Vec<u32>) {
        // byte-level: every UTF-8 byte is one symbol; the last one ends the word (`</w>`)
        let n = piece.len();
        let mut word: Vec<u32> = piece
            .bytes()
            .enumerate()
            .map(|(i, b)| self.byte_id[b as usize] + if i + 1 == n { 256 } else { 0 })
            .collect();
        loop {
            let best = word
                .windows(2)
                .filter_map(|p| {
                    self.merges
                        .get(&(p[0], p[1]))
                        .map(|&(r, m)| (r, p[0], p[1], m))
                })
                .min_by_key(|x| x.0);
            let Some((_, a, b, m)) = best else { break };
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    next.push(m);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
            if word.len() == 1 {
                break;
            }
        }
        out.extend_from_slice(&word);
    }
}

/// Case-insensitive match of an ASCII-lowercase literal at the start of `s` (the pattern is
/// compiled with IGNORECASE: simple case folding, so U+017F LONG S matches 's' and U+212A
/// KELVIN SIGN matches 'k'). Returns the matched byte length.
fn match_literal(s: &str, lit: &str) -> Option<usize> {
    let mut it = s.char_indices();
    for l in lit.chars() {
        let (_, c) = it.next()?;
        let folds = c == l
            || c.to_ascii_lowercase() == l
            || (l == 's' && c == '\u{17f}')
            || (l == 'k' && c == '\u{212a}');
        if !folds {
            return None;
        }
    }
    Some(it.next().map_or(s.len(), |(i, _)| i))
}

/// open_clip's pre-tokenizer pattern, alternatives tried in order at each position:
/// `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`.
pub fn split(text: &str) -> Vec<&str> {
    const LITERALS: [&str; 9] = [SOT, EOT, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];
    let mut out = Vec::new();
    let mut pos = 0;
    'outer: while pos < text.len() {
        let rest = &text[pos..];
        for lit in LITERALS {
            if let Some(n) = match_literal(rest, lit) {
                out.push(&rest[..n]);
                pos += n;
                continue 'outer;
            }
        }
        let first = rest.chars().next().expect("pos < len");
        let run = |pred: &dyn Fn(char) -> bool| {
            rest.char_indices()
                .find(|&(_, c)| !pred(c))
                .map_or(rest.len(), |(i, _)| i)
        };
        let n = if is_letter(first) {
            run(&is_letter)
        } else if is_number(first) {
            first.len_utf8()
        } else if !is_regex_space(first) {
            run(&|c| !is_regex_space(c) && !is_letter(c) && !is_number(c))
        } else {
            pos += first.len_utf8();
            continue;
        };
        out.push(&rest[..n]);
        pos += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_the_pattern() {
        assert_eq!(
            split("it's a 3.5cm mass!!"),
            vec!["it", "'s", "a", "3", ".", "5", "cm", "mass", "!!"]
        );
        assert_eq!(split("<start_of_text>x"), vec!["<start_of_text>", "x"]);
        assert_eq!(split("#'s"), vec!["#'", "s"]);
        assert_eq!(split("'\u{17f}"), vec!["'\u{17f}"]);
    }

    #[test]
    fn rejects_a_wrong_file() {
        assert!(Tokenizer::from_merges_text("hello\nworld", 77).is_err());
        assert!(Tokenizer::from_gz(b"not gzip", 77).is_err());
    }
}
