//! DICOM Part 10 structure: preamble, file meta group, data elements in the three uncompressed
//! encodings, sequences and encapsulated pixel data. Values stay in the file buffer; elements
//! are byte ranges into it, so parsing allocates only the (small) element lists.

use anyhow::{Result, bail};
use std::ops::Range;

/// How the data set after the meta group is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

pub const EXPLICIT_LE: Encoding = Encoding {
    explicit_vr: true,
    big_endian: false,
};

pub const TAG_PIXEL_DATA: u32 = 0x7FE0_0010;
const TAG_ITEM: u32 = 0xFFFE_E000;
const TAG_ITEM_END: u32 = 0xFFFE_E00D;
const TAG_SEQ_END: u32 = 0xFFFE_E0DD;
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Nested sequences deeper than this are refused (a crafted file must not exhaust the stack).
const MAX_DEPTH: usize = 16;

#[derive(Clone, Debug)]
pub enum Value {
    /// A value's bytes in the file.
    Bytes(Range<usize>),
    /// A sequence: one element list per item.
    Items(Vec<Vec<Element>>),
    /// Encapsulated pixel data: the basic offset table and the fragments, in order.
    Fragments {
        offsets: Range<usize>,
        fragments: Vec<Range<usize>>,
    },
}

#[derive(Clone, Debug)]
pub struct Element {
    pub tag: u32,
    pub value: Value,
}

