//! Mask encodings and their streaming, allocation-free encoder and decoder.
//!
//! A mask is a `width x height` bitmap scanned row-major (flat index `i = y * width + x`).
//!
//! * **RLE** (`encoding = 0`): the lengths of alternating runs, starting with background (0),
//!   each an unsigned LEB128 varint (7 bits per byte, low bits first, bit 7 = "more"). Only the
//!   first run may be 0 (a mask whose first pixel is set); the lengths sum to `width * height`.
//!   Runs continue across row ends.
//! * **Raw** (`encoding = 1`): `ceil(width * height / 8)` bytes, pixel `i` in byte `i / 8` at
//!   bit `7 - i % 8` (MSB first, as PBM); padding bits are 0.
//!
//! The sender computes both sizes ([`rle_len`], [`raw_len`]) and sends the smaller, so a mask
//! never costs more than its bitmap. Both encoders emit into slices of any size so a mask can be
//! split across frames without a staging buffer.

/// Encoding identifiers as they appear in the Mask message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Encoding {
    Rle = 0,
    Raw = 1,
}

impl Encoding {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Encoding::Rle),
            1 => Some(Encoding::Raw),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Rle => "rle",
            Encoding::Raw => "raw",
        }
    }
}

/// Bytes of the LEB128 form of `v`.
pub const fn varint_len(v: u32) -> usize {
    match v {
        0..=0x7F => 1,
        0x80..=0x3FFF => 2,
        0x4000..=0x1F_FFFF => 3,
        0x20_0000..=0xFFF_FFFF => 4,
        _ => 5,
    }
}

fn write_varint(mut v: u32, out: &mut [u8; 5]) -> usize {
    let mut n = 0;
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out[n] = b;
            return n + 1;
        }
        out[n] = b | 0x80;
        n += 1;
    }
}

/// Index of the first nonzero byte, or `s.len()`. Eight bytes per step (SWAR): masks are long
/// runs, and this scan is most of the sender's work.
pub fn find_nonzero(s: &[u8]) -> usize {
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        if u64::from_ne_bytes(c.try_into().unwrap()) != 0 {
            break;
        }
        at += 8;
    }
    at + s[at..].iter().position(|&p| p != 0).unwrap_or(s.len() - at)
}

/// Index of the first zero byte, or `s.len()`.
pub fn find_zero(s: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    for c in s.chunks_exact(8) {
        let v = u64::from_ne_bytes(c.try_into().unwrap());
        // Nonzero iff some byte of v is zero (the classic has-zero-byte test).
        if v.wrapping_sub(LO) & !v & HI != 0 {
            break;
        }
        at += 8;
    }
    at + s[at..].iter().position(|&p| p == 0).unwrap_or(s.len() - at)
}

/// Length of the run of `value` pixels at the start of `s`.
fn run_len(s: &[u8], value: bool) -> usize {
    if value { find_zero(s) } else { find_nonzero(s) }
}

/// Calls `f` with each run length (background first) of a one-byte-per-pixel mask.
fn for_each_run(pixels: &[u8], mut f: impl FnMut(u32)) {
    let mut pos = 0;
    let mut current = false;
    loop {
        let len = run_len(&pixels[pos..], current);
        f(len as u32);
        pos += len;
        if pos >= pixels.len() {
            return;
        }
        current = !current;
    }
}

/// The RLE size of a one-byte-per-pixel mask.
pub fn rle_len(pixels: &[u8]) -> usize {
    let mut n = 0;
    for_each_run(pixels, |r| n += varint_len(r));
    n
}

/// The raw bit-packed size of a mask of `pixels` pixels.
pub const fn raw_len(pixels: usize) -> usize {
    pixels.div_ceil(8)
}

/// The smaller encoding for this mask, with its size (raw wins ties: it is cheaper to decode).
pub fn choose(pixels: &[u8]) -> (Encoding, usize) {
    let (rle, raw) = (rle_len(pixels), raw_len(pixels.len()));
    if rle < raw {
        (Encoding::Rle, rle)
    } else {
        (Encoding::Raw, raw)
    }
}

/// Streams the encoded form of a one-byte-per-pixel mask into slices of any size.
pub struct MaskEncoder<'m> {
    pixels: &'m [u8],
    encoding: Encoding,
    /// Next pixel to scan.
    pos: usize,
    /// Value of the run that starts at `pos` (RLE).
    current: bool,
    /// Bytes of a varint not yet written (RLE): `pending[pending_at..pending_len]`.
    pending: [u8; 5],
    pending_at: usize,
    pending_len: usize,
}

