//! What the round-trip targets share: arbitrary bytes become a few segments, valid or not,
//! which are compressed and decompressed. The archive must give back exactly the segments
//! (name, npy header, tokens), or the compressor must refuse them with a message that names a
//! problem they have. A panic, an archive that does not decode, or one that decodes to other
//! segments is a bug.
//!
//! Each segment takes two bytes and a token count from the input, then its tokens:
//! - name byte: bits 0-2 the name's length in bytes that follow (any bytes, made UTF-8 lossily,
//!   so "", ".", "a/b" and "\0" occur); bit 3 pads it with 'x' to 250 + bits 4-6 bytes (either
//!   side of the 255-byte limit); bit 7 takes tokens as whole u16 values (up to 65,535),
//!   else modulo 1024.
//! - header byte: bits 0-3 the dtype (`DESCRS`), bits 4-5 the shape (`(N, 8, 16)`, `(N, 128)`,
//!   or two unsupported ones), bit 6 Fortran order, bit 7 a frame count one more than the tokens'.
//! - two bytes, little-endian: the token count, modulo `max_tokens + 1` (so partial frames
//!   occur); then the tokens, two bytes each, little-endian, as many as the input holds, repeated
//!   to the count (so a short input still makes whole frames).

use cvq::data::npy::npy_header;
use cvq::data::{Segment, MAX_NAME, TOKENS_PER_FRAME, VOCAB};
use cvq::pipeline::{compress_segments, decompress_segments};
use cvq::predict::transformer::Transformer;
use cvq::predict::Model;
use std::sync::{Arc, OnceLock};

/// npy dtypes: the first eight are the ones cvq reads, the others ones it must refuse.
const DESCRS: [&str; 16] =
    ["<i2", ">i2", "<u2", ">u2", "<i4", ">i4", "<i8", ">i8", "<u4", ">u8", "|i1", "|u1", "<f2", "<f4", ">f8", "|b1"];

/// A segment and the problems the compressor must refuse it for, each as a phrase its refusal
/// would contain: the name, the dtype, the shape, the order, the frame count, a token of 1024
/// or more, a partial frame.
pub struct Case {
    segment: Segment,
    must: Vec<&'static str>,
}

/// One to three segments from `data`, each of at most `max_tokens` tokens.
pub fn cases(data: &[u8], max_tokens: usize) -> Vec<Case> {
    let mut r = data.iter().copied();
    let count = 1 + usize::from(r.next().unwrap_or(0) % 3);
    (0..count).map_while(|_| case(&mut r, max_tokens)).collect()
}

fn case(r: &mut impl Iterator<Item = u8>, max_tokens: usize) -> Option<Case> {
    let (name_byte, header_byte) = (r.next()?, r.next()?);
    let raw: Vec<u8> = r.by_ref().take(usize::from(name_byte & 7)).collect();
    let mut name = String::from_utf8_lossy(&raw).into_owned();
    if name_byte & 8 != 0 {
        while name.len() < 250 + usize::from(name_byte >> 4 & 7) {
            name.push('x');
        }
    }
    let n = usize::from(u16::from_le_bytes([r.next().unwrap_or(0), r.next().unwrap_or(0)])) % (max_tokens + 1);
    let mask = if name_byte & 0x80 != 0 { u16::MAX } else { VOCAB as u16 - 1 };
    let mut tokens: Vec<u16> = (0..n).map_while(|_| Some(u16::from_le_bytes([r.next()?, r.next()?]) & mask)).collect();
    let read = tokens.len();
    (read..n).for_each(|i| tokens.push(if read == 0 { 0 } else { tokens[i % read] }));

    let descr = DESCRS[usize::from(header_byte & 15)];
    let frames = tokens.len() / TOKENS_PER_FRAME + usize::from(header_byte >> 7);
    let shapes = [vec![frames, 8, 16], vec![frames, 128], vec![frames, 16, 8], vec![frames * TOKENS_PER_FRAME]];
    let fortran = header_byte & 0x40 != 0;
    let header = npy_header(descr, fortran, &shapes[usize::from(header_byte >> 4 & 3)]);

    // The expected problems, from the choices above and the format's rules (FORMAT.md), not
    // from cvq's own checks.
    let mut must = vec![];
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        must.push("is not a plain file name");
    }
    if name.len() > MAX_NAME {
        must.push("is longer than");
    }
    if header_byte & 15 >= 8 {
        must.push("unsupported dtype");
    }
    if header_byte & 0x20 != 0 {
        must.push("unsupported shape");
    }
    if fortran {
        must.push("Fortran");
    }
    if header_byte & 0x80 != 0 {
        must.push("npy header says");
    }
    if tokens.iter().any(|&t| usize::from(t) >= VOCAB) {
        must.push("out of range 0..1023");
    }
    if tokens.len() % TOKENS_PER_FRAME != 0 {
        must.push("not a whole number of 128-token frames");
    }
    Some(Case { segment: Segment { name, header, tokens }, must })
}

/// Compress `cases` with `model` on one thread (a fuzzing job keeps to one core) and check
/// the refusal or the round trip; `weights` are what the decompressor is given.
pub fn check(model: &Model, weights: Option<&Arc<Transformer>>, cases: &[Case]) {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    let pool = POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a thread pool"));
    let segments: Vec<Segment> = cases.iter().map(|c| c.segment.clone()).collect();
    // Segments are restored by name, so an archive holds each name once.
    let repeated = (1..segments.len()).any(|i| segments[..i].iter().any(|s| s.name == segments[i].name));
    match pool.install(|| compress_segments(model, &segments)) {
        Err(e) => {
            // A refusal must say what is wrong with which segment: the segment's name (the
            // error's context) and one of its problems; or the repeated name.
            let msg = format!("{e:#}");
            let names_its_problem = |c: &Case| {
                msg.starts_with(&format!("{}: ", c.segment.name))
                    && c.must.iter().any(|p| msg.contains(p))
            };
            assert!(
                cases.iter().any(names_its_problem) || (repeated && msg.contains("two segments are named")),
                "refusal that names no problem of the segments: {msg}"
            );
        }
        Ok(bytes) => {
            for c in cases {
                assert!(c.must.is_empty(), "segment {:?} compressed despite: {:?}", c.segment.name, c.must);
            }
            assert!(!repeated, "two segments of one name compressed");
            let back = decompress_segments(&bytes, weights).expect("an archive just compressed decompresses");
            assert!(back == segments, "decompressed segments differ from the compressed ones");
        }
    }
}