/// Reads integers in the data set's byte order, refusing to run past the end.
pub struct Cursor<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
    pub big_endian: bool,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            bail!(
                "truncated: needs {n} bytes at offset {}, file has {}",
                self.pos,
                self.buf.len()
            );
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16> {
        let b: [u8; 2] = self.take(2)?.try_into().unwrap();
        Ok(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }
    fn u32(&mut self) -> Result<u32> {
        let b: [u8; 4] = self.take(4)?.try_into().unwrap();
        Ok(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
    fn tag(&mut self) -> Result<u32> {
        let g = self.u16()? as u32;
        let e = self.u16()? as u32;
        Ok(g << 16 | e)
    }
}

/// VRs whose explicit form has two reserved bytes and a 32-bit length.
fn long_vr(vr: &[u8; 2]) -> bool {
    matches!(
        vr,
        b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"UC" | b"UN" | b"UR" | b"UT"
    )
}

/// Tags whose value is a sequence; needed to read implicit-VR files, which do not say.
fn implicit_is_sequence(tag: u32) -> bool {
    tag == 0x0018_6011 // Sequence of Ultrasound Regions
}

/// Parses elements from `c.pos` until `end` (or, if `None`, until an item delimiter, which is
/// consumed).
pub fn parse_elements(
    c: &mut Cursor<'_>,
    end: Option<usize>,
    enc: Encoding,
    depth: usize,
) -> Result<Vec<Element>> {
    if depth > MAX_DEPTH {
        bail!("sequences nested deeper than {MAX_DEPTH}");
    }
    let mut out = Vec::new();
    loop {
        match end {
            Some(e) if c.pos >= e => return Ok(out),
            None if c.pos >= c.buf.len() => bail!("truncated: item without its delimiter"),
            _ => {}
        }
        let start = c.pos;
        let tag = c.tag()?;
        if tag == TAG_ITEM_END {
            c.u32()?;
            if end.is_none() {
                return Ok(out);
            }
            bail!("item delimiter outside an item at offset {start}");
        }
        let (vr, len) = if enc.explicit_vr {
            let vr: [u8; 2] = c.take(2)?.try_into().unwrap();
            if long_vr(&vr) {
                c.take(2)?;
                (vr, c.u32()?)
            } else {
                (vr, c.u16()? as u32)
            }
        } else {
            (*b"??", c.u32()?)
        };
        let value = if tag == TAG_PIXEL_DATA && len == UNDEFINED {
            encapsulated(c)?
        } else if len == UNDEFINED
            || &vr == b"SQ"
            || (!enc.explicit_vr && implicit_is_sequence(tag))
        {
            Value::Items(sequence(c, len, enc, depth)?)
        } else {
            let r = c.pos..c.pos + len as usize;
            c.take(len as usize)?;
            Value::Bytes(r)
        };
        out.push(Element { tag, value });
    }
}

fn sequence(
    c: &mut Cursor<'_>,
    len: u32,
    enc: Encoding,
    depth: usize,
) -> Result<Vec<Vec<Element>>> {
    let end = if len == UNDEFINED {
        None
    } else {
        Some(c.pos + len as usize)
    };
    if let Some(e) = end
        && e > c.buf.len()
    {
        bail!(
            "truncated: sequence of {len} bytes at offset {} runs past the end",
            c.pos
        );
    }
    let mut items = Vec::new();
    loop {
        if end.is_some_and(|e| c.pos >= e) {
            return Ok(items);
        }
        let at = c.pos;
        let tag = c.tag()?;
        let ilen = c.u32()?;
        match tag {
            TAG_SEQ_END => return Ok(items),
            TAG_ITEM => {
                let iend = if ilen == UNDEFINED {
                    None
                } else {
                    Some(c.pos + ilen as usize)
                };
                if iend.is_some_and(|e| e > c.buf.len()) {
                    bail!("truncated: item at offset {at} runs past the end");
                }
                items.push(parse_elements(c, iend, enc, depth + 1)?);
            }
            other => bail!(
                "expected a sequence item at offset {at}, found tag {:04X},{:04X}",
                other >> 16,
                other & 0xFFFF
            ),
        }
    }
}

/// Encapsulated pixel data (always little endian): offset table item, fragment items, delimiter.
fn encapsulated(c: &mut Cursor<'_>) -> Result<Value> {
    let mut offsets = 0..0;
    let mut fragments = Vec::new();
    let mut first = true;
    loop {
        let at = c.pos;
        let tag = c.tag()?;
        let len = c.u32()?;
        match tag {
            TAG_SEQ_END => break,
            TAG_ITEM if len != UNDEFINED => {
                let r = c.pos..c.pos + len as usize;
                c.take(len as usize)?;
                if first {
                    offsets = r;
                } else {
                    fragments.push(r);
                }
                first = false;
            }
            _ => bail!("malformed encapsulated pixel data at offset {at}"),
        }
    }
    Ok(Value::Fragments { offsets, fragments })
}

/// The file meta group: checks the preamble magic, returns the transfer syntax UID and where
/// the data set starts.
pub fn meta(buf: &[u8]) -> Result<(String, usize)> {
    if buf.len() < 132 || &buf[128..132] != b"DICM" {
        bail!("not a DICOM file: no 'DICM' magic at byte 128");
    }
    let mut c = Cursor {
        buf,
        pos: 132,
        big_endian: false,
    };
    let mut ts = None;
    while c.pos + 8 <= buf.len() {
        let save = c.pos;
        let group = u16::from_le_bytes([buf[c.pos], buf[c.pos + 1]]);
        if group != 0x0002 {
            c.pos = save;
            break;
        }
        let mut one = parse_one(&mut c)?;
        if one.tag == 0x0002_0010
            && let Value::Bytes(r) = std::mem::replace(&mut one.value, Value::Bytes(0..0))
        {
            ts = Some(text(buf, r));
        }
    }
    let ts =
        ts.ok_or_else(|| anyhow::anyhow!("no transfer syntax (0002,0010) in the file meta group"))?;
    Ok((ts, c.pos))
}

fn parse_one(c: &mut Cursor<'_>) -> Result<Element> {
    let tag = c.tag()?;
    let vr: [u8; 2] = c.take(2)?.try_into().unwrap();
    let len = if long_vr(&vr) {
        c.take(2)?;
        c.u32()?
    } else {
        c.u16()? as u32
    };
    if len == UNDEFINED {
        bail!("undefined length in the file meta group");
    }
    let r = c.pos..c.pos + len as usize;
    c.take(len as usize)?;
    Ok(Element {
        tag,
        value: Value::Bytes(r),
    })
}

/// A string value without its padding (trailing spaces or NUL).
pub fn text(buf: &[u8], r: Range<usize>) -> String {
    String::from_utf8_lossy(&buf[r])
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}
