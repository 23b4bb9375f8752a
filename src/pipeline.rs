//! The pipeline between the stages: a segment is coded by a fresh predictor into an archive
//! entry, and an entry is decoded, checked and turned back into a segment. Segments are
//! independent, so both directions run in parallel without changing a byte.

use crate::archive::{self, Archive, CodedSegment};
use crate::code::{decode_tokens, encode_tokens};
use crate::data::{npy::parse_header, Segment, TOKENS_PER_FRAME};
use crate::predict::Model;
use anyhow::{ensure, Context, Result};
use rayon::prelude::*;

/// Code one segment with a fresh predictor of `model`.
pub fn encode_segment(model: Model, seg: &Segment) -> Result<CodedSegment> {
    archive::check_name(&seg.name)?;
    ensure!(
        seg.frames() <= archive::MAX_FRAMES,
        "{}: {} frames exceeds the limit of {}",
        seg.name,
        seg.frames(),
        archive::MAX_FRAMES
    );
    let mut predictor = model.predictor(seg.tokens.len());
    Ok(CodedSegment {
        name: seg.name.clone(),
        header: seg.header.clone(),
        frames: seg.frames(),
        checksum: archive::token_checksum(&seg.tokens),
        payload: encode_tokens(&seg.tokens, predictor.as_mut()),
    })
}

/// The predictor that wrote `archive`, or a clear refusal.
pub fn archive_model(archive: &Archive) -> Result<Model> {
    Model::from_id(&archive.model_id).with_context(|| {
        let hex: String = archive
            .model_id
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("archive was written with a model this cvq does not have (id {hex}...)")
    })
}

/// Decode and verify entry `i` of `archive`.
pub fn decode_entry(archive: &Archive, i: usize) -> Result<Segment> {
    let e = &archive.entries[i];
    let inner = || -> Result<Segment> {
        let model = archive_model(archive)?;
        let header = archive.headers[e.header];
        let (_, frames) = parse_header(header).context("stored npy header")?;
        ensure!(
            frames == e.frames,
            "index says {} frames, its npy header {frames}",
            e.frames
        );
        let count = frames * TOKENS_PER_FRAME;
        let tokens = decode_tokens(archive.payload(e), count, model.predictor(count).as_mut())?;
        ensure!(
            archive::token_checksum(&tokens) == e.checksum,
            "checksum mismatch: the data is corrupt"
        );
        Ok(Segment {
            name: e.name.clone(),
            header: header.to_vec(),
            tokens,
        })
    };
    inner().with_context(|| format!("segment {i} ({})", e.name))
}

/// Compress segments in memory (in parallel on the current rayon pool).
pub fn compress_segments(model: Model, segments: &[Segment]) -> Result<Vec<u8>> {
    let coded = segments
        .par_iter()
        .map(|s| encode_segment(model, s))
        .collect::<Result<Vec<_>>>()?;
    Ok(archive::write(&model.id(), &coded))
}

/// Decompress a whole archive in memory.
pub fn decompress_segments(bytes: &[u8]) -> Result<Vec<Segment>> {
    let archive = archive::parse(bytes)?;
    (0..archive.entries.len())
        .into_par_iter()
        .map(|i| decode_entry(&archive, i))
        .collect()
}
