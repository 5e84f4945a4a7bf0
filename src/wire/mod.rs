//! The sonomask wire protocol, version 1 (specified in `docs/PROTOCOL.md`).
//!
//! Layers, bottom up, each a module with typed views and parse/emit in the style of smoltcp:
//! - [`crc`]: CRC-32 (IEEE), the frame and mask-data checksum;
//! - [`cobs`]: byte stuffing so 0x00 delimits frames and a receiver resynchronises at once;
//! - [`frame`]: header, payload limit, CRC, and the streaming [`frame::FrameDecoder`];
//! - [`message`]: Hello, Status, Mask, MaskData, Prompt, Ack, Error;
//! - [`maskcodec`]: RLE-varint and raw bit-packed mask data, streamed in any chunk size;
//! - [`send`] / [`assemble`]: framing masks across frames and putting them back together.
//!
//! Nothing here allocates or does I/O: buffers are fixed (`heapless`) or the caller's, and
//! bytes leave through callbacks, so a microcontroller host can reuse the decoder as is.

pub mod assemble;
pub mod cobs;
pub mod crc;
pub mod frame;
pub mod maskcodec;
pub mod message;
pub mod send;

pub use assemble::{Assembler, DropReason, Progress, SeqTracker};
pub use frame::{Event, Frame, FrameDecoder, FrameError, MAX_PAYLOAD, MAX_WIRE, VERSION};
pub use maskcodec::Encoding;
pub use message::{Message, MsgType};
pub use send::{MaskMeta, SendError, Sender};
