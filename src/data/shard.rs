//! commaVQ dataset shards: webdataset tar.gz files holding, per segment, `<key>.token.npy`
//! (the tokens) and `<key>.json` (with `file_name`, the segment's name in the dataset).
//! Read as a stream: nothing is extracted, and at most a handful of members wait for their
//! partner in memory.

use super::npy::{parse_segment, Segment};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Members of one key seen so far.
#[derive(Default)]
struct Pending {
    npy: Option<Vec<u8>>,
    /// The `.json` member and the `file_name` it gives.
    name: Option<(String, String)>,
}

/// A key's members may be apart by this many other members before the shard is refused.
const MAX_PENDING: usize = 64;

/// Call `each` with every segment of the shard at `path`, in shard order; returns the count.
pub fn read_shard(path: &Path, mut each: impl FnMut(Segment) -> Result<()>) -> Result<usize> {
    read_shard_members(path, |_, seg| each(seg))
}

/// `read_shard`, also naming the `.json` member that gave each segment its name, for messages
/// that must point into the shard.
pub fn read_shard_members(path: &Path, mut each: impl FnMut(&str, Segment) -> Result<()>) -> Result<usize> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open shard", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut count = 0;
    let entries = archive.entries().with_context(|| format!("{}: not a tar.gz shard", path.display()))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("{}: corrupt shard", path.display()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry.path()?.to_string_lossy().into_owned();
        let at = || format!("{}: member {member}", path.display());
        let Some((key, kind)) = split_member(&member) else { continue };
        let mut bytes = vec![];
        entry.read_to_end(&mut bytes).with_context(at)?;
        let p = pending.entry(key.to_string()).or_default();
        match kind {
            "token.npy" => p.npy = Some(bytes),
            "json" => p.name = Some((member.clone(), file_name(&bytes).with_context(at)?)),
            _ => continue,
        }
        if p.npy.is_some() && p.name.is_some() {
            let p = pending.remove(key).unwrap();
            let (json, name) = p.name.unwrap();
            let seg = parse_segment(name, &p.npy.unwrap()).with_context(at)?;
            each(&json, seg)?;
            count += 1;
        }
        ensure!(pending.len() <= MAX_PENDING, "{}: members of {MAX_PENDING} keys lack their partner", path.display());
    }
    if let Some(key) = pending.keys().next() {
        bail!("{}: key {key} has only one of .token.npy and .json", path.display());
    }
    Ok(count)
}

/// `dir/abc_13.token.npy` -> (`dir/abc_13`, `token.npy`).
fn split_member(member: &str) -> Option<(&str, &str)> {
    let base_start = member.rfind('/').map_or(0, |i| i + 1);
    let dot = member[base_start..].find('.')? + base_start;
    Some((&member[..dot], &member[dot + 1..]))
}

/// The segment's dataset name: the last path component of the JSON's `file_name`.
fn file_name(json: &[u8]) -> Result<String> {
    let v: serde_json::Value = serde_json::from_slice(json).context("not JSON")?;
    let name = v.get("file_name").and_then(|n| n.as_str()).context("JSON has no string \"file_name\"")?;
    let base = name.rsplit('/').next().unwrap_or(name);
    super::check_name(base)?;
    Ok(base.to_string())
}

/// Write segments as a shard in the dataset's layout (for tests and tools): keys are the
/// names, `.json` first, then `.token.npy`.
pub fn write_shard(path: &Path, segments: &[Segment]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
    let mut add = |name: String, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data)?;
        Ok(())
    };
    for seg in segments {
        let json = serde_json::json!({ "file_name": seg.name }).to_string();
        add(format!("{}.json", seg.name), json.as_bytes())?;
        add(format!("{}.token.npy", seg.name), &seg.to_npy_bytes()?)?;
    }
    tar.into_inner()?.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_split_into_key_and_kind() {
        assert_eq!(split_member("a/b_13.token.npy"), Some(("a/b_13", "token.npy")));
        assert_eq!(split_member("b_13.json"), Some(("b_13", "json")));
        assert_eq!(split_member("x.y/noext"), None);
    }

    #[test]
    fn shard_round_trips_and_damage_is_reported() {
        let dir = std::env::temp_dir().join(format!("cvq-shard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let segs: Vec<Segment> = (0..3)
            .map(|i| Segment::int16(&format!("k{i}_0"), (0..256).map(|t| (t * (i + 1) % 1024) as u16).collect()))
            .collect();
        let path = dir.join("data-0000.tar.gz");
        write_shard(&path, &segs).unwrap();
        let mut back = vec![];
        let n = read_shard(&path, |s| {
            back.push(s);
            Ok(())
        });
        assert_eq!(n.unwrap(), 3);
        assert_eq!(back, segs);
        let mut members = vec![];
        read_shard_members(&path, |json, _| {
            members.push(json.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(members, ["k0_0.json", "k1_0.json", "k2_0.json"]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", read_shard(&path, |_| Ok(())).unwrap_err());
        assert!(err.contains("data-0000.tar.gz"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
