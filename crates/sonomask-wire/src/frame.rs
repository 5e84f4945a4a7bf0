//! Frames: the unit the link carries.
//!
//! ```text
//! offset  size  field
//! 0       1     version        protocol version of the payload layout (this crate: 1)
//! 1       1     type           message type (see `message::MsgType`)
//! 2       2     seq            per-direction sequence number, u16 LE, wraps
//! 4       2     length         payload length N, u16 LE, N <= MAX_PAYLOAD
//! 6       N     payload
//! 6+N     4     crc            CRC-32 (IEEE) of bytes 0..6+N, u32 LE
//! ```
//!
//! On the wire each frame is COBS-encoded and followed by one 0x00 delimiter. The header layout
//! and the trailing CRC are frozen for every protocol version, so any receiver can check a
//! frame's integrity and report a version it does not speak instead of misreading it.

use super::cobs::{self, CobsError};
use super::crc;

/// The protocol version this implementation emits and understands.
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 6;
pub const CRC_LEN: usize = 4;
/// The largest payload; with it a receiver needs a fixed buffer of [`MAX_ENCODED`] bytes.
pub const MAX_PAYLOAD: usize = 1024;
/// The largest decoded frame (header + payload + CRC).
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD + CRC_LEN;
/// The largest COBS-encoded frame, without its delimiter.
pub const MAX_ENCODED: usize = cobs::max_encoded_len(MAX_FRAME);
/// The most bytes one frame occupies on the wire, delimiter included.
pub const MAX_WIRE: usize = MAX_ENCODED + 1;

/// The frame delimiter.
pub const DELIMITER: u8 = 0x00;

mod field {
    use core::ops::Range;
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const SEQ: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const PAYLOAD: usize = 6;
}

/// Why bytes between two delimiters are not a frame. Every error drops just that block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// COBS structure broken (a corrupted code byte, usually).
    Cobs(CobsError),
    /// Fewer bytes than a header and a CRC.
    TooShort(usize),
    /// More than [`MAX_ENCODED`] bytes before a delimiter: discarded up to the next delimiter.
    Oversize,
    /// The length field disagrees with the block's size.
    Length { declared: usize, actual: usize },
    /// The CRC does not match: some bit changed on the way.
    Crc { computed: u32, received: u32 },
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::Cobs(e) => write!(f, "COBS error: {e:?}"),
            FrameError::TooShort(n) => write!(f, "block of {n} bytes is shorter than a frame"),
            FrameError::Oversize => write!(f, "block longer than {MAX_ENCODED} bytes"),
            FrameError::Length { declared, actual } => {
                write!(
                    f,
                    "length field says {declared} payload bytes, block holds {actual}"
                )
            }
            FrameError::Crc { computed, received } => {
                write!(
                    f,
                    "CRC mismatch: computed {computed:#010x}, received {received:#010x}"
                )
            }
        }
    }
}

/// A read-only view of a decoded, checked frame.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    buf: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Checks length and CRC of a decoded (un-COBSed) frame.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, FrameError> {
        if buf.len() < HEADER_LEN + CRC_LEN {
            return Err(FrameError::TooShort(buf.len()));
        }
        let declared =
            u16::from_le_bytes([buf[field::LENGTH.start], buf[field::LENGTH.start + 1]]) as usize;
        let actual = buf.len() - HEADER_LEN - CRC_LEN;
        if declared != actual || declared > MAX_PAYLOAD {
            return Err(FrameError::Length { declared, actual });
        }
        let body = &buf[..buf.len() - CRC_LEN];
        let received = u32::from_le_bytes(buf[buf.len() - CRC_LEN..].try_into().unwrap());
        let computed = crc::crc32(body);
        if computed != received {
            return Err(FrameError::Crc { computed, received });
        }
        Ok(Frame { buf })
    }

    pub fn version(&self) -> u8 {
        self.buf[field::VERSION]
    }
    pub fn msg_type(&self) -> u8 {
        self.buf[field::TYPE]
    }
    pub fn seq(&self) -> u16 {
        u16::from_le_bytes([self.buf[field::SEQ.start], self.buf[field::SEQ.start + 1]])
    }
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[field::PAYLOAD..self.buf.len() - CRC_LEN]
    }
}

/// Writes one complete wire frame (COBS-encoded, delimiter appended) into `out`; returns its
/// length. `out` must hold [`MAX_WIRE`] bytes for any payload; `None` if the payload exceeds
/// [`MAX_PAYLOAD`] or `out` is too small.
pub fn emit(version: u8, msg_type: u8, seq: u16, payload: &[u8], out: &mut [u8]) -> Option<usize> {
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    let mut raw = [0u8; MAX_FRAME];
    raw[field::VERSION] = version;
    raw[field::TYPE] = msg_type;
    raw[field::SEQ].copy_from_slice(&seq.to_le_bytes());
    raw[field::LENGTH].copy_from_slice(&(payload.len() as u16).to_le_bytes());
    let end = field::PAYLOAD + payload.len();
    raw[field::PAYLOAD..end].copy_from_slice(payload);
    let c = crc::crc32(&raw[..end]);
    raw[end..end + CRC_LEN].copy_from_slice(&c.to_le_bytes());
    let n = cobs::encode(&raw[..end + CRC_LEN], out).ok()?;
    *out.get_mut(n)? = DELIMITER;
    Some(n + 1)
}

/// Counters a receiver keeps about the byte stream; reported in the host's JSON and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameStats {
    pub frames: u64,
    pub errors: u64,
    pub oversize: u64,
    pub bytes: u64,
}

/// What the decoder found at a delimiter.
#[derive(Debug)]
pub enum Event<'a> {
    Frame(Frame<'a>),
    Error(FrameError),
}

