//! Scale-out: segments are independent streams, so N machines can each code a slice of the
//! inputs (`--part I/N`) and `cvq merge` joins their archives without coding again.

use super::files;
use crate::archive::{self, CodedSegment};
use crate::pipeline::write_archive;
use crate::predict::hex;
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

/// The I-th (from 1) of N slices of a list sorted by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Part {
    type Err = String;

    fn from_str(s: &str) -> Result<Part, String> {
        let bad = || format!("{s:?}: a part is I/N with 1 <= I <= N, for example 3/16");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if index < 1 || index > count {
            return Err(bad());
        }
        Ok(Part { index, count })
    }
}

impl Part {
    /// This part's contiguous slice of `items` once sorted by `name`: every item falls in
    /// exactly one of the N parts, and the parts in order are the sorted list.
    pub fn select<T>(&self, mut items: Vec<T>, name: impl Fn(&T) -> String) -> Vec<T> {
        items.sort_by_cached_key(|t| name(t));
        let len = items.len();
        let (start, end) = ((self.index - 1) * len / self.count, self.index * len / self.count);
        items.truncate(end);
        items.drain(..start);
        items
    }
}

/// Join archives of one model into `output`, in the order given, without coding again. Two
/// models or a name used twice are refused: the result must decode like each part.
pub fn merge(inputs: &[PathBuf], output: &Path, force: bool) -> Result<()> {
    files::check_output(output, force)?;
    let sources: Vec<Vec<u8>> = inputs.iter().map(|p| files::read_all(p)).collect::<Result<_>>()?;
    let mut model_id = None;
    let mut coded = vec![];
    for (path, bytes) in inputs.iter().zip(&sources) {
        let a = archive::parse(bytes).with_context(|| files::shown(path, "stdin"))?;
        let first = *model_id.get_or_insert((a.model_id, path));
        ensure!(
            first.0 == a.model_id,
            "{} was written by model {}... and {} by model {}...: only archives of one model merge",
            files::shown(first.1, "stdin"),
            hex(&first.0[..8]),
            files::shown(path, "stdin"),
            hex(&a.model_id[..8])
        );
        coded.extend(a.entries.iter().map(|e| CodedSegment {
            name: e.name.clone(),
            header: a.headers[e.header].to_vec(),
            frames: e.frames,
            checksum: e.checksum,
            payload: a.payload(e).to_vec(),
        }));
    }
    crate::data::check_unique_names(coded.iter().map(|c| c.name.clone()))?;
    let (id, _) = model_id.context("no archives to merge")?;
    let bytes = write_archive(&id, &coded)?;
    files::write_output(output, &bytes, force)?;
    super::note(format_args!(
        "merged {} into {}: {}, {} archive bytes",
        super::count(inputs.len(), "archive"),
        output.display(),
        super::count(coded.len(), "segment"),
        bytes.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_item_once_in_sorted_order() {
        let items: Vec<String> = (0..10).rev().map(|i| format!("s{i}")).collect();
        for n in 1..=12 {
            let joined: Vec<String> =
                (1..=n).flat_map(|i| Part { index: i, count: n }.select(items.clone(), |s| s.clone())).collect();
            let mut sorted = items.clone();
            sorted.sort();
            assert_eq!(joined, sorted, "{n} parts");
        }
    }

    #[test]
    fn parts_are_parsed_strictly() {
        assert_eq!("3/16".parse(), Ok(Part { index: 3, count: 16 }));
        for bad in ["0/4", "5/4", "4", "a/4", "1/0", "-1/4"] {
            assert!(bad.parse::<Part>().is_err(), "{bad}");
        }
    }
}
