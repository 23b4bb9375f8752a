//! Where tests find the real data: `$CVQ_DATA`, by default the repository's `tests/data`,
//! which ships the real clip (tests/data/README.md says where it comes from). Kept out of
//! the library (it panics); the trainer's tests include this file by path.

use std::path::PathBuf;

/// A real-data file. Panics naming the path when it is absent: the clip ships with the
/// repository, so a missing file is a broken checkout or a wrong `CVQ_DATA`, never a skip.
pub fn real_data(name: &str) -> PathBuf {
    // The repository's tests/data from the root crate or from train/ (the nearest one up).
    let shipped = || {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        manifest.ancestors().map(|d| d.join("tests/data")).find(|d| d.is_dir()).unwrap_or(manifest)
    };
    let dir = std::env::var_os("CVQ_DATA").map(PathBuf::from).unwrap_or_else(shipped);
    let path = dir.join(name);
    assert!(path.is_file(), "real data {} not found (CVQ_DATA names the directory that holds it)", path.display());
    path
}
