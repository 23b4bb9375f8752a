//! The archive container: an index (model id, distinct npy headers, one entry per segment)
//! followed by the segments' independent coded payloads. FORMAT.md is the specification.

use crate::data::npy::parse_header;
pub use crate::data::{check_name, MAX_NAME};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

pub const MAGIC: &[u8; 4] = b"CVQA";
/// Version 2 added the payload checksum to each entry.
pub const VERSION: u8 = 2;
/// Largest segment accepted, in frames (about 55 minutes at 20 fps). Bounds what a forged
/// archive can make the decoder do.
pub const MAX_FRAMES: usize = 1 << 16;
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

/// Every rule the parser enforces on one segment's name, npy header and frame count, for the
/// writer to apply before coding: an archive is only written if it can be read back.
pub fn check_segment(name: &str, header: &[u8], frames: usize) -> Result<()> {
    check_name(name)?;
    ensure!(header.len() <= MAX_HEADER, "npy header of {} bytes exceeds the limit of {MAX_HEADER}", header.len());
    ensure!(frames <= MAX_FRAMES, "{frames} frames exceeds the limit of {MAX_FRAMES}");
    let (_, header_frames) = parse_header(header).context("npy header")?;
    ensure!(header_frames == frames, "{frames} frames, but its npy header says {header_frames}");
    Ok(())
}

/// An entry of a parsed archive; `payload` is a range of the archive's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub header: usize,
    pub frames: usize,
    pub checksum: u32,
    /// CRC-32 of the payload bytes, checked when the archive is parsed.
    pub payload_checksum: u32,
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

    /// Check segment `i`'s payload against its checksum (messages count segments from 1).
    pub fn check_payload(&self, i: usize) -> Result<()> {
        let e = &self.entries[i];
        ensure!(
            crc32fast::hash(self.payload(e)) == e.payload_checksum,
            "segment {} ({}): payload is damaged (payload checksum mismatch)",
            i + 1,
            e.name
        );
        Ok(())
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
        out.extend_from_slice(&crc32fast::hash(&s.payload).to_le_bytes());
        out.extend_from_slice(&s.checksum.to_le_bytes());
    }
    let index_crc = crc32fast::hash(&out);
    out.extend_from_slice(&index_crc.to_le_bytes());
    for s in segments {
        out.extend_from_slice(&s.payload);
    }
    out
}

/// Parse and validate an archive: its index, every entry against `check_segment`'s rules, and
/// every payload against its checksum, so damage is found before any decoding.
pub fn parse(bytes: &[u8]) -> Result<Archive<'_>> {
    let archive = parse_index(bytes)?;
    (0..archive.entries.len()).try_for_each(|i| archive.check_payload(i))?;
    Ok(archive)
}

