//! Typed messages: each has a `Repr` with `parse` (from a frame payload) and `emit` (into a
//! caller's slice), in the style of smoltcp's wire module. Strings and lists are bounded
//! `heapless` containers, so parsing and emitting never allocate. All integers little endian.
//!
//! Receivers ignore bytes after the last defined field of Hello, Status, Prompt, Ack and Error:
//! version 1 may grow by appending fields; anything else needs a new protocol version.

use heapless::{String, Vec};

use super::maskcodec::Encoding;

/// Message type codes (the frame header's `type` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    Hello = 0x01,
    Status = 0x02,
    Mask = 0x10,
    MaskData = 0x11,
    Measure = 0x12,
    Prompt = 0x20,
    Ack = 0x30,
    Error = 0x31,
}

impl MsgType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => MsgType::Hello,
            0x02 => MsgType::Status,
            0x10 => MsgType::Mask,
            0x11 => MsgType::MaskData,
            0x12 => MsgType::Measure,
            0x20 => MsgType::Prompt,
            0x30 => MsgType::Ack,
            0x31 => MsgType::Error,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            MsgType::Hello => "hello",
            MsgType::Status => "status",
            MsgType::Mask => "mask",
            MsgType::MaskData => "mask_data",
            MsgType::Measure => "measure",
            MsgType::Prompt => "prompt",
            MsgType::Ack => "ack",
            MsgType::Error => "error",
        }
    }
}

/// Why a payload is not a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    UnknownType(u8),
    /// The payload ends inside a field.
    Truncated,
    /// A field holds a value the protocol forbids (named).
    Invalid(&'static str),
    /// A string or list longer than its limit (named).
    TooLong(&'static str),
    /// A string that is not UTF-8.
    Utf8,
}

impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ParseError::UnknownType(t) => write!(f, "unknown message type {t:#04x}"),
            ParseError::Truncated => write!(f, "payload ends inside a field"),
            ParseError::Invalid(what) => write!(f, "invalid {what}"),
            ParseError::TooLong(what) => write!(f, "{what} over its limit"),
            ParseError::Utf8 => write!(f, "string is not UTF-8"),
        }
    }
}

/// `s` cut at a character boundary to fit `N` bytes: how a sender puts a longer name or
/// message into a bounded field (truncation, not an error: the text is for people).
pub fn bounded_str<const N: usize>(s: &str) -> String<N> {
    let mut out = String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// The output slice is too small for the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmitError;

/// Reads fields in order from a payload.
struct Rd<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Rd { buf, at: 0 }
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let s = self
            .buf
            .get(self.at..self.at + n)
            .ok_or(ParseError::Truncated)?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, ParseError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
    fn f32(&mut self) -> Result<f32, ParseError> {
        Ok(f32::from_bits(self.u32()?))
    }
    fn str<const N: usize>(
        &mut self,
        len: usize,
        what: &'static str,
    ) -> Result<String<N>, ParseError> {
        if len > N {
            return Err(ParseError::TooLong(what));
        }
        let s = core::str::from_utf8(self.bytes(len)?).map_err(|_| ParseError::Utf8)?;
        let mut out = String::new();
        out.push_str(s).map_err(|_| ParseError::TooLong(what))?;
        Ok(out)
    }
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.at..]
    }
}

