//! Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999).
//!
//! COBS removes every 0x00 from a frame at a cost of at most one byte per 254 (plus one), so
//! 0x00 can delimit frames unambiguously. A receiver that joins mid-stream, or loses bytes,
//! resynchronises at the next 0x00: no escape state survives a delimiter, which is why COBS
//! beats SLIP-style escaping (an error there can swallow a delimiter) and length-prefixed
//! framing (a corrupted length desynchronises the reader for an unbounded time).
//!
//! Both directions work on caller-provided slices: no allocation.

/// The largest encoded size of `n` input bytes (without the trailing delimiter).
pub const fn max_encoded_len(n: usize) -> usize {
    n + n / 254 + 1
}

/// Why a COBS block could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CobsError {
    /// A 0x00 inside the block (a delimiter is never part of a block).
    ZeroByte,
    /// A code byte points past the end of the block.
    Truncated,
    /// The output buffer is too small (encoding).
    Overflow,
}

/// Encodes `input` into `out`, returning the encoded length. `out` must hold at least
/// [`max_encoded_len`]`(input.len())` bytes, or `Err(Overflow)` is returned.
pub fn encode(input: &[u8], out: &mut [u8]) -> Result<usize, CobsError> {
    if out.len() < max_encoded_len(input.len()) {
        return Err(CobsError::Overflow);
    }
    let mut code_at = 0;
    let mut w = 1;
    let mut code: u8 = 1;
    for &b in input {
        if b == 0 {
            out[code_at] = code;
            code_at = w;
            w += 1;
            code = 1;
        } else {
            out[w] = b;
            w += 1;
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = w;
                w += 1;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    Ok(w)
}

/// Decodes one block (the bytes between two delimiters) in place, returning the decoded
/// length; the decoded form is never longer than the encoded one, so no second buffer is needed.
pub fn decode_in_place(buf: &mut [u8]) -> Result<usize, CobsError> {
    let mut r = 0;
    let mut w = 0;
    while r < buf.len() {
        let code = buf[r] as usize;
        if code == 0 {
            return Err(CobsError::ZeroByte);
        }
        r += 1;
        let end = r + code - 1;
        if end > buf.len() {
            return Err(CobsError::Truncated);
        }
        while r < end {
            let b = buf[r];
            if b == 0 {
                return Err(CobsError::ZeroByte);
            }
            buf[w] = b;
            w += 1;
            r += 1;
        }
        if code < 0xFF && r < buf.len() {
            buf[w] = 0;
            w += 1;
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(data: &[u8]) {
        let mut enc = vec![0u8; max_encoded_len(data.len())];
        let n = encode(data, &mut enc).unwrap();
        assert!(!enc[..n].contains(&0), "encoded form holds a zero");
        let mut inplace = enc[..n].to_vec();
        let k = decode_in_place(&mut inplace).unwrap();
        assert_eq!(&inplace[..k], data);
    }

    #[test]
    fn paper_examples() {
        // Examples from the COBS paper / Wikipedia.
        let cases: &[(&[u8], &[u8])] = &[
            (&[0x00], &[0x01, 0x01]),
            (&[0x00, 0x00], &[0x01, 0x01, 0x01]),
            (&[0x00, 0x11, 0x00], &[0x01, 0x02, 0x11, 0x01]),
            (&[0x11, 0x22, 0x00, 0x33], &[0x03, 0x11, 0x22, 0x02, 0x33]),
            (&[0x11, 0x22, 0x33, 0x44], &[0x05, 0x11, 0x22, 0x33, 0x44]),
            (&[0x11, 0x00, 0x00, 0x00], &[0x02, 0x11, 0x01, 0x01, 0x01]),
        ];
        for (raw, enc) in cases {
            let mut out = [0u8; 16];
            let n = encode(raw, &mut out).unwrap();
            assert_eq!(&out[..n], *enc);
            roundtrip(raw);
        }
    }

    #[test]
    fn long_runs_without_zero() {
        for len in [253, 254, 255, 256, 508, 509, 1000, 1034] {
            let data: Vec<u8> = (0..len).map(|i| (i % 255 + 1) as u8).collect();
            roundtrip(&data);
            let mut with_zeros = data.clone();
            with_zeros[len / 2] = 0;
            roundtrip(&with_zeros);
        }
        roundtrip(&[]);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let dec = |b: &[u8]| decode_in_place(&mut b.to_vec());
        assert_eq!(dec(&[0x05, 1, 2]), Err(CobsError::Truncated));
        assert_eq!(dec(&[0x03, 1, 0]), Err(CobsError::ZeroByte));
        assert_eq!(dec(&[0x00]), Err(CobsError::ZeroByte));
    }
}
