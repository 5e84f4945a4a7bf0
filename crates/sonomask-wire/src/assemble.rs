//! The receiving side above frames: sequence-gap detection and mask reassembly.
//!
//! A mask is accepted only if every one of its frames arrived, in order, with no frame lost in
//! between, and its reassembled data matches the CRC in its first frame and decodes to exactly
//! `width * height` pixels. Anything else drops that mask (counted, with a reason) and never
//! touches the next one: the next Mask frame starts fresh.

use super::crc::Crc32;
use super::maskcodec::{MaskDataError, MaskDecoder};
use super::message::{MaskDataHeader, MaskHeader};

/// Counts frames lost between received sequence numbers (per direction).
#[derive(Clone, Copy, Debug, Default)]
pub struct SeqTracker {
    last: Option<u16>,
    pub lost: u64,
}

impl SeqTracker {
    /// Records a received sequence number; returns how many frames were skipped before it.
    pub fn observe(&mut self, seq: u16) -> u16 {
        let gap = match self.last {
            Some(last) => seq.wrapping_sub(last.wrapping_add(1)),
            None => 0,
        };
        self.last = Some(seq);
        self.lost += gap as u64;
        gap
    }

    /// Forgets the last number (the peer restarted, or the link was reopened).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// Why a mask was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A frame was lost while the mask was being received.
    FrameLost,
    /// A continuation frame without its first frame (a listener that attached mid-mask).
    NoStart,
    /// A continuation out of order, for another mask, or at the wrong offset.
    OutOfOrder,
    /// A new mask began before this one was complete.
    Interrupted,
    /// The reassembled data does not match the CRC in the first frame.
    DataCrc,
    /// The data is not a valid encoding of a `width x height` mask.
    Data(MaskDataError),
    /// The receiver's buffer cannot hold the mask.
    TooLarge,
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DropReason::FrameLost => write!(f, "a frame was lost mid-mask"),
            DropReason::NoStart => write!(f, "continuation without its first frame"),
            DropReason::OutOfOrder => write!(f, "continuation out of order"),
            DropReason::Interrupted => write!(f, "a new mask began before this one ended"),
            DropReason::DataCrc => write!(f, "reassembled data fails its CRC"),
            DropReason::Data(e) => write!(f, "mask data invalid: {e:?}"),
            DropReason::TooLarge => write!(f, "mask larger than the receive buffer"),
        }
    }
}

/// What one mask frame did to the reassembly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress {
    /// More frames are needed.
    Pending,
    /// The mask in the output buffer is complete and verified.
    Complete(MaskHeader),
    /// The mask in progress was dropped.
    Dropped(DropReason),
}

struct InProgress {
    header: MaskHeader,
    /// Chunks received so far = the index the next continuation must carry.
    next_chunk: u16,
    received: u32,
    crc: Crc32,
    decoder: MaskDecoder,
}

/// Reassembles one mask at a time into a caller-provided one-byte-per-pixel buffer.
#[derive(Default)]
pub struct Assembler {
    current: Option<InProgress>,
    pub completed: u64,
    pub dropped: u64,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// The header of the mask being received, if any (to size the output buffer).
    pub fn in_progress(&self) -> Option<&MaskHeader> {
        self.current.as_ref().map(|c| &c.header)
    }

    /// Call when the sequence tracker reports lost frames (or the link reopened).
    pub fn frames_lost(&mut self) -> Option<DropReason> {
        self.current.take().map(|_| {
            self.dropped += 1;
            DropReason::FrameLost
        })
    }

    /// A Mask frame. `out` must hold `width * height` bytes; a previous unfinished mask is
    /// dropped (returned second).
    pub fn begin(
        &mut self,
        header: MaskHeader,
        data: &[u8],
        out: &mut [u8],
    ) -> (Progress, Option<DropReason>) {
        let interrupted = self.current.take().map(|_| {
            self.dropped += 1;
            DropReason::Interrupted
        });
        let pixels = header.width as usize * header.height as usize;
        if out.len() < pixels {
            self.dropped += 1;
            return (Progress::Dropped(DropReason::TooLarge), interrupted);
        }
        self.current = Some(InProgress {
            header,
            next_chunk: 0,
            received: 0,
            crc: Crc32::new(),
            decoder: MaskDecoder::new(header.encoding, pixels),
        });
        (self.push(data, out), interrupted)
    }

    /// A MaskData frame.
    pub fn next(&mut self, h: MaskDataHeader, data: &[u8], out: &mut [u8]) -> Progress {
        let Some(cur) = &self.current else {
            self.dropped += 1;
            return Progress::Dropped(DropReason::NoStart);
        };
        let matches = h.frame_id == cur.header.frame_id
            && h.object == cur.header.object
            && h.chunk_index == cur.next_chunk
            && h.offset == cur.received;
        if !matches {
            self.current = None;
            self.dropped += 1;
            return Progress::Dropped(DropReason::OutOfOrder);
        }
        self.push(data, out)
    }

    fn push(&mut self, data: &[u8], out: &mut [u8]) -> Progress {
        let cur = self
            .current
            .as_mut()
            .expect("push without a mask in progress");
        let pixels = cur.header.width as usize * cur.header.height as usize;
        let result = if cur.received as usize + data.len() > cur.header.data_len as usize
            || (cur.next_chunk >= cur.header.chunk_count)
        {
            Err(DropReason::OutOfOrder)
        } else {
            cur.crc.update(data);
            cur.received += data.len() as u32;
            cur.next_chunk += 1;
            cur.decoder
                .feed(data, &mut out[..pixels])
                .map_err(DropReason::Data)
        };
        if let Err(reason) = result {
            self.current = None;
            self.dropped += 1;
            return Progress::Dropped(reason);
        }
        let cur = self.current.as_ref().unwrap();
        if cur.next_chunk < cur.header.chunk_count {
            return Progress::Pending;
        }
        let cur = self.current.take().unwrap();
        let verdict = if cur.received != cur.header.data_len {
            Err(DropReason::OutOfOrder)
        } else if cur.crc.finish() != cur.header.data_crc {
            Err(DropReason::DataCrc)
        } else {
            cur.decoder.finish().map_err(DropReason::Data)
        };
        match verdict {
            Ok(()) => {
                self.completed += 1;
                Progress::Complete(cur.header)
            }
            Err(reason) => {
                self.dropped += 1;
                Progress::Dropped(reason)
            }
        }
    }
}