/// Writes fields in order into an output slice.
struct Wr<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Wr<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Wr { buf, at: 0 }
    }
    fn bytes(&mut self, b: &[u8]) -> Result<(), EmitError> {
        let dst = self
            .buf
            .get_mut(self.at..self.at + b.len())
            .ok_or(EmitError)?;
        dst.copy_from_slice(b);
        self.at += b.len();
        Ok(())
    }
    fn u8(&mut self, v: u8) -> Result<(), EmitError> {
        self.bytes(&[v])
    }
    fn u16(&mut self, v: u16) -> Result<(), EmitError> {
        self.bytes(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> Result<(), EmitError> {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<(), EmitError> {
        self.bytes(&v.to_le_bytes())
    }
    fn f32(&mut self, v: f32) -> Result<(), EmitError> {
        self.u32(v.to_bits())
    }
}

/// Capability bits carried in Hello.
pub mod caps {
    pub const MASK_RLE: u32 = 1 << 0;
    pub const MASK_RAW: u32 = 1 << 1;
    pub const PROMPT_BOX: u32 = 1 << 2;
    pub const PROMPT_POINTS: u32 = 1 << 3;
    pub const PROMPT_TEXT: u32 = 1 << 4;
    pub const PIPELINE_MEDCLIP_SAM: u32 = 1 << 5;
    pub const PIPELINE_SALIP: u32 = 1 << 6;
    pub const STATUS: u32 = 1 << 7;
    /// Sends a Measure after each mask (revision 1.1 of version 1).
    pub const MEASURE: u32 = 1 << 8;
}

/// One model the device runs, identified by its file's sha256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelHash {
    /// 0 SAM encoder, 1 SAM decoder, 2 CLIP image, 3 CLIP text.
    pub role: u8,
    /// 0 fp32, 1 int8.
    pub precision: u8,
    pub sha256: [u8; 32],
}

/// Hello (0x01): sent by the device when a link opens and periodically (a serial host can
/// attach at any time), and by a host that wants to negotiate the version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u8,
    pub max_version: u8,
    /// Random per process start: a new value means the sender restarted (sequence reset).
    pub session_id: u32,
    pub capabilities: u32,
    /// The largest payload this side accepts.
    pub max_payload: u16,
    pub device: String<32>,
    pub board: String<32>,
    pub models: Vec<ModelHash, 4>,
}

impl Hello {
    pub fn parse(p: &[u8]) -> Result<Self, ParseError> {
        let mut r = Rd::new(p);
        let min_version = r.u8()?;
        let max_version = r.u8()?;
        if min_version == 0 || min_version > max_version {
            return Err(ParseError::Invalid("version range"));
        }
        let session_id = r.u32()?;
        let capabilities = r.u32()?;
        let max_payload = r.u16()?;
        let n = r.u8()? as usize;
        let device = r.str(n, "device name")?;
        let n = r.u8()? as usize;
        let board = r.str(n, "board name")?;
        let count = r.u8()? as usize;
        let mut models = Vec::new();
        for _ in 0..count {
            let role = r.u8()?;
            let precision = r.u8()?;
            let sha256 = r.bytes(32)?.try_into().unwrap();
            models
                .push(ModelHash {
                    role,
                    precision,
                    sha256,
                })
                .map_err(|_| ParseError::TooLong("model list"))?;
        }
        Ok(Hello {
            min_version,
            max_version,
            session_id,
            capabilities,
            max_payload,
            device,
            board,
            models,
        })
    }

    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        let mut w = Wr::new(out);
        w.u8(self.min_version)?;
        w.u8(self.max_version)?;
        w.u32(self.session_id)?;
        w.u32(self.capabilities)?;
        w.u16(self.max_payload)?;
        w.u8(self.device.len() as u8)?;
        w.bytes(self.device.as_bytes())?;
        w.u8(self.board.len() as u8)?;
        w.bytes(self.board.as_bytes())?;
        w.u8(self.models.len() as u8)?;
        for m in &self.models {
            w.u8(m.role)?;
            w.u8(m.precision)?;
            w.bytes(&m.sha256)?;
        }
        Ok(w.at)
    }
}

/// An axis-aligned box in image pixels: `x0,y0` inclusive, `x1,y1` exclusive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rect {
    pub x0: u16,
    pub y0: u16,
    pub x1: u16,
    pub y1: u16,
}

/// The largest mask the protocol carries: 2^24 pixels (4096 x 4096), i.e. at most 2 MiB of
/// raw data. A receiver can size its reassembly buffer from this before the first mask.
pub const MAX_MASK_PIXELS: usize = 1 << 24;