impl<'m> MaskEncoder<'m> {
    pub fn new(pixels: &'m [u8], encoding: Encoding) -> Self {
        MaskEncoder {
            pixels,
            encoding,
            pos: 0,
            current: false,
            pending: [0; 5],
            pending_at: 0,
            pending_len: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.pos >= self.pixels.len() && self.pending_at == self.pending_len && self.started()
    }

    fn started(&self) -> bool {
        // RLE always emits at least one run, even for a 0-pixel mask (a single 0).
        self.encoding == Encoding::Raw || self.pos > 0 || self.pending_len > 0
    }

    /// Writes the next encoded bytes into `out`, returning how many were written (less than
    /// `out.len()` only at the end).
    pub fn fill(&mut self, out: &mut [u8]) -> usize {
        match self.encoding {
            Encoding::Raw => self.fill_raw(out),
            Encoding::Rle => self.fill_rle(out),
        }
    }

    fn fill_raw(&mut self, out: &mut [u8]) -> usize {
        let mut w = 0;
        while w < out.len() && self.pos < self.pixels.len() {
            let end = (self.pos + 8).min(self.pixels.len());
            let mut byte = 0u8;
            for (k, &p) in self.pixels[self.pos..end].iter().enumerate() {
                byte |= ((p != 0) as u8) << (7 - k);
            }
            out[w] = byte;
            w += 1;
            self.pos = end;
        }
        w
    }

    fn fill_rle(&mut self, out: &mut [u8]) -> usize {
        let mut w = 0;
        loop {
            while self.pending_at < self.pending_len && w < out.len() {
                out[w] = self.pending[self.pending_at];
                self.pending_at += 1;
                w += 1;
            }
            if w == out.len() || (self.pos >= self.pixels.len() && self.started()) {
                return w;
            }
            // Next run: scan while pixels keep the current value.
            let start = self.pos;
            let len = run_len(&self.pixels[start..], self.current);
            self.pos = start + len;
            self.current = !self.current;
            self.pending_len = write_varint(len as u32, &mut self.pending);
            self.pending_at = 0;
        }
    }
}

/// Why encoded mask data was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskDataError {
    /// The runs or bytes describe more pixels than the mask has.
    TooLong,
    /// The data ended before every pixel was described.
    TooShort,
    /// A varint longer than 5 bytes or above u32.
    BadVarint,
    /// A zero-length run other than the first.
    EmptyRun,
    /// Nonzero padding bits after the last pixel (raw).
    Padding,
}

/// Receives decoded pixels as runs; implemented for a one-byte-per-pixel slice, and by any
/// receiver that draws or bit-packs directly.
pub trait RunSink {
    fn run(&mut self, start: usize, len: usize, value: bool);
}

impl RunSink for [u8] {
    fn run(&mut self, start: usize, len: usize, value: bool) {
        self[start..start + len].fill(value as u8);
    }
}

/// Decodes mask data fed in pieces of any size (a varint may straddle two frames).
pub struct MaskDecoder {
    encoding: Encoding,
    pixels: usize,
    pos: usize,
    current: bool,
    runs: usize,
    acc: u64,
    shift: u32,
    acc_bytes: u8,
}

impl MaskDecoder {
    pub fn new(encoding: Encoding, pixels: usize) -> Self {
        MaskDecoder {
            encoding,
            pixels,
            pos: 0,
            current: false,
            runs: 0,
            acc: 0,
            shift: 0,
            acc_bytes: 0,
        }
    }

    /// Decodes `data` into `sink`, which must hold `pixels` pixels.
    pub fn feed<S: RunSink + ?Sized>(
        &mut self,
        data: &[u8],
        sink: &mut S,
    ) -> Result<(), MaskDataError> {
        match self.encoding {
            Encoding::Raw => {
                for &b in data {
                    if self.pos >= self.pixels {
                        return Err(MaskDataError::TooLong);
                    }
                    let n = (self.pixels - self.pos).min(8);
                    if n < 8 && b & (0xFF >> n) != 0 {
                        return Err(MaskDataError::Padding);
                    }
                    for k in 0..n {
                        sink.run(self.pos + k, 1, b & (0x80 >> k) != 0);
                    }
                    self.pos += n;
                }
                Ok(())
            }
            Encoding::Rle => {
                for &b in data {
                    self.acc |= ((b & 0x7F) as u64) << self.shift;
                    self.acc_bytes += 1;
                    if b & 0x80 != 0 {
                        self.shift += 7;
                        if self.acc_bytes >= 5 {
                            return Err(MaskDataError::BadVarint);
                        }
                        continue;
                    }
                    if self.acc > u32::MAX as u64 {
                        return Err(MaskDataError::BadVarint);
                    }
                    let len = self.acc as usize;
                    (self.acc, self.shift, self.acc_bytes) = (0, 0, 0);
                    if len == 0 && self.runs > 0 {
                        return Err(MaskDataError::EmptyRun);
                    }
                    if len > self.pixels - self.pos {
                        return Err(MaskDataError::TooLong);
                    }
                    sink.run(self.pos, len, self.current);
                    self.pos += len;
                    self.current = !self.current;
                    self.runs += 1;
                }
                Ok(())
            }
        }
    }

