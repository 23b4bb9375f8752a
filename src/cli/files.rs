//! Input discovery and safe output: no silent overwrites, no half-written files.

use crate::data::{parse_segment, read_segment_file, shard::read_shard, Segment};
use anyhow::{ensure, Context, Result};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Expand inputs: files as given, directories to their files in name order (and their
/// subdirectories' files with `recursive`; otherwise those are skipped with a note). A
/// directory's hidden entries (names starting with '.', such as .DS_Store) are skipped.
/// `output`, the file this run writes, is never an input: skipped with a note where a
/// directory lists it (as tar skips its own archive), refused where given by name, since it
/// would be read and then replaced. `-` (stdin) stays as it is; shards stay files here (see
/// `inputs`).
pub fn collect_inputs(inputs: &[PathBuf], recursive: bool, output: Option<&Path>) -> Result<Vec<PathBuf>> {
    // An output that does not exist yet cannot be listed.
    let output = output.filter(|o| !is_std(o)).and_then(|o| std::fs::canonicalize(o).ok());
    let listing = Listing { recursive, output };
    let mut out = vec![];
    for input in inputs {
        if is_std(input) {
            out.push(input.clone());
            continue;
        }
        let meta = std::fs::metadata(input).with_context(|| format!("{}: cannot read", input.display()))?;
        if meta.is_dir() {
            listing.dir_files(input, &mut out)?;
        } else {
            ensure!(
                !listing.is_output(input),
                "{}: is both an input and the output: it would be read and then replaced",
                input.display()
            );
            out.push(input.clone());
        }
    }
    ensure!(!out.is_empty(), "no input files found");
    Ok(out)
}

/// How input directories are listed.
struct Listing {
    recursive: bool,
    /// The run's output file, resolved (links and all), if it exists.
    output: Option<PathBuf>,
}

impl Listing {
    fn is_output(&self, path: &Path) -> bool {
        self.output.as_ref().is_some_and(|o| std::fs::canonicalize(path).is_ok_and(|p| p == *o))
    }

    /// Append the files of `dir`, sorted by path, descending into subdirectories if `recursive`.
    fn dir_files(&self, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut paths = vec![];
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
            paths.push(entry.with_context(|| format!("{}: cannot list", dir.display()))?.path());
        }
        paths.sort();
        for path in paths {
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                super::detail(format_args!("{}: skipped, hidden (its name starts with .)", path.display()));
            } else if self.is_output(&path) {
                super::note(format_args!("{}: skipped, the output of this run", path.display()));
            } else if !path.is_dir() {
                out.push(path);
            } else if self.recursive {
                self.dir_files(&path, out)?;
            } else {
                super::note(format_args!("{}: skipped, a directory (-r reads subdirectories)", path.display()));
            }
        }
        Ok(())
    }
}