/// Header of Mask (0x10), the first frame of every mask; the payload continues with the first
/// `payload.len() - MASK_HEADER_LEN` bytes of encoded data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskHeader {
    pub frame_id: u32,
    /// Device clock, microseconds since its session started, when the frame was captured.
    pub timestamp_us: u64,
    /// 0: a prompt given on the device's command line; otherwise a host Prompt's id.
    pub prompt_id: u16,
    /// Index of this mask among the frame's masks (several objects per frame).
    pub object: u8,
    pub encoding: Encoding,
    pub width: u16,
    pub height: u16,
    /// Tight bounding box of the foreground; all zero for an empty mask.
    pub bbox: Rect,
    /// The model's predicted IoU; NaN when not known (a replayed mask).
    pub score: f32,
    pub area: u32,
    /// Total encoded bytes over all chunks.
    pub data_len: u32,
    /// CRC-32 of the whole encoded data: proves the reassembly.
    pub data_crc: u32,
    /// Frames this mask spans (this one included), at least 1.
    pub chunk_count: u16,
}

pub const MASK_HEADER_LEN: usize = 46;

impl MaskHeader {
    /// Parses the header and returns it with the data bytes that follow it.
    pub fn parse(p: &[u8]) -> Result<(Self, &[u8]), ParseError> {
        let mut r = Rd::new(p);
        let frame_id = r.u32()?;
        let timestamp_us = r.u64()?;
        let prompt_id = r.u16()?;
        let object = r.u8()?;
        let encoding = Encoding::from_u8(r.u8()?).ok_or(ParseError::Invalid("mask encoding"))?;
        let width = r.u16()?;
        let height = r.u16()?;
        let bbox = Rect {
            x0: r.u16()?,
            y0: r.u16()?,
            x1: r.u16()?,
            y1: r.u16()?,
        };
        let score = r.f32()?;
        let area = r.u32()?;
        let data_len = r.u32()?;
        let data_crc = r.u32()?;
        let chunk_count = r.u16()?;
        let pixels = width as usize * height as usize;
        if pixels > MAX_MASK_PIXELS {
            return Err(ParseError::TooLong("mask size"));
        }
        if area as usize > pixels
            || bbox.x1 > width
            || bbox.y1 > height
            || bbox.x0 > bbox.x1
            || bbox.y0 > bbox.y1
        {
            return Err(ParseError::Invalid("mask area or bbox"));
        }
        if chunk_count == 0 {
            return Err(ParseError::Invalid("chunk count"));
        }
        let data = r.rest();
        if data.len() > data_len as usize || (chunk_count == 1 && data.len() != data_len as usize) {
            return Err(ParseError::Invalid("mask data length"));
        }
        Ok((
            MaskHeader {
                frame_id,
                timestamp_us,
                prompt_id,
                object,
                encoding,
                width,
                height,
                bbox,
                score,
                area,
                data_len,
                data_crc,
                chunk_count,
            },
            data,
        ))
    }

    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        let mut w = Wr::new(out);
        w.u32(self.frame_id)?;
        w.u64(self.timestamp_us)?;
        w.u16(self.prompt_id)?;
        w.u8(self.object)?;
        w.u8(self.encoding as u8)?;
        w.u16(self.width)?;
        w.u16(self.height)?;
        for v in [self.bbox.x0, self.bbox.y0, self.bbox.x1, self.bbox.y1] {
            w.u16(v)?;
        }
        w.f32(self.score)?;
        w.u32(self.area)?;
        w.u32(self.data_len)?;
        w.u32(self.data_crc)?;
        w.u16(self.chunk_count)?;
        debug_assert_eq!(w.at, MASK_HEADER_LEN);
        Ok(w.at)
    }
}

