//! The archive container: an index (model id, distinct npy headers, one entry per segment)
//! followed by the segments' independent coded payloads. FORMAT.md is the specification.

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

pub const MAGIC: &[u8; 4] = b"CVQA";
pub const VERSION: u8 = 1;
/// Largest segment accepted, in frames (about 55 minutes at 20 fps). Bounds what a forged
/// archive can make the decoder do.
pub const MAX_FRAMES: usize = 1 << 16;
/// Longest segment name, in bytes (the usual file-system limit).
pub const MAX_NAME: usize = 255;
/// Longest npy header kept, in bytes.
pub const MAX_HEADER: usize = 1 << 16;

/// One coded segment, ready to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodedSegment {
    pub name: String,
    pub header: Vec<u8>,
    pub frames: usize,
    /// CRC-32 of the tokens as little-endian u16 values.
    pub checksum: u32,
    pub payload: Vec<u8>,
}

/// An entry of a parsed archive; `payload` is a range of the archive's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub header: usize,
    pub frames: usize,
    pub checksum: u32,
    pub payload: std::ops::Range<usize>,
}

/// A parsed archive borrowing its bytes.
pub struct Archive<'a> {
    pub model_id: [u8; 32],
    pub headers: Vec<&'a [u8]>,
    pub entries: Vec<Entry>,
    bytes: &'a [u8],
}

impl Archive<'_> {
    pub fn payload(&self, e: &Entry) -> &[u8] {
        &self.bytes[e.payload.clone()]
    }
}

/// Serialise an archive; identical npy headers are stored once.
pub fn write(model_id: &[u8; 32], segments: &[CodedSegment]) -> Vec<u8> {
    let mut header_ids: HashMap<&[u8], usize> = HashMap::new();
    let mut headers: Vec<&[u8]> = vec![];
    let refs: Vec<usize> = segments
        .iter()
        .map(|s| {
            *header_ids.entry(&s.header).or_insert_with(|| {
                headers.push(&s.header);
                headers.len() - 1
            })
        })
        .collect();
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    out.extend_from_slice(model_id);
    put_varint(&mut out, headers.len() as u64);
    for h in &headers {
        put_bytes(&mut out, h);
    }
    put_varint(&mut out, segments.len() as u64);
    for (s, &href) in segments.iter().zip(&refs) {
        put_bytes(&mut out, s.name.as_bytes());
        put_varint(&mut out, href as u64);
        put_varint(&mut out, s.frames as u64);
        put_varint(&mut out, s.payload.len() as u64);
        out.extend_from_slice(&s.checksum.to_le_bytes());
    }
    let index_crc = crc32fast::hash(&out);
    out.extend_from_slice(&index_crc.to_le_bytes());
    for s in segments {
        out.extend_from_slice(&s.payload);
    }
    out
}

