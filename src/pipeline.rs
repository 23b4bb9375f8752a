//! The pipeline between the stages: segments are coded by fresh predictors into archive
//! entries, and entries are decoded, checked and turned back into segments. A worker codes
//! `model.batch_size()` segments in lockstep; workers run in parallel. Neither the batch nor
//! the thread count changes a byte: every segment is its own stream.

use crate::archive::{self, Archive, CodedSegment};
use crate::code;
use crate::data::{self, Segment, TOKENS_PER_FRAME};
use crate::predict::transformer::Transformer;
use crate::predict::{hex, Model};
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Code one lockstep batch of segments.
pub fn encode_batch(model: &Model, segments: &[Segment]) -> Result<Vec<CodedSegment>> {
    for seg in segments {
        let checked = data::check_tokens(&seg.tokens);
        checked
            .and_then(|_| archive::check_segment(&seg.name, &seg.header, seg.frames()))
            .with_context(|| seg.name.clone())?;
    }
    let sizes: Vec<usize> = segments.iter().map(|s| s.tokens.len()).collect();
    let tokens: Vec<&[u16]> = segments.iter().map(|s| s.tokens.as_slice()).collect();
    let payloads = code::encode(&mut model.batch(&sizes), &tokens);
    Ok(segments
        .iter()
        .zip(payloads)
        .map(|(seg, payload)| CodedSegment {
            name: seg.name.clone(),
            header: seg.header.clone(),
            frames: seg.frames(),
            checksum: archive::token_checksum(&seg.tokens),
            payload,
        })
        .collect())
}

/// The predictor that wrote `archive`: a context mixer (this release's or an earlier one's), or
/// a predictor of `weights` if its id is the archive's.
pub fn archive_model(archive: &Archive, weights: Option<&Arc<Transformer>>) -> Result<Model> {
    let id = archive.model_id;
    for m in Model::readable(weights) {
        if m.id() == id {
            return Ok(m);
        }
    }
    match weights {
        Some(t) => bail!(
            "archive was written by model {}..., which is neither the context mixer nor a model of weights {}...: pass the weights it was written with (--weights)",
            hex(&id[..8]),
            hex(&t.hash[..8])
        ),
        None => bail!("archive was written by model {}..., which needs neural weights: pass them with --weights", hex(&id[..8])),
    }
}

/// Decode and verify the entries `indices` of `archive` as one lockstep batch.
pub fn decode_batch(archive: &Archive, model: &Model, indices: &[usize]) -> Vec<Result<Segment>> {
    let entries: Vec<&archive::Entry> = indices.iter().map(|&i| &archive.entries[i]).collect();
    let counts: Vec<usize> = entries.iter().map(|e| e.frames * TOKENS_PER_FRAME).collect();
    let payloads: Vec<&[u8]> = entries.iter().map(|e| archive.payload(e)).collect();
    // The index was parsed (every header checked against its entry) and the callers checked
    // these payloads' checksums (`archive::parse` or `Archive::check_payload`).
    let decoded = code::decode(&mut model.batch(&counts), &payloads, &counts);
    indices
        .iter()
        .zip(entries)
        .zip(decoded)
        .map(|((&i, e), tokens)| {
            let segment = tokens.and_then(|tokens| {
                ensure!(
                    archive::token_checksum(&tokens) == e.checksum,
                    "token checksum mismatch: the payload was intact, so the decoder is not the encoder's (lost determinism)"
                );
                Ok(Segment { name: e.name.clone(), header: archive.headers[e.header].to_vec(), tokens })
            });
            // Numbered from 1, as `--part` counts.
            segment.with_context(|| format!("segment {} ({})", i + 1, e.name))
        })
        .collect()
}