/// Header of MaskData (0x11), a continuation frame; encoded data follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskDataHeader {
    pub frame_id: u32,
    pub object: u8,
    /// 1 .. chunk_count-1, in order.
    pub chunk_index: u16,
    /// Byte offset of this chunk's data in the encoded mask.
    pub offset: u32,
}

pub const MASK_DATA_HEADER_LEN: usize = 11;

impl MaskDataHeader {
    pub fn parse(p: &[u8]) -> Result<(Self, &[u8]), ParseError> {
        let mut r = Rd::new(p);
        let h = MaskDataHeader {
            frame_id: r.u32()?,
            object: r.u8()?,
            chunk_index: r.u16()?,
            offset: r.u32()?,
        };
        if h.chunk_index == 0 {
            return Err(ParseError::Invalid("chunk index"));
        }
        Ok((h, r.rest()))
    }

    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        let mut w = Wr::new(out);
        w.u32(self.frame_id)?;
        w.u8(self.object)?;
        w.u16(self.chunk_index)?;
        w.u32(self.offset)?;
        Ok(w.at)
    }
}

/// One stage's latency in Status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageLatency {
    pub name: String<16>,
    pub micros: u32,
}

/// Status (0x02): device health, sent about once a second.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Frames taken from the source since the session started.
    pub frames_in: u32,
    pub masks_sent: u32,
    /// Masks dropped because the link was slower than the source (newest-wins queue) or down.
    pub queue_drops: u32,
    pub errors: u32,
    pub reconnects: u32,
    /// Frames per second over the last interval, times 100.
    pub fps_centi: u16,
    /// Code of the most recent error (see [`ErrorCode`]), 0 if none.
    pub last_error: u16,
    /// Latency of each stage for the most recent frame.
    pub stages: Vec<StageLatency, 12>,
}

impl Status {
    pub fn parse(p: &[u8]) -> Result<Self, ParseError> {
        let mut r = Rd::new(p);
        let mut s = Status {
            frames_in: r.u32()?,
            masks_sent: r.u32()?,
            queue_drops: r.u32()?,
            errors: r.u32()?,
            reconnects: r.u32()?,
            fps_centi: r.u16()?,
            last_error: r.u16()?,
            stages: Vec::new(),
        };
        let n = r.u8()? as usize;
        for _ in 0..n {
            let len = r.u8()? as usize;
            let name = r.str(len, "stage name")?;
            let micros = r.u32()?;
            s.stages
                .push(StageLatency { name, micros })
                .map_err(|_| ParseError::TooLong("stage list"))?;
        }
        Ok(s)
    }

    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        let mut w = Wr::new(out);
        for v in [
            self.frames_in,
            self.masks_sent,
            self.queue_drops,
            self.errors,
            self.reconnects,
        ] {
            w.u32(v)?;
        }
        w.u16(self.fps_centi)?;
        w.u16(self.last_error)?;
        w.u8(self.stages.len() as u8)?;
        for s in &self.stages {
            w.u8(s.name.len() as u8)?;
            w.bytes(s.name.as_bytes())?;
            w.u32(s.micros)?;
        }
        Ok(w.at)
    }
}

/// Which pipeline a Prompt asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Pipeline {
    /// Box and/or point prompts straight into SAM.
    Interactive = 0,
    /// Text -> CLIP saliency -> box/points -> SAM.
    MedClipSam = 1,
    /// SAM everything-mode -> CLIP crop retrieval -> SAM re-prompt.
    Salip = 2,
}

impl Pipeline {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Pipeline::Interactive,
            1 => Pipeline::MedClipSam,
            2 => Pipeline::Salip,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Pipeline::Interactive => "interactive",
            Pipeline::MedClipSam => "medclip-sam",
            Pipeline::Salip => "salip",
        }
    }
}

/// A click: pixel coordinates and whether it marks foreground.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub x: u16,
    pub y: u16,
    pub foreground: bool,
}