    /// Checks that the data described every pixel and ended on a whole varint.
    pub fn finish(&self) -> Result<(), MaskDataError> {
        let complete = self.pos == self.pixels
            && self.acc_bytes == 0
            && (self.encoding == Encoding::Raw || self.runs > 0);
        if complete {
            Ok(())
        } else {
            Err(MaskDataError::TooShort)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_all(pixels: &[u8], enc: Encoding, chunk: usize) -> Vec<u8> {
        let mut e = MaskEncoder::new(pixels, enc);
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        while !e.is_done() {
            let n = e.fill(&mut buf);
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    fn decode_all(
        data: &[u8],
        enc: Encoding,
        pixels: usize,
        chunk: usize,
    ) -> Result<Vec<u8>, MaskDataError> {
        let mut d = MaskDecoder::new(enc, pixels);
        let mut out = vec![7u8; pixels];
        for piece in data.chunks(chunk.max(1)) {
            d.feed(piece, out.as_mut_slice())?;
        }
        d.finish()?;
        Ok(out)
    }

    fn masks() -> Vec<Vec<u8>> {
        let mut rng = 12345u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut v = vec![
            vec![],
            vec![0],
            vec![1],
            vec![0; 100],
            vec![1; 100],
            vec![1; 7],
        ];
        // A disc (the common case), random noise (worst case for RLE), long runs (> 127, > 16383).
        v.push(
            (0..64 * 48i32)
                .map(|i| (((i % 64) - 30).pow(2) + ((i / 64) - 20).pow(2) < 200) as u8)
                .collect(),
        );
        v.push((0..1001).map(|_| (next() & 1) as u8).collect());
        let mut long = vec![0u8; 40000];
        long[20000..39000].fill(1);
        v.push(long);
        v
    }

    #[test]
    fn roundtrip_both_encodings_any_chunking() {
        for m in masks() {
            for enc in [Encoding::Rle, Encoding::Raw] {
                for chunk in [1, 2, 5, 1024] {
                    let data = encode_all(&m, enc, chunk);
                    let expected_len = if enc == Encoding::Rle {
                        rle_len(&m)
                    } else {
                        raw_len(m.len())
                    };
                    assert_eq!(data.len(), expected_len);
                    for dchunk in [1, 3, 4096] {
                        let back = decode_all(&data, enc, m.len(), dchunk).unwrap();
                        assert_eq!(back, m.iter().map(|&p| (p != 0) as u8).collect::<Vec<_>>());
                    }
                }
            }
        }
    }

    #[test]
    fn word_scans_match_bytewise() {
        let mut rng = 99u64;
        for len in 0..40 {
            for _ in 0..50 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v: Vec<u8> = (0..len)
                    .map(|i| {
                        if (rng >> (i % 60)) & 7 == 0 {
                            (rng >> 3) as u8 | 1
                        } else {
                            0
                        }
                    })
                    .collect();
                let w: Vec<u8> = v.iter().map(|&x| if x == 0 { 1 } else { 0 }).collect();
                assert_eq!(
                    find_nonzero(&v),
                    v.iter().position(|&p| p != 0).unwrap_or(len)
                );
                assert_eq!(find_zero(&w), w.iter().position(|&p| p == 0).unwrap_or(len));
                // Values other than 0/1 count as foreground.
                assert_eq!(find_zero(&v), v.iter().position(|&p| p == 0).unwrap_or(len));
            }
        }
    }

    #[test]
    fn rle_known_bytes() {
        // 0 0 1 1 1 0 -> runs 2,3,1 ; starting with foreground -> first run 0.
        assert_eq!(
            encode_all(&[0, 0, 1, 1, 1, 0], Encoding::Rle, 4),
            vec![2, 3, 1]
        );
        assert_eq!(encode_all(&[1, 1], Encoding::Rle, 4), vec![0, 2]);
        assert_eq!(
            encode_all(&vec![0u8; 300], Encoding::Rle, 4),
            vec![0xAC, 0x02]
        );
        assert_eq!(
            encode_all(&[1, 0, 1, 1, 0, 0, 0, 0, 1], Encoding::Raw, 4),
            vec![0b1011_0000, 0b1000_0000]
        );
    }

    #[test]
    fn chooser_never_exceeds_raw() {
        for m in masks() {
            let (enc, n) = choose(&m);
            assert!(n <= raw_len(m.len()));
            assert_eq!(n, encode_all(&m, enc, 64).len());
        }
    }

    #[test]
    fn malformed_data_is_refused() {
        let e = |d: &[u8], enc, n| decode_all(d, enc, n, 1).unwrap_err();
        assert_eq!(e(&[2, 3], Encoding::Rle, 6), MaskDataError::TooShort);
        assert_eq!(e(&[2, 5], Encoding::Rle, 6), MaskDataError::TooLong);
        assert_eq!(e(&[2, 0, 4], Encoding::Rle, 6), MaskDataError::EmptyRun);
        assert_eq!(
            e(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], Encoding::Rle, 6),
            MaskDataError::BadVarint
        );
        assert_eq!(e(&[0x80], Encoding::Rle, 6), MaskDataError::TooShort);
        assert_eq!(e(&[0xFF], Encoding::Raw, 6), MaskDataError::Padding);
        assert_eq!(e(&[0xFC, 0], Encoding::Raw, 6), MaskDataError::TooLong);
        assert_eq!(e(&[], Encoding::Rle, 0), MaskDataError::TooShort);
        assert!(decode_all(&[0], Encoding::Rle, 0, 1).is_ok());
    }
}