/// `-`: stdin or stdout.
pub fn is_std(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// The segments to code: .npy files (read when their turn comes), the segments of dataset
/// shards (`.tar.gz`, unpacked into memory) and with `-` one .npy segment from stdin, stored
/// under `stdin_name`.
pub fn inputs(
    paths: &[PathBuf],
    recursive: bool,
    stdin_name: Option<&str>,
    output: Option<&Path>,
) -> Result<Vec<Input>> {
    let paths = collect_inputs(paths, recursive, output)?;
    let stdin_reads = paths.iter().filter(|p| is_std(p)).count();
    ensure!(stdin_reads <= 1, "- (stdin) is given {stdin_reads} times: it holds one segment");
    ensure!(stdin_reads == 1 || stdin_name.is_none(), "--name names the segment read from stdin: give - as an input");
    let mut out = vec![];
    for p in paths {
        if is_std(&p) {
            let name =
                stdin_name.context("- reads a segment from stdin: name it with --name (its dataset file name)")?;
            let bytes = read_all(&p)?;
            out.push(Input::Loaded(
                parse_segment(name.to_string(), &bytes).context("stdin: not a valid token segment")?,
            ));
        } else if p.to_string_lossy().ends_with(".tar.gz") {
            read_shard(&p, |seg| {
                out.push(Input::Loaded(seg));
                Ok(())
            })?;
        } else {
            check_npy_start(&p)?;
            out.push(Input::File(p));
        }
    }
    Ok(out)
}

/// Refuse, before any coding, a file that cannot be a segment, as it does not start as an
/// .npy file does: a run of hours must not end at a stray file. Streams are left to the read.
fn check_npy_start(path: &Path) -> Result<()> {
    let Some(head) = head(path, 6)? else { return Ok(()) };
    ensure!(
        !head.starts_with(crate::archive::MAGIC),
        "{}: a cvq archive, not a token segment: leave it out of the inputs (`cvq decompress` restores its segments)",
        path.display()
    );
    ensure!(head == b"\x93NUMPY", "{}: not a valid token segment: not an .npy file", path.display());
    Ok(())
}

/// The first `n` bytes of the regular file at `path` (fewer if it is shorter); None for what
/// is not a regular file: a stream, which looking ahead would consume, or a missing path,
/// which its reader reports.
pub fn head(path: &Path, n: usize) -> Result<Option<Vec<u8>>> {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let mut head = vec![];
    std::fs::File::open(path)
        .and_then(|f| f.take(n as u64).read_to_end(&mut head))
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(Some(head))
}

/// A segment to code: an .npy file, read when its turn comes, or one from a dataset shard.
pub enum Input {
    File(PathBuf),
    Loaded(Segment),
}

impl Input {
    /// The name the segment is stored and restored under.
    pub fn name(&self) -> String {
        match self {
            Input::File(p) => p.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            Input::Loaded(s) => s.name.clone(),
        }
    }

    /// An upper bound on the segment's tokens without reading it: an .npy file holds at
    /// least two bytes per token.
    pub fn max_tokens(&self) -> usize {
        match self {
            Input::File(p) => std::fs::metadata(p).map_or(0, |m| m.len() as usize / 2),
            Input::Loaded(s) => s.tokens.len(),
        }
    }

    pub fn segment(&self) -> Result<Segment> {
        match self {
            Input::File(p) => read_segment_file(p),
            Input::Loaded(s) => Ok(s.clone()),
        }
    }
}

/// Check, before any coding, that a file can be written at `path`: not a directory, not an
/// existing file unless `force`, and in a directory that exists and takes new files. Hours of
/// coding must not end in a typo's error.
pub fn check_output(path: &Path, force: bool) -> Result<()> {
    if is_stream(path) {
        return check_stream(path);
    }
    let target = resolve(path, force)?;
    check_target(&target, force)?;
    check_dir_writable(parent(&target)).with_context(|| format!("{}: cannot be written", path.display()))
}

/// The file that writing `path` replaces: `path` itself or, with `force`, the target of the
/// symlink at `path`, so that a link stays a link.
fn resolve(path: &Path, force: bool) -> Result<PathBuf> {
    if !path.is_symlink() {
        return Ok(path.to_path_buf());
    }
    ensure!(force, "{}: already exists, as a symlink (use --force to write to its target)", path.display());
    std::fs::canonicalize(path).with_context(|| format!("{}: a symlink whose target cannot be found", path.display()))
}

/// The overwrite rules for one resolved output file.
fn check_target(path: &Path, force: bool) -> Result<()> {
    ensure!(!path.is_dir(), "{}: is a directory", path.display());
    ensure!(force || !path.exists(), "{}: already exists (use --force to replace it)", path.display());
    Ok(())
}

/// The directory a file path lies in (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A directory's own check: it exists and a file can be created in it (tried, not guessed
/// from permission bits, which neither root nor read-only mounts follow).
fn check_dir_writable(dir: &Path) -> Result<()> {
    ensure!(dir.is_dir(), "{}: no such directory", dir.display());
    let probe = Temporary::new(dir.join(format!(".cvq-probe-{}", std::process::id())));
    std::fs::File::create(&probe.0)
        .with_context(|| format!("{}: cannot create files in this directory", dir.display()))?;
    Ok(())
}

/// Make `dir` (and its parents) and check that files can be written in it; each file's own
/// rules are `check_output`'s, one call per file.
pub fn output_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create directory", dir.display()))?;
    check_dir_writable(dir)
}