pub mod prompt_flags {
    /// The box field is meaningful.
    pub const HAS_BOX: u8 = 1 << 0;
    /// Stop segmenting: the device drops its current prompt (other fields ignored).
    pub const CLEAR: u8 = 1 << 1;
}

/// Prompt (0x20), host -> device: what to segment in the following frames, until replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptMsg {
    /// Nonzero; echoed in Ack/Error and in every Mask it produces.
    pub prompt_id: u16,
    pub pipeline: Pipeline,
    pub flags: u8,
    pub bbox: Rect,
    pub points: Vec<Point, 16>,
    pub text: String<512>,
}

impl PromptMsg {
    pub fn parse(p: &[u8]) -> Result<Self, ParseError> {
        let mut r = Rd::new(p);
        let prompt_id = r.u16()?;
        if prompt_id == 0 {
            return Err(ParseError::Invalid("prompt id 0"));
        }
        let pipeline = Pipeline::from_u8(r.u8()?).ok_or(ParseError::Invalid("pipeline"))?;
        let flags = r.u8()?;
        let bbox = Rect {
            x0: r.u16()?,
            y0: r.u16()?,
            x1: r.u16()?,
            y1: r.u16()?,
        };
        let n = r.u8()? as usize;
        if n > 16 {
            return Err(ParseError::TooLong("point list"));
        }
        let mut points = Vec::new();
        for _ in 0..n {
            let (x, y) = (r.u16()?, r.u16()?);
            let label = r.u8()?;
            if label > 1 {
                return Err(ParseError::Invalid("point label"));
            }
            let _ = points.push(Point {
                x,
                y,
                foreground: label == 1,
            });
        }
        let len = r.u16()? as usize;
        let text = r.str(len, "prompt text")?;
        Ok(PromptMsg {
            prompt_id,
            pipeline,
            flags,
            bbox,
            points,
            text,
        })
    }

    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        let mut w = Wr::new(out);
        w.u16(self.prompt_id)?;
        w.u8(self.pipeline as u8)?;
        w.u8(self.flags)?;
        for v in [self.bbox.x0, self.bbox.y0, self.bbox.x1, self.bbox.y1] {
            w.u16(v)?;
        }
        w.u8(self.points.len() as u8)?;
        for p in &self.points {
            w.u16(p.x)?;
            w.u16(p.y)?;
            w.u8(p.foreground as u8)?;
        }
        w.u16(self.text.len() as u16)?;
        w.bytes(self.text.as_bytes())?;
        Ok(w.at)
    }

    pub fn has_box(&self) -> bool {
        self.flags & prompt_flags::HAS_BOX != 0
    }
}

/// Ack (0x30): a Prompt (or Hello) was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Sequence number of the acknowledged frame.
    pub seq: u16,
    pub msg_type: u8,
    /// The prompt id for a Prompt, 0 otherwise.
    pub ref_id: u16,
}

impl Ack {
    pub fn parse(p: &[u8]) -> Result<Self, ParseError> {
        let mut r = Rd::new(p);
        Ok(Ack {
            seq: r.u16()?,
            msg_type: r.u8()?,
            ref_id: r.u16()?,
        })
    }
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        let mut w = Wr::new(out);
        w.u16(self.seq)?;
        w.u8(self.msg_type)?;
        w.u16(self.ref_id)?;
        Ok(w.at)
    }
}

/// Error codes carried by Error and Status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// No common protocol version (reply to a Hello).
    Version = 1,
    /// A well-formed message this side cannot parse (bad field).
    Malformed = 2,
    /// A message type this side does not handle.
    UnsupportedMessage = 3,
    /// A Prompt naming a pipeline the device does not run.
    UnsupportedPipeline = 4,
    /// A Prompt that does not fit the image (box outside, no box and no points...).
    BadPrompt = 5,
    /// The source failed (unreadable frame).
    Source = 6,
    /// Inference failed (model error, NaN output).
    Model = 7,
}