/// Parse and validate an archive's index, leaving its payloads unchecked (see
/// `Archive::check_payload`).
pub fn parse_index(bytes: &[u8]) -> Result<Archive<'_>> {
    let mut r = Reader { bytes, pos: 0 };
    ensure!(r.take(4).ok() == Some(&MAGIC[..]), "not a cvq archive (bad magic)");
    let version = r.take(1)?[0];
    ensure!(
        version == VERSION,
        "archive format version {version} is not supported: this cvq reads version {VERSION} only (compress the segments again with this cvq)"
    );
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
        let e = r.entry(offset, &headers).with_context(|| format!("index entry of segment {}", i + 1))?;
        // Segments are restored by name: two of one name would overwrite each other.
        ensure!(names.insert(e.name.clone()), "index entry of segment {}: name {:?} is used twice", i + 1, e.name);
        offset = e.payload.end;
        entries.push(e);
    }
    let index_end = r.pos;
    let stored_crc = r.u32().context("index checksum")?;
    ensure!(crc32fast::hash(&bytes[..index_end]) == stored_crc, "archive index is corrupt (checksum mismatch)");
    let base = r.pos;
    ensure!(
        bytes.len() - base == offset,
        "archive holds {} payload bytes but its index lists {offset}: truncated or extended",
        bytes.len() - base
    );
    // Every offset is at most `offset`, which was just found equal to bytes left: no overflow.
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
            // The tenth byte holds bit 63 alone: more would be shifted out unseen.
            ensure!(shift < 63 || b <= 1, "variable-length integer exceeds 64 bits");
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

    fn entry(&mut self, offset: usize, headers: &[&[u8]]) -> Result<Entry> {
        let name = std::str::from_utf8(self.bytes(MAX_NAME)?).context("name is not UTF-8")?;
        check_name(name)?;
        let header = self.varint()?;
        let n_headers = headers.len();
        ensure!(header < n_headers as u64, "header reference {header} out of range ({n_headers} headers)");
        // Saturating, so a 32-bit target refuses a count past its usize as too many frames.
        let frames = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
        check_segment(name, headers[header as usize], frames)?;
        let len = self.varint()?;
        let end = usize::try_from(len).ok().and_then(|len| offset.checked_add(len));
        let end = end.filter(|&end| end <= self.bytes.len());
        let end = end.with_context(|| format!("payload length {len} exceeds the archive's size"))?;
        let payload_checksum = self.u32()?;
        let checksum = self.u32()?;
        Ok(Entry {
            name: name.to_string(),
            header: header as usize,
            frames,
            checksum,
            payload_checksum,
            payload: offset..end,
        })
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
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

    fn seg(name: &str, descr: &str, payload: &[u8]) -> CodedSegment {
        let header = crate::data::npy::npy_header(descr, false, &[3, 8, 16]);
        CodedSegment { name: name.into(), header, frames: 3, checksum: 7, payload: payload.to_vec() }
    }

    #[test]
    fn index_round_trips_and_headers_are_shared() {
        let segs = [seg("a", "<i2", b"xyz"), seg("b_13", "<i2", b""), seg("c", ">i2", b"pq")];
        let bytes = write(&[9; 32], &segs);
        let a = parse(&bytes).unwrap();
        assert_eq!(a.model_id, [9; 32]);
        assert_eq!(a.headers, vec![&segs[0].header[..], &segs[2].header[..]]);
        let names: Vec<_> = a.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b_13", "c"]);
        assert_eq!(a.payload(&a.entries[0]), b"xyz");
        assert_eq!(a.payload(&a.entries[2]), b"pq");
        assert_eq!(a.entries[2].header, 1);
    }

    #[test]
    fn damaged_index_is_an_error() {
        let bytes = write(&[0; 32], &[seg("a", "<i2", b"payload")]);
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
    fn damaged_payloads_and_old_versions_are_named() {
        let bytes = write(&[0; 32], &[seg("a", "<i2", b"xyz"), seg("b", "<i2", b"payload")]);
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let err = format!("{:#}", parse(&flipped).err().unwrap());
        assert_eq!(err, "segment 2 (b): payload is damaged (payload checksum mismatch)");
        let mut old = bytes.clone();
        old[4] = 1;
        assert!(format!("{:#}", parse(&old).err().unwrap()).contains("format version 1 is not supported"));
    }

    #[test]
    fn forged_lengths_are_errors_not_overflows() {
        for len in [u64::MAX, u64::MAX - 2, 1 << 40] {
            let mut index = MAGIC.to_vec();
            index.push(VERSION);
            index.extend([0; 32]);
            put_varint(&mut index, 1);
            put_bytes(&mut index, &seg("a", "<i2", b"").header);
            put_varint(&mut index, 1);
            put_bytes(&mut index, b"a");
            index.extend([0, 3]);
            put_varint(&mut index, len);
            index.extend([0; 8]);
            let crc = crc32fast::hash(&index);
            index.extend(crc.to_le_bytes());
            let err = format!("{:#}", parse(&index).err().unwrap());
            assert!(err.contains("exceeds the archive's size"), "{err}");
        }
    }

    #[test]
    fn varints_past_64_bits_are_refused() {
        let mut r = Reader { bytes: &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], pos: 0 };
        assert_eq!(r.varint().unwrap(), u64::MAX);
        let mut r = Reader { bytes: &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], pos: 0 };
        assert_eq!(format!("{:#}", r.varint().unwrap_err()), "variable-length integer exceeds 64 bits");
    }

    #[test]
    fn path_names_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("3b41c0fa8959aea6c118e5714f412a2e_13").unwrap();
    }
}
