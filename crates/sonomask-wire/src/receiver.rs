//! Bytes in, events out: the frame decoder, sequence tracking, version check, message parsing
//! and mask reassembly in one place, for the host (`listen`), the device's prompt channel and
//! the tests. The mask buffer is the only allocation; it grows to the largest mask seen.

use crate::assemble::{Assembler, DropReason, Progress, SeqTracker};
use crate::frame::{Event, FrameDecoder, FrameError, VERSION};
use crate::message::{MaskHeader, Message, ParseError};
use alloc::vec::Vec;

/// One thing the receiver learned from the byte stream.
#[derive(Debug)]
// Carries a `Message` by value, as above: no allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum Received<'a> {
    /// Any message but Mask/MaskData (those arrive as [`Received::Mask`]).
    Message { seq: u16, msg: Message<'static> },
    /// A complete, verified mask: one byte per pixel, 0 or 1.
    Mask {
        header: MaskHeader,
        pixels: &'a [u8],
    },
    /// A damaged block (dropped).
    FrameError(FrameError),
    /// An intact frame whose payload is not a valid message (dropped).
    ParseError {
        seq: u16,
        msg_type: u8,
        error: ParseError,
    },
    /// An intact frame of a protocol version this side does not speak (dropped).
    Version { seq: u16, version: u8 },
    /// Frames missing before this sequence number.
    Lost { frames: u16 },
    /// A mask that could not be completed.
    MaskDropped(DropReason),
}

/// Running totals, for `listen`'s summary and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub frames: u64,
    pub frame_errors: u64,
    pub parse_errors: u64,
    pub version_errors: u64,
    pub lost_frames: u64,
    pub masks: u64,
    pub masks_dropped: u64,
    pub bytes: u64,
}

#[derive(Default)]
pub struct Receiver {
    frames: FrameDecoder,
    seq: SeqTracker,
    masks: Assembler,
    pixels: Vec<u8>,
    session: Option<u32>,
    pub stats: ReceiverStats,
}

impl Receiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget partial state after the link was reopened: a frame cut by the reconnect must
    /// not be glued to the next connection's bytes.
    pub fn link_reset(&mut self) {
        self.frames.reset();
        self.seq.reset();
        if self.masks.frames_lost().is_some() {
            self.stats.masks_dropped += 1;
        }
    }

    /// Feeds received bytes; `on` sees every event in order.
    pub fn push(&mut self, mut bytes: &[u8], mut on: impl FnMut(Received<'_>)) {
        self.stats.bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            let (n, ev) = self.frames.feed(bytes);
            bytes = &bytes[n..];
            match ev {
                None => {}
                Some(Event::Error(e)) => {
                    self.stats.frame_errors += 1;
                    on(Received::FrameError(e));
                }
                Some(Event::Frame(f)) => {
                    self.stats.frames += 1;
                    let (seq, version, msg_type) = (f.seq(), f.version(), f.msg_type());
                    let parsed = if version == VERSION {
                        Some(Message::parse(msg_type, f.payload()))
                    } else {
                        None
                    };
                    // A new session id means the peer restarted and its numbering with it.
                    if let Some(Ok(Message::Hello(h))) = &parsed {
                        if self.session.is_some_and(|s| s != h.session_id) {
                            self.seq.reset();
                        }
                        self.session = Some(h.session_id);
                    }
                    let gap = self.seq.observe(seq);
                    if gap > 0 {
                        self.stats.lost_frames += gap as u64;
                        on(Received::Lost { frames: gap });
                        if let Some(r) = self.masks.frames_lost() {
                            self.stats.masks_dropped += 1;
                            on(Received::MaskDropped(r));
                        }
                    }
                    match parsed {
                        None => {
                            self.stats.version_errors += 1;
                            on(Received::Version { seq, version });
                        }
                        Some(Err(error)) => {
                            self.stats.parse_errors += 1;
                            on(Received::ParseError {
                                seq,
                                msg_type,
                                error,
                            });
                        }
                        Some(Ok(msg)) => message(
                            &mut self.masks,
                            &mut self.pixels,
                            &mut self.stats,
                            seq,
                            msg,
                            &mut on,
                        ),
                    }
                }
            }
        }
    }
}

/// Handles one parsed message; a free function so it can borrow the receiver's fields while
/// the frame (borrowing the decoder) is alive.
fn message(
    masks: &mut Assembler,
    pixels: &mut Vec<u8>,
    stats: &mut ReceiverStats,
    seq: u16,
    msg: Message<'_>,
    on: &mut impl FnMut(Received<'_>),
) {
    let progress = match msg {
        Message::Mask(h, data) => {
            let n = h.width as usize * h.height as usize;
            if pixels.len() < n {
                pixels.resize(n, 0);
            }
            let (p, interrupted) = masks.begin(h, data, pixels);
            if let Some(r) = interrupted {
                stats.masks_dropped += 1;
                on(Received::MaskDropped(r));
            }
            p
        }
        Message::MaskData(h, data) => masks.next(h, data, pixels),
        Message::Hello(m) => {
            return on(Received::Message {
                seq,
                msg: Message::Hello(m),
            });
        }
        Message::Status(m) => {
            return on(Received::Message {
                seq,
                msg: Message::Status(m),
            });
        }
        Message::Measure(m) => {
            // After its mask's last frame: it never interrupts a reassembly.
            return on(Received::Message {
                seq,
                msg: Message::Measure(m),
            });
        }
        Message::Prompt(m) => {
            return on(Received::Message {
                seq,
                msg: Message::Prompt(m),
            });
        }
        Message::Ack(m) => {
            return on(Received::Message {
                seq,
                msg: Message::Ack(m),
            });
        }
        Message::Error(m) => {
            return on(Received::Message {
                seq,
                msg: Message::Error(m),
            });
        }
    };
    match progress {
        Progress::Pending => {}
        Progress::Complete(header) => {
            stats.masks += 1;
            let n = header.width as usize * header.height as usize;
            on(Received::Mask {
                header,
                pixels: &pixels[..n],
            });
        }
        Progress::Dropped(r) => {
            stats.masks_dropped += 1;
            on(Received::MaskDropped(r));
        }
    }
}
