//! The sending side: sequence numbering, single-frame messages and masks split into frames.
//! Everything is written through a caller's callback from one stack buffer: no allocation.

use super::crc::Crc32;
use super::frame::{self, MAX_PAYLOAD, MAX_WIRE, VERSION};
use super::maskcodec::{self, MaskEncoder};
use super::message::{
    MASK_DATA_HEADER_LEN, MASK_HEADER_LEN, MAX_MASK_PIXELS, MaskDataHeader, MaskHeader, Message,
    Rect,
};

/// Encoded mask bytes in the first frame and in each continuation frame.
pub const FIRST_CHUNK_DATA: usize = MAX_PAYLOAD - MASK_HEADER_LEN;
pub const NEXT_CHUNK_DATA: usize = MAX_PAYLOAD - MASK_DATA_HEADER_LEN;

/// Frames a mask of `data_len` encoded bytes needs.
pub const fn chunk_count(data_len: usize) -> usize {
    if data_len <= FIRST_CHUNK_DATA {
        1
    } else {
        1 + (data_len - FIRST_CHUNK_DATA).div_ceil(NEXT_CHUNK_DATA)
    }
}

/// What the caller knows about a mask besides its pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskMeta {
    pub frame_id: u32,
    pub timestamp_us: u64,
    pub prompt_id: u16,
    pub object: u8,
    pub score: f32,
}

/// Why a mask or message could not be sent.
#[derive(Debug)]
pub enum SendError<E> {
    /// The link failed; `E` is its error.
    Link(E),
    /// The mask is larger than the protocol carries (or its sides exceed u16).
    MaskTooLarge { width: u32, height: u32 },
    /// The pixel buffer does not match `width * height`.
    MaskShape,
    /// A message that does not fit in one frame.
    MessageTooLarge,
}

impl<E: core::fmt::Display> core::fmt::Display for SendError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SendError::Link(e) => write!(f, "link: {e}"),
            SendError::MaskTooLarge { width, height } => write!(
                f,
                "mask {width}x{height} exceeds the protocol limit ({MAX_MASK_PIXELS} pixels, sides <= 65535)"
            ),
            SendError::MaskShape => write!(f, "mask buffer does not match its width x height"),
            SendError::MessageTooLarge => write!(f, "message larger than one frame"),
        }
    }
}

/// A summary of one sent mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskSent {
    pub header: MaskHeader,
    /// Bytes on the wire, all frames and delimiters included.
    pub wire_bytes: usize,
}

/// Numbers outgoing frames and turns messages and masks into wire bytes.
#[derive(Clone, Debug, Default)]
pub struct Sender {
    seq: u16,
}

impl Sender {
    pub fn new() -> Self {
        Sender { seq: 0 }
    }

    /// The sequence number the next frame will carry.
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    fn frame<E>(
        &mut self,
        msg_type: u8,
        payload: &[u8],
        write: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, SendError<E>> {
        let mut wire = [0u8; MAX_WIRE];
        let n = frame::emit(VERSION, msg_type, self.seq, payload, &mut wire)
            .ok_or(SendError::MessageTooLarge)?;
        self.seq = self.seq.wrapping_add(1);
        write(&wire[..n]).map_err(SendError::Link)?;
        Ok(n)
    }

    /// Sends one single-frame message (not Mask/MaskData: use [`Sender::mask`]).
    pub fn message<E>(
        &mut self,
        msg: &Message<'_>,
        mut write: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, SendError<E>> {
        let mut payload = [0u8; MAX_PAYLOAD];
        let n = msg
            .emit(&mut payload)
            .map_err(|_| SendError::MessageTooLarge)?;
        self.frame(msg.msg_type() as u8, &payload[..n], &mut write)
    }

    /// Sends a one-byte-per-pixel mask (nonzero = foreground) in the smaller encoding, split
    /// into as many frames as it needs.
    pub fn mask<E>(
        &mut self,
        meta: MaskMeta,
        width: u32,
        height: u32,
        pixels: &[u8],
        mut write: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<MaskSent, SendError<E>> {
        let header = describe(meta, width, height, pixels)?;
        let mut payload = [0u8; MAX_PAYLOAD];
        let mut enc = MaskEncoder::new(pixels, header.encoding);
        let h = header
            .emit(&mut payload)
            .map_err(|_| SendError::MessageTooLarge)?;
        let n = enc.fill(&mut payload[h..]);
        let mut wire_bytes = self.frame(0x10, &payload[..h + n], &mut write)?;
        let mut offset = n;
        let mut chunk_index = 1u16;
        while offset < header.data_len as usize {
            let dh = MaskDataHeader {
                frame_id: meta.frame_id,
                object: meta.object,
                chunk_index,
                offset: offset as u32,
            };
            let h = dh
                .emit(&mut payload)
                .map_err(|_| SendError::MessageTooLarge)?;
            let n = enc.fill(&mut payload[h..]);
            wire_bytes += self.frame(0x11, &payload[..h + n], &mut write)?;
            offset += n;
            chunk_index += 1;
        }
        debug_assert_eq!(chunk_index, header.chunk_count);
        Ok(MaskSent { header, wire_bytes })
    }
}

/// Builds a mask's header: bbox, area, encoding, length and data CRC (one encode pass into a
/// stack buffer: the CRC must be in the first frame).
pub fn describe<E>(
    meta: MaskMeta,
    width: u32,
    height: u32,
    pixels: &[u8],
) -> Result<MaskHeader, SendError<E>> {
    let n = width as usize * height as usize;
    if width > u16::MAX as u32 || height > u16::MAX as u32 || n > MAX_MASK_PIXELS {
        return Err(SendError::MaskTooLarge { width, height });
    }
    if pixels.len() != n {
        return Err(SendError::MaskShape);
    }
    let (encoding, data_len) = maskcodec::choose(pixels);
    let mut crc = Crc32::new();
    let mut enc = MaskEncoder::new(pixels, encoding);
    let mut buf = [0u8; 512];
    while !enc.is_done() {
        let k = enc.fill(&mut buf);
        crc.update(&buf[..k]);
    }
    let (bbox, area) = bbox_area(width as usize, pixels);
    Ok(MaskHeader {
        frame_id: meta.frame_id,
        timestamp_us: meta.timestamp_us,
        prompt_id: meta.prompt_id,
        object: meta.object,
        encoding,
        width: width as u16,
        height: height as u16,
        bbox,
        score: meta.score,
        area: area as u32,
        data_len: data_len as u32,
        data_crc: crc.finish(),
        chunk_count: chunk_count(data_len) as u16,
    })
}

/// Tight box (exclusive end) and foreground count.
fn bbox_area(width: usize, pixels: &[u8]) -> (Rect, usize) {
    let (mut x0, mut y0, mut x1, mut y1, mut area) = (usize::MAX, usize::MAX, 0, 0, 0);
    if width == 0 {
        return (Rect::default(), 0);
    }
    for (y, row) in pixels.chunks_exact(width).enumerate() {
        let Some(first) = row.iter().position(|&p| p != 0) else {
            continue;
        };
        let last = row.iter().rposition(|&p| p != 0).unwrap_or(first);
        area += row[first..=last].iter().filter(|&&p| p != 0).count();
        x0 = x0.min(first);
        x1 = x1.max(last + 1);
        y0 = y0.min(y);
        y1 = y + 1;
    }
    if area == 0 {
        return (Rect::default(), 0);
    }
    (
        Rect {
            x0: x0 as u16,
            y0: y0 as u16,
            x1: x1 as u16,
            y1: y1 as u16,
        },
        area,
    )
}