/// Code the segments that `load` reads from `items`, a lockstep batch per worker of the
/// current rayon pool, in order; `done` hears of each coded segment (progress). The binary's
/// compress and eval and the library's `compress_segments` all code through here.
pub fn encode_each<T: Sync>(
    items: &[T],
    model: &Model,
    load: impl Fn(&T) -> Result<Segment> + Sync,
    done: impl Fn(&CodedSegment) + Sync,
) -> Result<Vec<CodedSegment>> {
    let coded: Vec<Vec<CodedSegment>> = items
        .par_chunks(model.batch_size())
        .map(|chunk| {
            let segments = chunk.iter().map(&load).collect::<Result<Vec<_>>>()?;
            let coded = encode_batch(model, &segments)?;
            coded.iter().for_each(&done);
            Ok(coded)
        })
        .collect::<Result<_>>()?;
    Ok(coded.concat())
}

/// Decode the entries `indices` of `archive`, a lockstep batch per worker of the current rayon
/// pool, handing each result to `sink` with its index; stops at the first error `sink` returns.
pub fn decode_each(
    archive: &Archive,
    model: &Model,
    indices: &[usize],
    sink: impl Fn(usize, Result<Segment>) -> Result<()> + Sync,
) -> Result<()> {
    indices.par_chunks(model.batch_size()).try_for_each(|chunk| {
        chunk.iter().zip(decode_batch(archive, model, chunk)).try_for_each(|(&i, seg)| sink(i, seg))
    })
}

/// Decode the entries `indices` of `archive` (see `decode_each`), handing each intact segment
/// to `sink`; returns the damaged ones (payload checksum, decoding or token checksum), by
/// index with the error. Every segment is an independent stream: damage to one never costs
/// another.
pub fn decode_intact(
    archive: &Archive,
    model: &Model,
    indices: &[usize],
    sink: impl Fn(usize, Segment) -> Result<()> + Sync,
) -> Result<Vec<(usize, anyhow::Error)>> {
    let (mut intact, mut damaged) = (vec![], vec![]);
    for &i in indices {
        match archive.check_payload(i) {
            Ok(()) => intact.push(i),
            Err(e) => damaged.push((i, e)),
        }
    }
    let damaged = Mutex::new(damaged);
    decode_each(archive, model, &intact, |i, seg| match seg {
        Ok(seg) => sink(i, seg),
        Err(e) => {
            damaged.lock().expect("no panic while held").push((i, e));
            Ok(())
        }
    })?;
    let mut damaged = damaged.into_inner().expect("no panic while held");
    damaged.sort_by_key(|d| d.0);
    Ok(damaged)
}

/// Compress segments in memory (in parallel on the current rayon pool).
pub fn compress_segments(model: &Model, segments: &[Segment]) -> Result<Vec<u8>> {
    data::check_unique_names(segments.iter().map(|s| s.name.clone()))?;
    let coded = encode_each(segments, model, |s| Ok(s.clone()), |_| ())?;
    write_archive(&model.id(), &coded)
}

/// Serialise coded segments and read the result back (index, headers, lengths, payload
/// checksums): no archive that decompress would refuse is ever returned.
pub fn write_archive(model_id: &[u8; 32], coded: &[CodedSegment]) -> Result<Vec<u8>> {
    let bytes = archive::write(model_id, coded);
    archive::parse(&bytes)
        .context("the archive just written does not read back (a bug in cvq; nothing was written)")?;
    Ok(bytes)
}

/// Decompress a whole archive in memory; `weights` are the neural model's, if it needs them.
pub fn decompress_segments(bytes: &[u8], weights: Option<&Arc<Transformer>>) -> Result<Vec<Segment>> {
    let archive = archive::parse(bytes)?;
    let model = archive_model(&archive, weights)?;
    let indices: Vec<usize> = (0..archive.entries.len()).collect();
    let out: Mutex<Vec<Option<Segment>>> = Mutex::new((0..indices.len()).map(|_| None).collect());
    decode_each(&archive, &model, &indices, |i, seg| {
        out.lock().expect("no panic while held")[i] = Some(seg?);
        Ok(())
    })?;
    Ok(out.into_inner().expect("no panic while held").into_iter().map(|s| s.expect("every index decoded")).collect())
}