/// Parse and validate an archive's index. Payloads are checked when decoded.
pub fn parse(bytes: &[u8]) -> Result<Archive<'_>> {
    let mut r = Reader { bytes, pos: 0 };
    ensure!(r.take(4).ok() == Some(&MAGIC[..]), "not a cvq archive (bad magic)");
    let version = r.take(1)?[0];
    ensure!(version == VERSION, "archive format version {version} is not supported (this cvq reads {VERSION})");
    let model_id: [u8; 32] = r.take(32)?.try_into().unwrap();
    let n_headers = r.count("header count")?;
    let headers = (0..n_headers)
        .map(|i| r.bytes(MAX_HEADER).with_context(|| format!("npy header {i}")))
        .collect::<Result<Vec<_>>>()?;
    let n_segments = r.count("segment count")?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut offset = 0usize;
    for i in 0..n_segments {
        let e = r.entry(offset, headers.len()).with_context(|| format!("index entry of segment {i}"))?;
        // Segments are restored by name: two of one name would overwrite each other.
        ensure!(names.insert(e.name.clone()), "index entry of segment {i}: name {:?} is used twice", e.name);
        offset = e.payload.end;
        entries.push(e);
    }
    let index_end = r.pos;
    let stored_crc = u32::from_le_bytes(r.take(4).context("index checksum")?.try_into().unwrap());
    ensure!(crc32fast::hash(&bytes[..index_end]) == stored_crc, "archive index is corrupt (checksum mismatch)");
    let base = r.pos;
    ensure!(
        bytes.len() - base == offset,
        "archive holds {} payload bytes but its index lists {offset}: truncated or extended",
        bytes.len() - base
    );
    for e in &mut entries {
        e.payload = e.payload.start + base..e.payload.end + base;
    }
    Ok(Archive { model_id, headers, entries, bytes })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let rest = &self.bytes[self.pos..];
        ensure!(n <= rest.len(), "archive ends early (truncated index)");
        self.pos += n;
        Ok(&rest[..n])
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        bail!("malformed variable-length integer")
    }

    /// A count of index items; each takes at least one byte, so more than the bytes left is forged.
    fn count(&mut self, what: &str) -> Result<usize> {
        let n = self.varint()?;
        ensure!(n <= (self.bytes.len() - self.pos) as u64, "{what} {n} exceeds the archive's size");
        Ok(n as usize)
    }

    fn bytes(&mut self, max: usize) -> Result<&'a [u8]> {
        let n = self.varint()?;
        ensure!(n <= max as u64, "length {n} exceeds the limit of {max}");
        self.take(n as usize)
    }

    fn entry(&mut self, offset: usize, n_headers: usize) -> Result<Entry> {
        let name = std::str::from_utf8(self.bytes(MAX_NAME)?).context("name is not UTF-8")?;
        check_name(name)?;
        let header = self.varint()?;
        ensure!(header < n_headers as u64, "header reference {header} out of range ({n_headers} headers)");
        let frames = self.varint()?;
        ensure!(frames <= MAX_FRAMES as u64, "{frames} frames exceeds the limit of {MAX_FRAMES}");
        let len = self.varint()?;
        ensure!(len <= self.bytes.len() as u64, "payload length {len} exceeds the archive's size");
        let checksum = u32::from_le_bytes(self.take(4)?.try_into().unwrap());
        Ok(Entry {
            name: name.to_string(),
            header: header as usize,
            frames: frames as usize,
            checksum,
            payload: offset..offset + len as usize,
        })
    }
}

/// Names become file names in the output directory: no paths, nothing hidden behind them.
pub fn check_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']),
        "segment name {name:?} is not a plain file name"
    );
    ensure!(name.len() <= MAX_NAME, "segment name {name:?} is longer than {MAX_NAME} bytes");
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// CRC-32 of tokens as little-endian u16 values: the per-segment checksum.
pub fn token_checksum(tokens: &[u16]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for t in tokens {
        h.update(&t.to_le_bytes());
    }
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, header: &[u8], payload: &[u8]) -> CodedSegment {
        CodedSegment { name: name.into(), header: header.to_vec(), frames: 3, checksum: 7, payload: payload.to_vec() }
    }

    #[test]
    fn index_round_trips_and_headers_are_shared() {
        let segs = [seg("a", b"H1", b"xyz"), seg("b_13", b"H1", b""), seg("c", b"H2", b"pq")];
        let bytes = write(&[9; 32], &segs);
        let a = parse(&bytes).unwrap();
        assert_eq!(a.model_id, [9; 32]);
        assert_eq!(a.headers, vec![&b"H1"[..], &b"H2"[..]]);
        let names: Vec<_> = a.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b_13", "c"]);
        assert_eq!(a.payload(&a.entries[0]), b"xyz");
        assert_eq!(a.payload(&a.entries[2]), b"pq");
        assert_eq!(a.entries[2].header, 1);
    }

    #[test]
    fn damaged_index_is_an_error() {
        let bytes = write(&[0; 32], &[seg("a", b"H", b"payload")]);
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extended = bytes.clone();
        extended.push(0);
        assert!(format!("{:#}", parse(&extended).err().unwrap()).contains("truncated or extended"));
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert!(parse(&flipped).is_err());
        assert!(format!("{:#}", parse(b"PK\x03\x04").err().unwrap()).contains("not a cvq archive"));
    }

    #[test]
    fn path_names_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("3b41c0fa8959aea6c118e5714f412a2e_13").unwrap();
    }
}
