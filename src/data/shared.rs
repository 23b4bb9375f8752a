//! Where tests and benchmarks find the real data: `$CVQ_DATA`, by default the repository's
//! `tests/data`, which ships the real clip (tests/data/README.md says where it comes from).

use std::path::PathBuf;

/// A real-data file. Panics naming the path when it is absent: the clip ships with the
/// repository, so a missing file is a broken checkout or a wrong `CVQ_DATA`, never a skip.
pub fn shared_data(name: &str) -> PathBuf {
    let dir = std::env::var_os("CVQ_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    let path = dir.join(name);
    assert!(path.is_file(), "real data {} not found (CVQ_DATA names the directory that holds it)", path.display());
    path
}
