//! .npy segments: `(N, 8, 16)` or `(N, 128)` integer arrays of tokens 0..1023.
//!
//! A segment keeps its original header bytes, so writing it back reproduces the input file
//! exactly. The header is parsed with npyz; the data bytes are decoded here because the
//! original dtype and byte order must be preserved.

use anyhow::{bail, ensure, Context, Result};
use npyz::{DType, Endianness, NpyHeader, Order, TypeChar};
use std::path::Path;

/// Tokens in one 8x16 frame.
pub const TOKENS_PER_FRAME: usize = 128;
/// Number of distinct token values.
pub const VOCAB: usize = 1024;

/// How the tokens are laid out as bytes: element width and byte order, from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub bytes: usize,
    pub signed: bool,
    pub big_endian: bool,
}

/// One segment: its file name, original npy header and tokens in raster order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    /// The npy header exactly as in the file (magic, version, length, dict, padding).
    pub header: Vec<u8>,
    pub tokens: Vec<u16>,
}

impl Segment {
    pub fn frames(&self) -> usize {
        self.tokens.len() / TOKENS_PER_FRAME
    }

    /// The .npy file content: original header followed by the tokens in the original dtype.
    pub fn to_npy_bytes(&self) -> Result<Vec<u8>> {
        let (layout, frames) = parse_header(&self.header)?;
        if frames != self.frames() {
            bail!("header says {frames} frames but {} were decoded", self.frames());
        }
        let mut out = Vec::with_capacity(self.header.len() + self.tokens.len() * layout.bytes);
        out.extend_from_slice(&self.header);
        for &t in &self.tokens {
            encode_value(t, layout, &mut out);
        }
        Ok(out)
    }
}

/// An npy version 1.0 header as numpy writes it: `descr` such as `<i2`, padded with spaces
/// so the data starts at a multiple of 64 bytes.
pub fn npy_header(descr: &str, fortran_order: bool, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let order = if fortran_order { "True" } else { "False" };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}").into_bytes();
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(b' ');
    }
    dict.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict);
    out
}

impl Segment {
    /// A segment as the dataset stores it: int16, shape (frames, 8, 16).
    pub fn int16(name: &str, tokens: Vec<u16>) -> Segment {
        assert!(tokens.len().is_multiple_of(TOKENS_PER_FRAME), "whole frames only");
        let header = npy_header("<i2", false, &[tokens.len() / TOKENS_PER_FRAME, 8, 16]);
        Segment { name: name.to_string(), header, tokens }
    }
}

/// Read one segment file; the segment's name is the file's name, unchanged.
pub fn read_segment_file(path: &Path) -> Result<Segment> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: file name is not valid UTF-8", path.display()))?
        .to_string();
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_segment(name, &bytes).with_context(|| format!("{}: not a valid token segment", path.display()))
}

/// Parse the bytes of an npy file into a segment.
pub fn parse_segment(name: String, bytes: &[u8]) -> Result<Segment> {
    let header_len = header_len(bytes)?;
    let header = bytes[..header_len].to_vec();
    let (layout, frames) = parse_header(&header)?;
    let data = &bytes[header_len..];
    // Checked: a forged shape must not wrap to a small byte count and pass for an empty file.
    let expected = frames
        .checked_mul(TOKENS_PER_FRAME * layout.bytes)
        .with_context(|| format!("header's {frames} frames are more bytes than any file holds"))?;
    if data.len() < expected {
        bail!("truncated: header promises {expected} data bytes, file has {}", data.len());
    }
    if data.len() > expected {
        bail!("{} unexpected bytes after the array data", data.len() - expected);
    }
    let tokens = data
        .chunks_exact(layout.bytes)
        .enumerate()
        .map(|(i, raw)| {
            decode_value(raw, layout).with_context(|| format!("token {i} (frame {})", i / TOKENS_PER_FRAME))
        })
        .collect::<Result<Vec<u16>>>()?;
    Ok(Segment { name, header, tokens })
}

/// Length of the header (everything before the data), found by letting npyz parse it.
fn header_len(bytes: &[u8]) -> Result<usize> {
    let mut rest = bytes;
    read_npy_header(&mut rest)?;
    Ok(bytes.len() - rest.len())
}

/// npyz's header parse, once the length the preamble declares is known to be there: npyz
/// allocates that length up front, so a forged one (up to 4 GB in npy version 2 and 3) would
/// cost that much memory before failing.
fn read_npy_header(bytes: &mut &[u8]) -> Result<NpyHeader> {
    let declared = match bytes.get(..12) {
        Some([0x93, b'N', b'U', b'M', b'P', b'Y', 1, _, a, b, ..]) => 10 + usize::from(u16::from_le_bytes([*a, *b])),
        Some([0x93, b'N', b'U', b'M', b'P', b'Y', 2 | 3, _, a, b, c, d]) => {
            12 + u32::from_le_bytes([*a, *b, *c, *d]) as usize
        }
        _ => 0, // npyz names the problem
    };
    ensure!(
        declared <= bytes.len(),
        "bad npy header: it declares a header of {declared} bytes, but only {} are there",
        bytes.len()
    );
    NpyHeader::from_reader(bytes).context("bad npy header")
}

