//! Where tests and benchmarks find the real data at hand: `$CVQ_DATA`, by default
//! `../shared/data` beside the repository.

use std::io::Write;
use std::path::PathBuf;

/// A real-data file, or `None` after a visible "SKIPPED" message when it is absent. With
/// `CVQ_REQUIRE_DATA=1` (CI) an absent file panics instead: a skip must not pass for a test.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CVQ_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let path = dir.join(name);
    if path.is_file() {
        return Some(path);
    }
    let msg = format!("real data {} not found (set CVQ_DATA)", path.display());
    if std::env::var("CVQ_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("{msg}; CVQ_REQUIRE_DATA=1 makes this a failure");
    }
    // Written past the test harness's capture, so the skip is seen even when the test passes.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
    None
}
