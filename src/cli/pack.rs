//! `cvq pack`: the challenge submission. A zip of the archive (`data.cvq`), `decompress.py`,
//! the xz-compressed static decoder (`cvq.xz`) and, when the archive needs them, the weights
//! (`weights.safetensors`). Everything in the zip counts toward the score, so pack prints
//! where every byte goes.

use super::files;
use anyhow::{ensure, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

/// The challenge's entry point, run by the grader with OUTPUT_DIR set.
pub const DECOMPRESS_PY: &[u8] = include_bytes!("../../scripts/decompress.py");
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";

/// One member of the zip: its name, bytes, and whether to deflate it (the archive and the
/// decoder are compressed already).
struct Member<'a> {
    name: &'static str,
    what: &'static str,
    bytes: &'a [u8],
    deflate: bool,
}

/// Where the xz-compressed decoder is looked for when `--decoder` is not given, whatever the
/// working directory: beside this executable, then in the workspace's `target/challenge/`
/// (where scripts/build-decoder.sh writes it) seen from an executable in `target/<profile>/`.
/// No path is compiled in, so the decoder's own bytes stay the same in every checkout.
fn decoder_places() -> Vec<PathBuf> {
    let exe = std::env::current_exe().ok().and_then(|e| e.canonicalize().ok());
    let Some(dir) = exe.as_deref().and_then(Path::parent) else { return vec![] };
    vec![dir.join("cvq.xz"), dir.join("../challenge/cvq.xz")]
}

/// The decoder to use: the one given, else the first that exists of `decoder_places`; `Err`
/// lists where it looked.
pub fn find_decoder(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let places = decoder_places();
    places.iter().find_map(|p| p.canonicalize().ok().filter(|p| p.is_file())).ok_or_else(|| {
        let list: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
        format!(
            "decoder not built: none at {} (scripts/build-decoder.sh builds it; or pass --decoder)",
            list.join(" or ")
        )
    })
}

/// Read the xz-compressed decoder, refusing anything else.
pub fn read_decoder(given: Option<&Path>) -> Result<Vec<u8>> {
    let path = find_decoder(given).map_err(anyhow::Error::msg)?;
    let bytes = std::fs::read(&path).with_context(|| {
        format!("{}: cannot read the decoder (build it with scripts/build-decoder.sh)", path.display())
    })?;
    ensure!(bytes.starts_with(XZ_MAGIC), "{}: not an xz file (scripts/build-decoder.sh writes one)", path.display());
    Ok(bytes)
}

/// Write the submission zip and print its size table and score; `tokens` is the number of
/// tokens in the archive, which the score compares against at 10 bits each.
pub fn write(
    output: &Path,
    archive: &[u8],
    decoder: &[u8],
    weights: Option<&[u8]>,
    tokens: usize,
    force: bool,
) -> Result<()> {
    let mut members = vec![
        Member { name: "data.cvq", what: "data (archive)", bytes: archive, deflate: false },
        Member { name: "cvq.xz", what: "decoder (static, xz)", bytes: decoder, deflate: false },
        Member { name: "decompress.py", what: "script", bytes: DECOMPRESS_PY, deflate: true },
    ];
    if let Some(w) = weights {
        members.insert(1, Member { name: "weights.safetensors", what: "weights", bytes: w, deflate: true });
    }
    let (zip, stored) = build_zip(&members)?;
    files::write_output(output, &zip, force)?;
    println!("{:<24} {:>12} {:>12}", "member", "bytes", "in zip");
    for (m, &size) in members.iter().zip(&stored) {
        println!("{:<24} {:>12} {:>12}", m.what, m.bytes.len(), size);
    }
    println!("{:<24} {:>12} {:>12}", "zip overhead", "", zip.len() - stored.iter().sum::<usize>());
    println!("{:<24} {:>12} {:>12}", "total", "", zip.len());
    let original = tokens * 10 / 8;
    println!(
        "wrote {}: score {:.4} (= {original} bytes of 10-bit tokens / {} zip bytes)",
        output.display(),
        original as f64 / zip.len() as f64,
        zip.len()
    );
    Ok(())
}

/// The zip's bytes and each member's compressed size, read back from the zip itself.
fn build_zip(members: &[Member]) -> Result<(Vec<u8>, Vec<usize>)> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for m in members {
        let method = if m.deflate { CompressionMethod::Deflated } else { CompressionMethod::Stored };
        // Fixed timestamps and modes: the same inputs give the same zip.
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .compression_level(m.deflate.then_some(9))
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(0o644);
        zip.start_file(m.name, options)?;
        zip.write_all(m.bytes)?;
    }
    let bytes = zip.finish()?.into_inner();
    let mut read = zip::ZipArchive::new(std::io::Cursor::new(&bytes))?;
    let sizes = (0..members.len()).map(|i| Ok(read.by_index(i)?.compressed_size() as usize)).collect::<Result<_>>()?;
    Ok((bytes, sizes))
}
