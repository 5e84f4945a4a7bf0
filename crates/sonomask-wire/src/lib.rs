//! The sonomask wire protocol, version 1 (specified in `docs/PROTOCOL.md`): the device's
//! encoder and the host's decoder, `#![no_std]` so a microcontroller host (a cart's display
//! board, a Cortex-M bridge) can decode masks with the same code the device encodes them with.
//!
//! Layers, bottom up, each a module with typed views and parse/emit in the style of smoltcp:
//! - [`crc`]: CRC-32 (IEEE), the frame and mask-data checksum;
//! - [`cobs`]: byte stuffing so 0x00 delimits frames and a receiver resynchronises at once;
//! - [`frame`]: header, payload limit, CRC, and the streaming [`frame::FrameDecoder`];
//! - [`message`]: Hello, Status, Mask, MaskData, Prompt, Ack, Error;
//! - [`maskcodec`]: RLE-varint and raw bit-packed mask data, streamed in any chunk size;
//! - [`send`] / [`assemble`]: framing masks across frames and putting them back together;
//! - [`receiver`] (feature `alloc`, on by default): bytes in, events out, for hosts with a heap.
//!
//! Nothing but [`receiver`] allocates, and nothing does I/O: buffers are fixed (`heapless`) or
//! the caller's, and bytes leave through callbacks. `--no-default-features` is pure `core`
//! (checked in CI by a `thumbv7em-none-eabihf` build).
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod assemble;
pub mod cobs;
pub mod crc;
pub mod frame;
#[cfg(feature = "alloc")]
#[doc(hidden)]
pub mod fuzzing;
pub mod maskcodec;
pub mod message;
#[cfg(feature = "alloc")]
pub mod receiver;
pub mod send;

pub use assemble::{Assembler, DropReason, Progress, SeqTracker};
pub use frame::{Event, Frame, FrameDecoder, FrameError, MAX_PAYLOAD, MAX_WIRE, VERSION};
pub use maskcodec::Encoding;
pub use message::{Message, MsgType};
#[cfg(feature = "alloc")]
pub use receiver::{Received, Receiver, ReceiverStats};
pub use send::{MaskMeta, SendError, Sender};