impl ErrorCode {
    pub fn name(code: u16) -> &'static str {
        match code {
            0 => "none",
            1 => "version",
            2 => "malformed",
            3 => "unsupported_message",
            4 => "unsupported_pipeline",
            5 => "bad_prompt",
            6 => "source",
            7 => "model",
            _ => "unknown",
        }
    }
}

/// Error (0x31): something the peer sent or asked for failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    pub code: u16,
    /// Sequence number and type of the frame that caused it (0, 0 if none).
    pub ref_seq: u16,
    pub ref_type: u8,
    pub message: String<200>,
}

impl ErrorMsg {
    pub fn new(code: ErrorCode, ref_seq: u16, ref_type: u8, message: &str) -> Self {
        let m = bounded_str(message);
        ErrorMsg {
            code: code as u16,
            ref_seq,
            ref_type,
            message: m,
        }
    }
    pub fn parse(p: &[u8]) -> Result<Self, ParseError> {
        let mut r = Rd::new(p);
        let code = r.u16()?;
        let ref_seq = r.u16()?;
        let ref_type = r.u8()?;
        let n = r.u8()? as usize;
        Ok(ErrorMsg {
            code,
            ref_seq,
            ref_type,
            message: r.str(n, "error message")?,
        })
    }
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        let mut w = Wr::new(out);
        w.u16(self.code)?;
        w.u16(self.ref_seq)?;
        w.u8(self.ref_type)?;
        w.u8(self.message.len() as u8)?;
        w.bytes(self.message.as_bytes())?;
        Ok(w.at)
    }
}

/// One caliper on the wire: ends in pixels of the source frame, length in the message's unit.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct WireCaliper {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    pub length: f32,
}

/// Measure (0x12, version 1 revision 1.1): the biometry of one mask, sent right after the
/// mask's last frame. Receivers that predate it drop it as an unknown type and lose nothing.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct MeasureMsg {
    pub frame_id: u32,
    pub object: u8,
    /// 1 head (HC), 2 lesion (calipers and area).
    pub target: u8,
    /// 0 pixels, 1 millimetres.
    pub unit: u8,
    /// Bit 0: the ellipse is set; bit 1: HC measured on the skull's outer border.
    pub flags: u8,
    pub area: f32,
    pub perimeter: f32,
    /// NaN when there is no HC.
    pub hc: f32,
    /// Centre x, y (pixels), semi-major, semi-minor (unit), angle (degrees from the x axis).
    pub ellipse: [f32; 5],
    pub long_axis: WireCaliper,
    pub short_axis: WireCaliper,
    /// Pixel spacing x, y in mm; NaN when unknown.
    pub spacing_mm: [f32; 2],
}

/// Measure flag bits.
pub mod measure_flags {
    pub const ELLIPSE: u8 = 1 << 0;
    pub const HC_ON_SKULL: u8 = 1 << 1;
}

impl MeasureMsg {
    /// Fixed payload size of revision 1.1; later revisions may append fields.
    pub const LEN: usize = 88;