/// Check a header describes a supported token array; return its layout and frame count.
pub fn parse_header(header: &[u8]) -> Result<(Layout, usize)> {
    let mut rest = header;
    let h = read_npy_header(&mut rest)?;
    if !rest.is_empty() {
        bail!("npy header has {} bytes past its declared length", rest.len());
    }
    if h.order() == Order::Fortran {
        bail!("Fortran-order arrays are not supported (save with C order)");
    }
    let layout = match h.dtype() {
        DType::Plain(ts) => layout_of(&ts)?,
        other => bail!("unsupported dtype {}: expected int16, uint16, int32 or int64", other.descr()),
    };
    let shape = h.shape();
    let frames = match shape {
        [n, 8, 16] | [n, 128] => usize::try_from(*n).context("frame count too large")?,
        _ => bail!("unsupported shape {shape:?}: expected (N, 8, 16) or (N, 128)"),
    };
    Ok((layout, frames))
}

fn layout_of(ts: &npyz::TypeStr) -> Result<Layout> {
    let (signed, bytes) = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Int, 2) => (true, 2),
        (TypeChar::Uint, 2) => (false, 2),
        (TypeChar::Int, 4) => (true, 4),
        (TypeChar::Int, 8) => (true, 8),
        _ => bail!("unsupported dtype {ts}: expected int16, uint16, int32 or int64"),
    };
    Ok(Layout { bytes, signed, big_endian: ts.endianness() == Endianness::Big })
}

fn decode_value(raw: &[u8], layout: Layout) -> Result<u16> {
    let mut buf = [0u8; 8];
    if layout.big_endian {
        buf[..raw.len()].copy_from_slice(raw);
        buf[..raw.len()].reverse();
    } else {
        buf[..raw.len()].copy_from_slice(raw);
    }
    let unsigned = u64::from_le_bytes(buf);
    let value: i128 = if layout.signed {
        // Sign-extend from the element width.
        let shift = 64 - 8 * raw.len() as u32;
        (((unsigned << shift) as i64) >> shift) as i128
    } else {
        unsigned as i128
    };
    if !(0..VOCAB as i128).contains(&value) {
        bail!("value {value} out of range 0..{}", VOCAB - 1);
    }
    Ok(value as u16)
}

fn encode_value(token: u16, layout: Layout, out: &mut Vec<u8>) {
    let le = u64::from(token).to_le_bytes();
    let raw = &le[..layout.bytes];
    if layout.big_endian {
        out.extend(raw.iter().rev());
    } else {
        out.extend_from_slice(raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let mut out = npy_header(descr, fortran, shape);
        out.extend_from_slice(data);
        out
    }

    fn err(bytes: &[u8]) -> String {
        format!("{:#}", parse_segment("x".into(), bytes).unwrap_err())
    }

    #[test]
    fn every_dtype_round_trips_byte_for_byte() {
        for descr in ["<i2", ">i2", "<u2", ">u2", "<i4", ">i4", "<i8", ">i8"] {
            let width: usize = descr[2..].parse().unwrap();
            let tokens: Vec<u16> = (0..256).map(|i| (i * 7 % 1024) as u16).collect();
            let layout = layout_of(&descr.parse().unwrap()).unwrap();
            let mut data = vec![];
            tokens.iter().for_each(|&t| encode_value(t, layout, &mut data));
            assert_eq!(data.len(), 256 * width);
            let file = npy(descr, false, &[2, 8, 16], &data);
            let seg = parse_segment("s".into(), &file).unwrap();
            assert_eq!(seg.tokens, tokens);
            assert_eq!(seg.to_npy_bytes().unwrap(), file, "{descr}");
        }
    }

    #[test]
    fn flat_shape_is_accepted() {
        let file = npy("<i2", false, &[1, 128], &[0u8; 256]);
        assert_eq!(parse_segment("s".into(), &file).unwrap().frames(), 1);
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let neg = (-1i16).to_le_bytes().repeat(128);
        assert!(err(&npy("<i2", false, &[1, 128], &neg)).contains("value -1 out of range"));
        let big = 1024i16.to_le_bytes().repeat(128);
        assert!(err(&npy("<i2", false, &[1, 128], &big)).contains("value 1024 out of range"));
        assert!(err(&npy("<i2", false, &[1, 8, 8], &[0; 128])).contains("unsupported shape"));
        assert!(err(&npy("<f4", false, &[1, 128], &[0; 512])).contains("unsupported dtype"));
        assert!(err(&npy("<u4", false, &[1, 128], &[0; 512])).contains("unsupported dtype"));
        assert!(err(&npy("<i2", true, &[1, 128], &[0; 256])).contains("Fortran"));
        assert!(err(&npy("<i2", false, &[2, 128], &[0; 300])).contains("truncated"));
        assert!(err(&npy("<i2", false, &[1, 128], &[0; 257])).contains("unexpected bytes"));
        assert!(err(b"\x93NUMPY\x01\x00\xff").contains("bad npy header"));
        assert!(err(b"hello").contains("bad npy header"));
        let mut forged = npy_header("<i2", false, &[1, 128]);
        forged[6..12].copy_from_slice(&[3, 0, 0x8a, 0xff, 0x84, 0xa4]);
        assert_eq!(err(&forged), "bad npy header: it declares a header of 2760179606 bytes, but only 128 are there");
        let wraps = npy_header("<i2", false, &[1 << 61, 8, 16]);
        assert!(
            err(&wraps).contains("2305843009213693952 frames are more bytes than any file holds"),
            "{}",
            err(&wraps)
        );
    }
}