/// A streaming frame decoder with one fixed buffer: feed it any chunks of the byte stream and
/// it yields every intact frame and one error per damaged block. It needs no allocation and
/// resynchronises at the next delimiter after any damage.
pub struct FrameDecoder {
    buf: heapless::Vec<u8, MAX_ENCODED>,
    /// Set after an oversize block until the next delimiter.
    discarding: bool,
    /// The buffer holds the frame returned by the last call; clear it before storing more.
    returned: bool,
    pub stats: FrameStats,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub const fn new() -> Self {
        FrameDecoder {
            buf: heapless::Vec::new(),
            discarding: false,
            returned: false,
            stats: FrameStats {
                frames: 0,
                errors: 0,
                oversize: 0,
                bytes: 0,
            },
        }
    }

    /// Forgets a partly received block (after a link reconnects).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
        self.returned = false;
    }

    /// Consumes bytes from `input` up to and including the next delimiter. Returns how many
    /// bytes were consumed and the event at that delimiter, if any. Call again with the rest.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Event<'_>>) {
        if self.returned {
            self.buf.clear();
            self.returned = false;
        }
        let Some(end) = input.iter().position(|&b| b == DELIMITER) else {
            self.store(input);
            self.stats.bytes += input.len() as u64;
            return (input.len(), None);
        };
        self.store(&input[..end]);
        let consumed = end + 1;
        self.stats.bytes += consumed as u64;
        if self.discarding {
            self.discarding = false;
            self.buf.clear();
            self.stats.errors += 1;
            self.stats.oversize += 1;
            return (consumed, Some(Event::Error(FrameError::Oversize)));
        }
        if self.buf.is_empty() {
            // Back-to-back delimiters (a sender's leading flush byte): not an error.
            return (consumed, None);
        }
        let checked = match cobs::decode_in_place(&mut self.buf) {
            Ok(n) => {
                self.buf.truncate(n);
                Frame::new_checked(&self.buf).map(|_| ())
            }
            Err(e) => Err(FrameError::Cobs(e)),
        };
        match checked {
            Ok(()) => {
                self.stats.frames += 1;
                self.returned = true;
                (consumed, Some(Event::Frame(Frame { buf: &self.buf })))
            }
            Err(e) => {
                self.stats.errors += 1;
                self.buf.clear();
                (consumed, Some(Event::Error(e)))
            }
        }
    }

    fn store(&mut self, bytes: &[u8]) {
        if self.discarding {
            return;
        }
        if self.buf.extend_from_slice(bytes).is_err() {
            self.discarding = true;
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(msg_type: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = [0u8; MAX_WIRE];
        let n = emit(VERSION, msg_type, seq, payload, &mut out).unwrap();
        out[..n].to_vec()
    }

    /// Decodes a whole stream, returning (type, seq, payload) of frames and the error count.
    fn decode_all(stream: &[u8], chunk: usize) -> (Vec<(u8, u16, Vec<u8>)>, u64) {
        let mut d = FrameDecoder::new();
        let mut frames = Vec::new();
        for piece in stream.chunks(chunk.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                let (n, ev) = d.feed(rest);
                if let Some(Event::Frame(f)) = ev {
                    frames.push((f.msg_type(), f.seq(), f.payload().to_vec()));
                }
                rest = &rest[n..];
            }
        }
        (frames, d.stats.errors)
    }

    #[test]
    fn frames_survive_any_chunking() {
        let mut stream = vec![0u8];
        let payloads: Vec<Vec<u8>> = vec![
            vec![],
            vec![0; 10],
            (0..MAX_PAYLOAD).map(|i| (i % 7) as u8).collect(),
            (0..300).map(|i| (i % 256) as u8).collect(),
        ];
        for (i, p) in payloads.iter().enumerate() {
            stream.extend(wire(0x10 + i as u8, i as u16, p));
        }
        for chunk in [1, 2, 3, 64, 1000, stream.len()] {
            let (frames, errors) = decode_all(&stream, chunk);
            assert_eq!(errors, 0);
            assert_eq!(frames.len(), payloads.len());
            for (i, (t, s, p)) in frames.iter().enumerate() {
                assert_eq!((*t, *s as usize, p), (0x10 + i as u8, i, &payloads[i]));
            }
        }
    }

    #[test]
    fn payload_over_limit_is_refused() {
        let mut out = [0u8; MAX_WIRE + 10];
        assert!(emit(VERSION, 1, 0, &[1; MAX_PAYLOAD + 1], &mut out).is_none());
        assert!(emit(VERSION, 1, 0, &[1; MAX_PAYLOAD], &mut out[..MAX_WIRE]).is_some());
    }

    #[test]
    fn oversize_block_is_skipped_and_next_frame_decoded() {
        let mut stream = vec![0x55u8; MAX_ENCODED + 50];
        stream.push(0);
        stream.extend(wire(2, 7, b"ok"));
        let (frames, errors) = decode_all(&stream, 100);
        assert_eq!(errors, 1);
        assert_eq!(frames, vec![(2, 7, b"ok".to_vec())]);
    }

    #[test]
    fn a_flipped_bit_anywhere_is_caught() {
        let good = wire(0x10, 3, &(0..200).map(|i| i as u8).collect::<Vec<_>>());
        for byte in 0..good.len() - 1 {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                let mut stream = bad;
                stream.extend(wire(1, 4, b"next"));
                let (frames, _) = decode_all(&stream, 37);
                // The damaged frame never comes out; the frame after it always does.
                assert!(
                    frames.iter().all(|f| f.1 != 3),
                    "corrupt frame accepted at {byte}:{bit}"
                );
                assert_eq!(frames.last().unwrap(), &(1, 4, b"next".to_vec()));
            }
        }
    }
}