/// Whether `path` is written as a stream, in place and in order: `-` (stdout) or an existing
/// file that is not a regular one (a pipe, /dev/stdout, /dev/null). Other paths are files,
/// replaced whole.
fn is_stream(path: &Path) -> bool {
    is_std(path) || std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// cvq writes binary data: never onto a terminal.
fn check_stream(path: &Path) -> Result<()> {
    #[cfg(unix)]
    let device = || {
        use std::os::unix::fs::FileTypeExt;
        // Only a character device can be a terminal; opening a pipe could wait for a reader.
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
            && std::fs::File::options().write(true).open(path).is_ok_and(|f| f.is_terminal())
    };
    #[cfg(not(unix))]
    let device = || false;
    let terminal = if is_std(path) { std::io::stdout().is_terminal() } else { device() };
    ensure!(
        !terminal,
        "{}: is a terminal, and cvq writes binary data: redirect it to a file or a pipe",
        shown(path, "stdout")
    );
    Ok(())
}

/// A path as messages name it: `-` is `std` (stdin or stdout).
pub fn shown(path: &Path, std: &str) -> String {
    if is_std(path) {
        std.into()
    } else {
        path.display().to_string()
    }
}

/// The bytes of a file, or of stdin for `-`.
pub fn read_all(path: &Path) -> Result<Vec<u8>> {
    if !is_std(path) {
        return std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()));
    }
    let mut bytes = vec![];
    std::io::stdin().lock().read_to_end(&mut bytes).context("stdin: cannot read")?;
    Ok(bytes)
}

/// Write `bytes` to `path`: streams (see `is_stream`) as they are, files atomically.
pub fn write_output(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    if !is_stream(path) {
        return write_atomic(path, bytes, force);
    }
    let result = if is_std(path) {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes).and_then(|()| out.flush())
    } else {
        std::fs::File::options().write(true).open(path).and_then(|mut f| f.write_all(bytes))
    };
    result.with_context(|| format!("{}: cannot write", shown(path, "stdout")))
}

/// Write `bytes` to a temporary file beside the file `path` names (the target of a symlink
/// with `force`), then rename it into place.
fn write_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    let target = resolve(path, force)?;
    check_target(&target, force)?;
    let name = target.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp =
        Temporary::new(parent(&target).join(format!(".{}.cvq-tmp-{}", name.to_string_lossy(), std::process::id())));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp.0)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        pause_for_tests();
        std::fs::rename(&tmp.0, &target)?;
        Ok(())
    })();
    result.with_context(|| format!("{}: cannot write", path.display()))
}

/// A test hook: `CVQ_TEST_PAUSE_BEFORE_RENAME=MS` holds each written temporary file for MS
/// milliseconds, so that a test can interrupt a write (tests/cli.rs).
fn pause_for_tests() {
    if let Some(ms) = std::env::var("CVQ_TEST_PAUSE_BEFORE_RENAME").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// The temporary files being written, for `remove_temporary_files_on_signals`.
static TEMPORARY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A temporary file's name, registered while it lives; dropped, the file is removed (after a
/// rename there is nothing left to remove).
struct Temporary(PathBuf);

impl Temporary {
    fn new(path: PathBuf) -> Temporary {
        TEMPORARY.lock().unwrap_or_else(|e| e.into_inner()).push(path.clone());
        Temporary(path)
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        let mut live = TEMPORARY.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|p| p != &self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Make SIGINT, SIGTERM and SIGHUP remove every temporary file before the process dies of
/// them, so that an interrupted run leaves no half-written file behind. Call it before any
/// other thread exists: the signals are blocked in every thread (new ones inherit the mask)
/// and one thread waits for them, where taking a lock and removing files is safe (a signal
/// handler could do neither).
#[cfg(unix)]
pub fn remove_temporary_files_on_signals() {
    // SAFETY: plain libc calls on a sigset_t owned here.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut signal = 0;
        // SAFETY: waits for one of the blocked signals.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            return;
        }
        for tmp in TEMPORARY.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::fs::remove_file(tmp);
        }
        // Die of the signal as if it had not been caught: the shell sees 128 + its number.
        // SAFETY: restores the default action and unblocks the signal in this thread only.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(signal);
        }
    });
}

/// Memory available to new work, if the system says: Linux's MemAvailable, or less where a
/// cgroup (v2) limit leaves less, as in a container.
pub fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let system = line.split_whitespace().nth(1)?.parse::<usize>().ok()? << 10;
    let read =
        |f: &str| std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(f)).ok()?.trim().parse::<usize>().ok();
    // memory.max reads "max" where there is no limit, which does not parse.
    let cgroup = read("memory.max").map(|max| max.saturating_sub(read("memory.current").unwrap_or(0)));
    Some(cgroup.map_or(system, |c| c.min(system)))
}