    pub fn parse(p: &[u8]) -> Result<Self, ParseError> {
        let mut r = Rd::new(p);
        let mut m = MeasureMsg {
            frame_id: r.u32()?,
            object: r.u8()?,
            target: r.u8()?,
            unit: r.u8()?,
            flags: r.u8()?,
            area: r.f32()?,
            perimeter: r.f32()?,
            hc: r.f32()?,
            ..Default::default()
        };
        for v in &mut m.ellipse {
            *v = r.f32()?;
        }
        for c in [&mut m.long_axis, &mut m.short_axis] {
            *c = WireCaliper {
                x0: r.f32()?,
                y0: r.f32()?,
                x1: r.f32()?,
                y1: r.f32()?,
                length: r.f32()?,
            };
        }
        for v in &mut m.spacing_mm {
            *v = r.f32()?;
        }
        if !(1..=2).contains(&m.target) {
            return Err(ParseError::Invalid("measure target"));
        }
        if m.unit > 1 {
            return Err(ParseError::Invalid("measure unit"));
        }
        Ok(m)
    }

    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        let mut w = Wr::new(out);
        w.u32(self.frame_id)?;
        w.u8(self.object)?;
        w.u8(self.target)?;
        w.u8(self.unit)?;
        w.u8(self.flags)?;
        w.f32(self.area)?;
        w.f32(self.perimeter)?;
        w.f32(self.hc)?;
        for v in self.ellipse {
            w.f32(v)?;
        }
        for c in [self.long_axis, self.short_axis] {
            for v in [c.x0, c.y0, c.x1, c.y1, c.length] {
                w.f32(v)?;
            }
        }
        for v in self.spacing_mm {
            w.f32(v)?;
        }
        Ok(w.at)
    }
}

/// Any message, parsed from a frame's type and payload. Mask data borrows the frame.
#[derive(Clone, Debug, PartialEq)]
// Messages are plain values (heapless strings inline) so parsing never allocates; boxing the
// large variants would defeat that.
#[allow(clippy::large_enum_variant)]
pub enum Message<'a> {
    Hello(Hello),
    Status(Status),
    Mask(MaskHeader, &'a [u8]),
    MaskData(MaskDataHeader, &'a [u8]),
    Measure(MeasureMsg),
    Prompt(PromptMsg),
    Ack(Ack),
    Error(ErrorMsg),
}

impl<'a> Message<'a> {
    pub fn parse(msg_type: u8, payload: &'a [u8]) -> Result<Self, ParseError> {
        Ok(
            match MsgType::from_u8(msg_type).ok_or(ParseError::UnknownType(msg_type))? {
                MsgType::Hello => Message::Hello(Hello::parse(payload)?),
                MsgType::Status => Message::Status(Status::parse(payload)?),
                MsgType::Mask => {
                    let (h, d) = MaskHeader::parse(payload)?;
                    Message::Mask(h, d)
                }
                MsgType::MaskData => {
                    let (h, d) = MaskDataHeader::parse(payload)?;
                    Message::MaskData(h, d)
                }
                MsgType::Measure => Message::Measure(MeasureMsg::parse(payload)?),
                MsgType::Prompt => Message::Prompt(PromptMsg::parse(payload)?),
                MsgType::Ack => Message::Ack(Ack::parse(payload)?),
                MsgType::Error => Message::Error(ErrorMsg::parse(payload)?),
            },
        )
    }

    pub fn msg_type(&self) -> MsgType {
        match self {
            Message::Hello(_) => MsgType::Hello,
            Message::Status(_) => MsgType::Status,
            Message::Mask(..) => MsgType::Mask,
            Message::MaskData(..) => MsgType::MaskData,
            Message::Measure(_) => MsgType::Measure,
            Message::Prompt(_) => MsgType::Prompt,
            Message::Ack(_) => MsgType::Ack,
            Message::Error(_) => MsgType::Error,
        }
    }

    /// Emits the payload (header and data for mask messages).
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        let with_data = |n: usize, d: &[u8], out: &mut [u8]| -> Result<usize, EmitError> {
            out.get_mut(n..n + d.len())
                .ok_or(EmitError)?
                .copy_from_slice(d);
            Ok(n + d.len())
        };
        match self {
            Message::Hello(m) => m.emit(out),
            Message::Status(m) => m.emit(out),
            Message::Mask(h, d) => {
                let n = h.emit(out)?;
                with_data(n, d, out)
            }
            Message::MaskData(h, d) => {
                let n = h.emit(out)?;
                with_data(n, d, out)
            }
            Message::Measure(m) => m.emit(out),
            Message::Prompt(m) => m.emit(out),
            Message::Ack(m) => m.emit(out),
            Message::Error(m) => m.emit(out),
        }
    }
}
