//! The `cvq` binary as a user runs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cvq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvq")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A directory of dataset-style segments: names without extension, as in commaVQ.
fn dataset_dir(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let names: Vec<String> = (0..3).map(|i| format!("3b41c0fa8959aea6c118e5714f412a2e_{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let seg = common::synthetic(name, 12 + i, i as u64);
        std::fs::write(dir.join(name), seg.to_npy_bytes().unwrap()).unwrap();
    }
    names
}

#[test]
fn compress_then_decompress_restores_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = dataset_dir(&input);
    let archive = tmp.path().join("a.cvq");
    let out = tmp.path().join("out");
    let c = cvq(&["compress", p(&input), "-o", p(&archive), "-j", "2"]);
    assert!(c.status.success(), "{}", stderr(&c));
    assert!(stderr(&c).contains("compressed 3 segments"), "{}", stderr(&c));
    assert!(stderr(&c).contains("bits/token of archive"), "{}", stderr(&c));
    let d = cvq(&["decompress", p(&archive), "-o", p(&out)]);
    assert!(d.status.success(), "{}", stderr(&d));
    for name in &names {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), std::fs::read(input.join(name)).unwrap());
    }
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), names.len(), "no stray temporary files");
}

#[test]
fn clip_through_the_binary_is_byte_identical() {
    let clip = common::real_data("clip.npy");
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("clip.cvq");
    assert!(cvq(&["compress", p(&clip), "-o", p(&archive)]).status.success());
    let d = cvq(&["decompress", p(&archive), "-o", p(tmp.path())]);
    assert!(d.status.success(), "{}", stderr(&d));
    assert_eq!(std::fs::read(tmp.path().join("clip.npy")).unwrap(), std::fs::read(&clip).unwrap());
}

#[test]
fn existing_outputs_are_not_overwritten_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = dataset_dir(&input);
    let archive = tmp.path().join("a.cvq");
    std::fs::write(&archive, b"keep me").unwrap();
    let c = cvq(&["compress", p(&input), "-o", p(&archive)]);
    assert!(!c.status.success());
    assert!(stderr(&c).contains("already exists (use --force"), "{}", stderr(&c));
    assert_eq!(std::fs::read(&archive).unwrap(), b"keep me");
    assert!(cvq(&["compress", p(&input), "-o", p(&archive), "--force"]).status.success());

    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join(&names[1]), b"keep me too").unwrap();
    let d = cvq(&["decompress", p(&archive), "-o", p(&out)]);
    assert!(!d.status.success());
    assert!(stderr(&d).contains(&names[1]), "{}", stderr(&d));
    assert_eq!(std::fs::read(out.join(&names[1])).unwrap(), b"keep me too");
    assert!(!out.join(&names[0]).exists(), "nothing is written when any output would be overwritten");
    assert!(cvq(&["decompress", p(&archive), "-o", p(&out), "--force"]).status.success());
    assert_eq!(std::fs::read(out.join(&names[1])).unwrap(), std::fs::read(input.join(&names[1])).unwrap());
}

#[test]
fn bad_inputs_are_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("seg_7");
    let data: Vec<u8> = [5i16, 1024].repeat(64).iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut file = cvq::data::npy::npy_header("<i2", false, &[1, 128]);
    file.extend(data);
    std::fs::write(&bad, file).unwrap();
    let c = cvq(&["compress", p(&bad), "-o", p(&tmp.path().join("a.cvq"))]);
    assert!(!c.status.success());
    let err = stderr(&c);
    assert!(err.contains("seg_7") && err.contains("value 1024 out of range"), "{err}");
    assert!(!tmp.path().join("a.cvq").exists(), "no archive is left behind");

    let missing = cvq(&["compress", "/nonexistent/x", "-o", p(&tmp.path().join("b.cvq"))]);
    assert!(stderr(&missing).contains("/nonexistent/x: cannot read"), "{}", stderr(&missing));

    let garbage = tmp.path().join("garbage.cvq");
    std::fs::write(&garbage, b"not an archive").unwrap();
    let d = cvq(&["decompress", p(&garbage), "-o", p(&tmp.path().join("o"))]);
    assert!(stderr(&d).contains("garbage.cvq") && stderr(&d).contains("not a cvq archive"), "{}", stderr(&d));
}

#[test]
fn duplicate_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    dataset_dir(&a);
    dataset_dir(&b);
    let c = cvq(&["compress", p(&a), p(&b), "-o", p(&tmp.path().join("x.cvq"))]);
    assert!(stderr(&c).contains("two segments are named"), "{}", stderr(&c));
}

#[test]
fn eval_reports_each_segment_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = dataset_dir(&input);
    let e = cvq(&["eval", p(&input)]);
    assert!(e.status.success(), "{}", stderr(&e));
    let out = String::from_utf8(e.stdout).unwrap();
    for name in &names {
        assert!(out.contains(name.as_str()), "{out}");
    }
    assert!(out.contains("evaluated 3 segments"), "{out}");
    assert_eq!(std::fs::read_dir(&input).unwrap().count(), 3);
}

#[test]
fn pack_refuses_a_bad_decoder_and_an_existing_zip() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    dataset_dir(&input);
    let zip = tmp.path().join("submission.zip");
    let pack = |decoder: &Path| {
        cvq(&["pack", p(&input), "--predictor", "context-mix", "--decoder", p(decoder), "-o", p(&zip)])
    };
    let missing = pack(&tmp.path().join("none.xz"));
    assert!(stderr(&missing).contains("none.xz: cannot read the decoder (build it with scripts/build-decoder.sh)"));
    let not_xz = tmp.path().join("cvq");
    std::fs::write(&not_xz, b"\x7fELF").unwrap();
    assert!(stderr(&pack(&not_xz)).contains("cvq: not an xz file"), "{}", stderr(&pack(&not_xz)));
    assert!(!zip.exists(), "no zip is left behind");
    std::fs::write(&zip, b"keep me").unwrap();
    let xz = tmp.path().join("cvq.xz");
    std::fs::write(&xz, b"\xfd7zXZ\0").unwrap();
    assert!(stderr(&pack(&xz)).contains("already exists (use --force"));
    assert_eq!(std::fs::read(&zip).unwrap(), b"keep me");
}

/// An npy file of `header` (dictionary `dict`, npy version 1 or 2) and `data`.
fn crafted_npy(version: u8, dict: &str, pad_to: usize, data: &[u8]) -> Vec<u8> {
    let prefix = if version == 1 { 10 } else { 12 };
    let mut dict = dict.as_bytes().to_vec();
    dict.resize(pad_to - prefix - 1, b' ');
    dict.push(b'\n');
    let mut out = vec![0x93, b'N', b'U', b'M', b'P', b'Y', version, 0];
    match version {
        1 => out.extend((dict.len() as u16).to_le_bytes()),
        _ => out.extend((dict.len() as u32).to_le_bytes()),
    }
    out.extend(dict);
    out.extend(data);
    out
}

#[test]
fn files_the_archive_could_not_restore_are_refused_before_coding() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.cvq");
    // 2^61 frames of 128 int16 tokens: 2^69 bytes, which wrapped to 0 unchecked.
    let wraps = tmp.path().join("wraps.npy");
    let dict = "{'descr': '<i2', 'fortran_order': False, 'shape': (2305843009213693952, 8, 16), }";
    std::fs::write(&wraps, crafted_npy(1, dict, 128, &[])).unwrap();
    let c = cvq(&["compress", p(&wraps), "-o", p(&archive), "--predictor", "context-mix"]);
    assert!(!c.status.success());
    assert!(stderr(&c).contains("wraps.npy: not a valid token segment: header's 2305843009213693952 frames are more bytes than any file holds"), "{}", stderr(&c));
    // A valid npy v2 file whose header is longer than an archive may store.
    let long = tmp.path().join("long_header.npy");
    let dict = "{'descr': '<i2', 'fortran_order': False, 'shape': (1, 8, 16), }";
    std::fs::write(&long, crafted_npy(2, dict, 65_600, &[0; 256])).unwrap();
    let c = cvq(&["compress", p(&long), "-o", p(&archive), "--predictor", "context-mix"]);
    assert!(!c.status.success());
    assert!(
        stderr(&c).contains("long_header.npy: npy header of 65600 bytes exceeds the limit of 65536"),
        "{}",
        stderr(&c)
    );
    assert!(!archive.exists(), "no archive is left behind");
}

#[test]
fn verify_decodes_the_archive_before_writing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    dataset_dir(&input);
    let archive = tmp.path().join("a.cvq");
    let c = cvq(&["compress", p(&input), "-o", p(&archive), "--predictor", "context-mix", "--verify"]);
    assert!(c.status.success(), "{}", stderr(&c));
    assert!(stderr(&c).contains("verified: every segment decodes to its token checksum"), "{}", stderr(&c));
    assert!(archive.exists());
}

#[test]
fn a_zero_frame_segment_round_trips_and_the_summary_counts_right() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("empty.npy");
    std::fs::write(&input, cvq::data::Segment::int16("empty.npy", vec![]).to_npy_bytes().unwrap()).unwrap();
    let archive = tmp.path().join("e.cvq");
    let c = cvq(&["compress", p(&input), "-o", p(&archive)]);
    assert!(c.status.success(), "{}", stderr(&c));
    // No bits per token of nothing; "1 segment", not "1 segments".
    assert!(stderr(&c).starts_with("compressed 1 segment, 0 tokens, "), "{}", stderr(&c));
    assert!(!stderr(&c).contains("bits/token"), "{}", stderr(&c));
    let d = cvq(&["decompress", p(&archive), "-o", p(&tmp.path().join("out"))]);
    assert!(d.status.success(), "{}", stderr(&d));
    assert_eq!(std::fs::read(tmp.path().join("out/empty.npy")).unwrap(), std::fs::read(&input).unwrap());
}

/// `cvq` with `input` on stdin.
fn cvq_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cvq"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn segments_stream_through_stdin_and_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let names = dataset_dir(&tmp.path().join("in"));
    let original = std::fs::read(tmp.path().join("in").join(&names[0])).unwrap();
    let c = cvq_stdin(&["compress", "-", "--name", &names[0], "-o", "-", "--predictor", "context-mix"], &original);
    assert!(c.status.success(), "{}", stderr(&c));
    let d = cvq_stdin(&["decompress", "-", "-o", "-"], &c.stdout);
    assert!(d.status.success(), "{}", stderr(&d));
    assert_eq!(d.stdout, original);
    // The name given is the name restored.
    let out = tmp.path().join("out");
    assert!(cvq_stdin(&["decompress", "-", "-o", p(&out)], &c.stdout).status.success());
    assert_eq!(std::fs::read(out.join(&names[0])).unwrap(), original);

    let unnamed = cvq_stdin(&["compress", "-", "-o", "-"], &original);
    assert!(stderr(&unnamed).contains("name it with --name"), "{}", stderr(&unnamed));
    let archive = tmp.path().join("three.cvq");
    assert!(cvq(&["compress", p(&tmp.path().join("in")), "-o", p(&archive), "--predictor", "context-mix"])
        .status
        .success());
    let many = cvq(&["decompress", p(&archive), "-o", "-"]);
    assert!(stderr(&many).contains("-o - writes one segment to stdout, and 3 are to be restored"), "{}", stderr(&many));
    // A device is written in place, not replaced.
    assert!(cvq(&["compress", p(&tmp.path().join("in")), "-o", "/dev/null", "--predictor", "context-mix"])
        .status
        .success());
}

#[test]
fn outputs_are_checked_before_any_coding() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    dataset_dir(&input);
    let compress = |out: &Path, force: bool| {
        let mut args = vec!["compress", p(&input), "-o", p(out), "--predictor", "context-mix"];
        if force {
            args.push("--force");
        }
        cvq(&args)
    };
    let err = |o: Output| {
        assert!(!o.status.success());
        assert!(!stderr(&o).contains("compressed"), "refused after coding: {}", stderr(&o));
        stderr(&o)
    };
    assert!(err(compress(&tmp.path().join("none/a.cvq"), false)).contains("none: no such directory"));
    assert!(err(compress(&input, true)).contains("in: is a directory"));
    assert!(err(compress(Path::new("/proc/a.cvq"), false)).contains("/proc: cannot create files in this directory"));
    let d = cvq(&["decompress", p(&tmp.path().join("x.cvq")), "-o", "/proc/out"]);
    assert!(!d.status.success());

    // --force writes through a symlink to its target; without it the link is refused.
    let target = tmp.path().join("target.cvq");
    std::fs::write(&target, b"old").unwrap();
    let link = tmp.path().join("link.cvq");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(err(compress(&link, false)).contains("already exists, as a symlink"));
    assert!(compress(&link, true).status.success());
    assert!(link.is_symlink(), "the link stays a link");
    assert!(std::fs::read(&target).unwrap().starts_with(b"CVQA"), "its target holds the archive");
    let dangling = tmp.path().join("dangling.cvq");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
    assert!(err(compress(&dangling, true)).contains("a symlink whose target cannot be found"));
}

#[test]
fn subdirectories_are_read_with_r_and_otherwise_skipped_with_a_note() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    dataset_dir(&input);
    let sub = input.join("more");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("extra_0"), common::synthetic("extra_0", 5, 9).to_npy_bytes().unwrap()).unwrap();
    let list = |archive: &Path| String::from_utf8(cvq(&["list", p(archive)]).stdout).unwrap();
    let flat = tmp.path().join("flat.cvq");
    let c = cvq(&["compress", p(&input), "-o", p(&flat), "--predictor", "context-mix"]);
    assert!(stderr(&c).contains("more: skipped, a directory (-r reads subdirectories)"), "{}", stderr(&c));
    assert!(!list(&flat).contains("extra_0"));
    let deep = tmp.path().join("deep.cvq");
    assert!(cvq(&["compress", "-r", p(&input), "-o", p(&deep), "--predictor", "context-mix"]).status.success());
    assert!(list(&deep).contains("extra_0"), "{}", list(&deep));
}

#[test]
fn list_and_test_read_an_archive_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = dataset_dir(&input);
    let archive = tmp.path().join("a.cvq");
    assert!(cvq(&["compress", p(&input), "-o", p(&archive), "--predictor", "context-mix"]).status.success());
    let l = cvq(&["list", p(&archive)]);
    let out = String::from_utf8(l.stdout).unwrap();
    assert!(out.contains("(context-mix)"), "{out}");
    for (i, name) in names.iter().enumerate() {
        let line = out.lines().find(|l| l.starts_with(name.as_str())).unwrap();
        assert_eq!(line.split_whitespace().nth(1), Some((12 + i).to_string().as_str()), "{line}");
    }
    assert!(out.contains("listed 3 segments, 4992 tokens, "), "{out}");
    let t = cvq(&["test", p(&archive)]);
    assert!(t.status.success(), "{}", stderr(&t));
    assert!(stderr(&t).contains("tested 3 segments"), "{}", stderr(&t));

    // Damage in two payloads, one of them in its last byte (the range coder's flush): each is
    // named, and test fails.
    let mut bytes = std::fs::read(&archive).unwrap();
    let (first, last) = {
        let a = cvq::archive::parse(&bytes).unwrap();
        (a.entries[0].payload.start, a.entries[2].payload.end - 1)
    };
    bytes[first] ^= 0x10;
    bytes[last] ^= 1;
    let damaged = tmp.path().join("damaged.cvq");
    std::fs::write(&damaged, &bytes).unwrap();
    let t = cvq(&["test", p(&damaged)]);
    assert_eq!(t.status.code(), Some(1));
    let err = stderr(&t);
    for i in [0, 2] {
        assert!(err.contains(&format!("segment {} ({}): payload is damaged", i + 1, names[i])), "{err}");
    }
    assert!(err.contains("2 of 3 segments damaged"), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 3, "test writes nothing");
}

/// Compress `dataset_dir` with the context mixer into `a.cvq` and flip one byte in the middle
/// of segment `damage`'s payload (if any); returns the names and the archive.
fn damaged_archive(tmp: &Path, damage: Option<usize>) -> (Vec<String>, PathBuf) {
    let input = tmp.join("in");
    let names = dataset_dir(&input);
    let archive = tmp.join("a.cvq");
    assert!(cvq(&["compress", p(&input), "-o", p(&archive), "--predictor", "context-mix"]).status.success());
    if let Some(i) = damage {
        let mut bytes = std::fs::read(&archive).unwrap();
        let range = cvq::archive::parse(&bytes).unwrap().entries[i].payload.clone();
        bytes[(range.start + range.end) / 2] ^= 0x20;
        std::fs::write(&archive, &bytes).unwrap();
    }
    (names, archive)
}

#[test]
fn damage_is_local_every_intact_segment_is_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let (names, archive) = damaged_archive(tmp.path(), Some(1));
    let out = tmp.path().join("out");
    let d = cvq(&["decompress", p(&archive), "-o", p(&out)]);
    assert_eq!(d.status.code(), Some(1), "{}", stderr(&d));
    let err = stderr(&d);
    assert!(err.contains(&format!("damaged: segment 2 ({}): payload is damaged", names[1])), "{err}");
    assert!(err.contains("1 of 3 segments damaged (named above), the other 2 restored"), "{err}");
    assert!(!out.join(&names[1]).exists(), "nothing is written for the damaged segment");
    for i in [0, 2] {
        let original = std::fs::read(tmp.path().join("in").join(&names[i])).unwrap();
        assert_eq!(std::fs::read(out.join(&names[i])).unwrap(), original, "{}", names[i]);
    }
    // A part without the damaged segment restores cleanly; the part with it restores the rest.
    let part = |i: &str| cvq(&["decompress", p(&archive), "-o", p(&tmp.path().join(i)), "--part", i]);
    assert!(part("1/3").status.success() && part("3/3").status.success());
    let middle = part("2/3");
    assert_eq!(middle.status.code(), Some(1));
    assert!(stderr(&middle).contains("1 of 1 segment damaged"), "{}", stderr(&middle));
    // test names the same segment.
    let t = cvq(&["test", p(&archive)]);
    assert_eq!(t.status.code(), Some(1));
    assert!(stderr(&t).contains(&format!("segment 2 ({})", names[1])), "{}", stderr(&t));
    assert!(stderr(&t).contains("1 of 3 segments damaged (named above), the other 2 tested"), "{}", stderr(&t));
}

#[test]
fn skip_existing_keeps_only_files_that_hold_their_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let (names, archive) = damaged_archive(tmp.path(), None);
    let out = tmp.path().join("out");
    let decompress = |extra: &[&str]| cvq(&[&["decompress", p(&archive), "-o", p(&out)], extra].concat());
    assert!(decompress(&[]).status.success());
    // An interrupted run: one file missing, one with the right header and wrong tokens.
    std::fs::remove_file(out.join(&names[0])).unwrap();
    let mut wrong = std::fs::read(out.join(&names[1])).unwrap();
    *wrong.last_mut().unwrap() ^= 1;
    std::fs::write(out.join(&names[1]), &wrong).unwrap();
    let kept = std::fs::metadata(out.join(&names[2])).unwrap().modified().unwrap();

    let refused = decompress(&[]);
    assert!(stderr(&refused).contains("already exists (use --force"), "{}", stderr(&refused));
    let refused = decompress(&["--skip-existing"]);
    assert_eq!(refused.status.code(), Some(1));
    let expected = format!("{}: already exists and does not hold segment {}", out.join(&names[1]).display(), names[1]);
    assert!(stderr(&refused).contains(&expected), "{}", stderr(&refused));
    assert!(!out.join(&names[0]).exists(), "refused before any write");

    let resumed = decompress(&["--skip-existing", "--force"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("kept 1 file already restored"), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("decompressed 2 segments"), "{}", stderr(&resumed));
    for name in &names {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), std::fs::read(tmp.path().join("in").join(name)).unwrap());
    }
    assert_eq!(std::fs::metadata(out.join(&names[2])).unwrap().modified().unwrap(), kept, "kept, not rewritten");
}

#[cfg(unix)]
#[test]
fn a_signal_during_a_write_leaves_no_temporary_file() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let (_, archive) = damaged_archive(tmp.path(), None);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let temporary = || {
        std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("cvq-tmp"))
            .count()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_cvq"))
        .args(["decompress", p(&archive), "-o", p(&out)])
        .env("CVQ_TEST_PAUSE_BEFORE_RENAME", "20000")
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while temporary() == 0 {
        assert!(start.elapsed().as_secs() < 30, "no temporary file appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sends SIGINT to the child, as Ctrl-C would.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(start.elapsed().as_secs() < 15, "the signal ended the run at once");
    assert_eq!(temporary(), 0, "the temporary file was removed");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "and nothing else was written");
}

#[test]
fn quiet_says_nothing_verbose_names_each_segment_and_every_command_has_a_version() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = dataset_dir(&input);
    let archive = tmp.path().join("a.cvq");
    let q = cvq(&["compress", "-q", p(&input), "-o", p(&archive), "--predictor", "context-mix"]);
    assert!(q.status.success() && q.stderr.is_empty(), "{}", stderr(&q));
    let v = cvq(&["decompress", "-v", p(&archive), "-o", p(&tmp.path().join("out"))]);
    for name in &names {
        assert!(stderr(&v).contains(&format!("{name}: ")), "{}", stderr(&v));
    }
    for command in
        ["compress", "decompress", "list", "test", "merge", "extract", "eval", "pack", "bench", "plot", "synth"]
    {
        let o = cvq(&[command, "--version"]);
        assert!(o.status.success(), "{command}");
        assert!(String::from_utf8(o.stdout).unwrap().contains(env!("CARGO_PKG_VERSION")), "{command}");
    }
}

#[test]
fn parts_coded_apart_and_merged_equal_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = dataset_dir(&input);
    let whole = tmp.path().join("whole.cvq");
    let cm = ["--predictor", "context-mix"];
    assert!(cvq(&[&["compress", p(&input), "-o", p(&whole)][..], &cm].concat()).status.success());
    let parts: Vec<String> = (1..=2).map(|i| p(&tmp.path().join(format!("part{i}.cvq"))).to_string()).collect();
    for (i, part) in parts.iter().enumerate() {
        let slice = format!("{}/2", i + 1);
        let c = cvq(&[&["compress", p(&input), "--part", &slice, "-o", part][..], &cm].concat());
        assert!(c.status.success(), "{}", stderr(&c));
    }
    let merged = tmp.path().join("merged.cvq");
    let m = cvq(&["merge", &parts[0], &parts[1], "-o", p(&merged)]);
    assert!(m.status.success(), "{}", stderr(&m));
    assert!(stderr(&m).contains("merged 2 archives"), "{}", stderr(&m));
    // Segments are independent streams: the merged parts are the one-run archive, byte for byte.
    assert_eq!(std::fs::read(&merged).unwrap(), std::fs::read(&whole).unwrap());

    // Decompressing by parts restores every file once.
    let out = tmp.path().join("out");
    for slice in ["1/3", "2/3", "3/3"] {
        let d = cvq(&["decompress", p(&merged), "--part", slice, "-o", p(&out)]);
        assert!(d.status.success(), "{}", stderr(&d));
        assert!(stderr(&d).contains("decompressed 1 segment,"), "{}", stderr(&d));
    }
    for name in &names {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), std::fs::read(input.join(name)).unwrap());
    }

    let twice = cvq(&["merge", &parts[0], &parts[0], "-o", p(&tmp.path().join("twice.cvq"))]);
    assert!(stderr(&twice).contains("two segments are named"), "{}", stderr(&twice));
    let neural = tmp.path().join("neural.cvq");
    let one = input.join(&names[0]);
    assert!(cvq(&["compress", p(&one), "--predictor", "neural", "-o", p(&neural)]).status.success());
    let mixed = cvq(&["merge", &parts[1], p(&neural), "-o", p(&tmp.path().join("mixed.cvq"))]);
    assert!(stderr(&mixed).contains("only archives of one model merge"), "{}", stderr(&mixed));
    let bad = cvq(&["compress", p(&input), "--part", "3/2", "-o", p(&tmp.path().join("x.cvq"))]);
    assert!(stderr(&bad).contains("a part is I/N with 1 <= I <= N"), "{}", stderr(&bad));
}

#[test]
fn extract_writes_a_shards_segments_as_the_dataset_files() {
    let tmp = tempfile::tempdir().unwrap();
    let segs: Vec<_> =
        (0..2).map(|i| common::synthetic(&format!("0a1b2c3d4e5f60718293a4b5c6d7e8f9_{i}"), 4, i)).collect();
    let shard = tmp.path().join("data-0000.tar.gz");
    cvq::data::shard::write_shard(&shard, &segs).unwrap();
    let out = tmp.path().join("originals");
    let e = cvq(&["extract", p(&shard), "-o", p(&out)]);
    assert!(e.status.success(), "{}", stderr(&e));
    assert!(stderr(&e).contains("extracted 2 segments from 1 shard"), "{}", stderr(&e));
    for s in &segs {
        assert_eq!(std::fs::read(out.join(&s.name)).unwrap(), s.to_npy_bytes().unwrap());
    }
    let again = cvq(&["extract", p(&shard), "-o", p(&out)]);
    assert!(stderr(&again).contains("already exists (use --force"), "{}", stderr(&again));
}

/// The repository's `tests/data`: the clip and the archives earlier releases wrote of it
/// (they ship with the repository whatever `CVQ_DATA` says).
fn shipped_data() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

#[test]
fn every_archive_of_an_earlier_release_decodes_out_of_the_box() {
    // tests/data/README.md: the clip's first three frames, written by cvq 0.1.0 to 0.6.0
    // with built-in weights. Ids are never retired (FORMAT.md, section 4.1).
    let clip = cvq::data::read_segment_file(&shipped_data().join("clip.npy")).unwrap();
    let name = "3b41c0fa8959aea6c118e5714f412a2e_13";
    let expected = cvq::data::Segment::int16(name, clip.tokens[..3 * 128].to_vec()).to_npy_bytes().unwrap();
    let mut archives: Vec<_> = std::fs::read_dir(shipped_data())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some("cvq".as_ref()))
        .collect();
    archives.sort();
    assert!(archives.len() >= 10, "an archive of an earlier release is missing: {archives:?}");
    let tmp = tempfile::tempdir().unwrap();
    for archive in &archives {
        // cvq-0.3-mixed-adaptive.cvq: written by the mixed-adaptive predictor.
        let stem = archive.file_stem().unwrap().to_str().unwrap();
        let predictor = stem.splitn(3, '-').nth(2).unwrap();
        let listed = String::from_utf8(cvq(&["list", p(archive)]).stdout).unwrap();
        assert!(listed.contains(&format!("({predictor}")), "{stem}: {listed}");
        let out = tmp.path().join(stem);
        let d = cvq(&["decompress", p(archive), "-o", p(&out)]);
        assert!(d.status.success(), "{stem}: {}", stderr(&d));
        assert!(std::fs::read(out.join(name)).unwrap() == expected, "{stem}: not the clip's first three frames");
    }
}

#[test]
fn weights_given_override_the_built_in_ones_and_unknown_weights_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let old = shipped_data().join("cvq-0.2-mixed.cvq");
    let weights = |file: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join(file);
    let with = |w: &Path, out: &str| cvq(&["decompress", p(&old), "-o", p(&tmp.path().join(out)), "--weights", p(w)]);
    assert!(with(&weights("cvq-0.2.safetensors"), "given").status.success());
    // Given weights are the only ones tried, even where built-in ones would fit.
    let other = with(&weights("cvq-0.4.safetensors"), "other");
    assert!(stderr(&other).contains("archive was written by model e2c82ece299d8023..., which is neither the context mixer nor a model of weights 8b5dbf4780c7c83f..."), "{}", stderr(&other));

    // Weights neither built in nor given: the archive's model id is named.
    let random = tmp.path().join("random.safetensors");
    let spec = cvq::network::ModelSpec::new(1, 32, 2, 1, 64);
    std::fs::write(&random, cvq::network::Weights::random(spec, 3).unwrap().to_bytes().unwrap()).unwrap();
    let names = dataset_dir(&tmp.path().join("in"));
    let archive = tmp.path().join("random.cvq");
    let input = tmp.path().join("in").join(&names[0]);
    assert!(cvq(&["compress", p(&input), "--weights", p(&random), "-o", p(&archive)]).status.success());
    let id = cvq::archive::parse(&std::fs::read(&archive).unwrap()).unwrap().model_id;
    let d = cvq(&["decompress", p(&archive), "-o", p(&tmp.path().join("unknown"))]);
    assert_eq!(d.status.code(), Some(1));
    let expected = format!(
        "archive was written by model {}..., which needs neural weights that cvq {} does not carry: pass them with --weights",
        cvq::predict::hex(&id[..8]),
        env!("CARGO_PKG_VERSION")
    );
    assert!(stderr(&d).contains(&expected), "{}", stderr(&d));
}

#[test]
fn a_network_too_wide_to_adapt_is_refused_by_default_with_the_way_out() {
    // The default predictor learns online, which networks up to width 512 can.
    let tmp = tempfile::tempdir().unwrap();
    let wide = tmp.path().join("wide.safetensors");
    let spec = cvq::network::ModelSpec::new(1, 528, 2, 1, 16);
    std::fs::write(&wide, cvq::network::Weights::random(spec, 1).unwrap().to_bytes().unwrap()).unwrap();
    let input = tmp.path().join("3b41c0fa8959aea6c118e5714f412a2e_13");
    std::fs::write(&input, clip_segment("3b41c0fa8959aea6c118e5714f412a2e_13", 0..2).to_npy_bytes().unwrap()).unwrap();
    let archive = tmp.path().join("wide.cvq");
    let refused = cvq(&["compress", p(&input), "--weights", p(&wide), "-o", p(&archive)]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("have width 528: pass --predictor mixed or neural"), "{}", stderr(&refused));
    assert!(!archive.exists());
    let mixed = cvq(&["compress", p(&input), "--weights", p(&wide), "--predictor", "mixed", "-o", p(&archive)]);
    assert!(mixed.status.success(), "{}", stderr(&mixed));
}

/// Frames `frames` of the real clip as a dataset segment named `name`.
fn clip_segment(name: &str, frames: std::ops::Range<usize>) -> cvq::data::Segment {
    let tokens = common::clip().tokens[frames.start * 128..frames.end * 128].to_vec();
    cvq::data::Segment::int16(name, tokens)
}

/// A shard as commaai/commavq lays them out: per key a `<key>.json` whose `file_name` names
/// the segment's file, then its `<key>.token.npy`.
fn shard(path: &Path, members: &[(&str, &cvq::data::Segment)]) {
    let file = std::fs::File::create(path).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
    for (key, seg) in members {
        let json = serde_json::json!({ "file_name": format!("segments/{}", seg.name) }).to_string();
        for (member, data) in
            [(format!("{key}.json"), json.into_bytes()), (format!("{key}.token.npy"), seg.to_npy_bytes().unwrap())]
        {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, member, &data[..]).unwrap();
        }
    }
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn extract_refuses_a_name_two_members_give_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let segs: Vec<_> = (0..4).map(|i| clip_segment(&format!("seg_{}", i.min(2)), 3 * i..3 * i + 3)).collect();
    let (a, b) = (tmp.path().join("a.tar.gz"), tmp.path().join("b.tar.gz"));
    shard(&a, &[("k0", &segs[0]), ("k1", &segs[1])]);
    // seg_1 again, from another key of another shard.
    shard(&b, &[("k7", &segs[2]), ("k8", &clip_segment("seg_1", 9..12))]);
    let out = tmp.path().join("out");
    for force in [false, true] {
        let mut args = vec!["extract", p(&a), p(&b), "-o", p(&out)];
        if force {
            args.push("--force");
        }
        let e = cvq(&args);
        assert_eq!(e.status.code(), Some(1), "{}", stderr(&e));
        let expected = format!("{}: member k1.json and {}: member k8.json both name the file \"seg_1\"", p(&a), p(&b));
        assert!(stderr(&e).contains(&expected), "{}", stderr(&e));
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing is written");
    }
    // Within one shard too.
    let c = tmp.path().join("c.tar.gz");
    shard(&c, &[("k0", &segs[0]), ("k5", &segs[1]), ("k6", &clip_segment("seg_0", 20..21))]);
    let e = cvq(&["extract", p(&c), "-o", p(&out)]);
    let expected = format!("{0}: member k0.json and {0}: member k6.json both name the file \"seg_0\"", p(&c));
    assert!(stderr(&e).contains(&expected), "{}", stderr(&e));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing is written");
}

#[test]
fn extract_checks_every_target_before_writing_any() {
    let tmp = tempfile::tempdir().unwrap();
    let segs: Vec<_> = (0..3).map(|i| clip_segment(&format!("seg_{i}"), 2 * i..2 * i + 2)).collect();
    let (a, b) = (tmp.path().join("a.tar.gz"), tmp.path().join("b.tar.gz"));
    shard(&a, &[("000", &segs[0]), ("001", &segs[1])]);
    shard(&b, &[("002", &segs[2])]);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // The last target of the last shard exists.
    std::fs::write(out.join("seg_2"), b"keep me").unwrap();
    let e = cvq(&["extract", p(&a), p(&b), "-o", p(&out)]);
    assert_eq!(e.status.code(), Some(1));
    assert!(stderr(&e).contains("seg_2: already exists (use --force to replace it)"), "{}", stderr(&e));
    assert_eq!(std::fs::read(out.join("seg_2")).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "nothing is written");
    let e = cvq(&["extract", p(&a), p(&b), "-o", p(&out), "--force"]);
    assert!(stderr(&e).contains("extracted 3 segments from 2 shards"), "{}", stderr(&e));
    for s in &segs {
        assert_eq!(std::fs::read(out.join(&s.name)).unwrap(), s.to_npy_bytes().unwrap());
    }
}

#[test]
fn extract_points_a_cvq_archive_to_decompress() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("clip.cvq");
    let c = cvq(&["compress", p(&common::real_data("clip.npy")), "-o", p(&archive), "--predictor", "context-mix"]);
    assert!(c.status.success(), "{}", stderr(&c));
    let e = cvq(&["extract", p(&archive), "-o", p(&tmp.path().join("out"))]);
    assert_eq!(e.status.code(), Some(1));
    let expected =
        format!("{}: a cvq archive, not a dataset shard: restore its segments with `cvq decompress`", p(&archive));
    assert!(stderr(&e).contains(&expected), "{}", stderr(&e));
}

#[test]
fn hidden_files_are_skipped_and_other_strays_named_before_coding() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = dataset_dir(&input);
    std::fs::write(input.join(".DS_Store"), b"\0\0\0\x01Bud1").unwrap();
    std::fs::create_dir(input.join(".git")).unwrap();
    let archive = tmp.path().join("a.cvq");
    let c = cvq(&["compress", "-v", "-r", p(&input), "-o", p(&archive), "--predictor", "context-mix"]);
    assert!(c.status.success(), "{}", stderr(&c));
    assert!(stderr(&c).contains(".DS_Store: skipped, hidden"), "{}", stderr(&c));
    assert!(stderr(&c).contains("compressed 3 segments"), "{}", stderr(&c));
    let listed = String::from_utf8(cvq(&["list", p(&archive)]).stdout).unwrap();
    assert!(names.iter().all(|n| listed.contains(n.as_str())) && !listed.contains(".DS_Store"), "{listed}");

    std::fs::write(input.join("notes.txt"), b"segments from the March drive").unwrap();
    let c = cvq(&["compress", p(&input), "-o", p(&tmp.path().join("b.cvq")), "--predictor", "context-mix"]);
    assert_eq!(c.status.code(), Some(1));
    let expected = format!("{}: not a valid token segment: not an .npy file", p(&input.join("notes.txt")));
    assert!(stderr(&c).contains(&expected), "{}", stderr(&c));
    assert!(!stderr(&c).contains("compressed"), "refused before coding: {}", stderr(&c));
}

#[test]
fn an_output_in_an_input_directory_is_never_read_as_an_input() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = dataset_dir(&input);
    let archive = input.join("a.cvq");
    let compress = |out: &Path| cvq(&["compress", p(&input), "-o", p(out), "--predictor", "context-mix", "--force"]);
    let first = compress(&archive);
    assert!(first.status.success(), "{}", stderr(&first));
    let bytes = std::fs::read(&archive).unwrap();
    let again = compress(&archive);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("a.cvq: skipped, the output of this run"), "{}", stderr(&again));
    assert_eq!(std::fs::read(&archive).unwrap(), bytes, "the same three segments, not the archive as a fourth");

    // Another archive there is no segment: named at once.
    let other = compress(&input.join("b.cvq"));
    assert_eq!(other.status.code(), Some(1));
    assert!(stderr(&other).contains("a.cvq: a cvq archive, not a token segment"), "{}", stderr(&other));
    // An input given by name as the output would be read and then replaced.
    let seg = input.join(&names[0]);
    let original = std::fs::read(&seg).unwrap();
    let c = cvq(&["compress", p(&seg), "-o", p(&seg), "--force", "--predictor", "context-mix"]);
    assert_eq!(c.status.code(), Some(1));
    assert!(stderr(&c).contains("is both an input and the output"), "{}", stderr(&c));
    assert_eq!(std::fs::read(&seg).unwrap(), original);
}

#[test]
fn segments_are_numbered_from_1_as_part_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = dataset_dir(&input);
    let archive = tmp.path().join("a.cvq");
    assert!(cvq(&["compress", p(&input), "-o", p(&archive), "--predictor", "context-mix"]).status.success());
    // The second segment's token checksum is wrong and its payload intact: only decoding finds it.
    let bytes = std::fs::read(&archive).unwrap();
    let a = cvq::archive::parse(&bytes).unwrap();
    let coded: Vec<_> = a
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| cvq::archive::CodedSegment {
            name: e.name.clone(),
            header: a.headers[e.header].to_vec(),
            frames: e.frames,
            checksum: e.checksum ^ u32::from(i == 1),
            payload: a.payload(e).to_vec(),
        })
        .collect();
    let forged = tmp.path().join("forged.cvq");
    std::fs::write(&forged, cvq::archive::write(&a.model_id, &coded)).unwrap();
    let t = cvq(&["test", p(&forged)]);
    assert_eq!(t.status.code(), Some(1));
    assert!(stderr(&t).contains(&format!("segment 2 ({}): token checksum mismatch", names[1])), "{}", stderr(&t));
}

#[cfg(unix)]
#[test]
fn train_runs_the_trainer_beside_cvq_or_names_the_build_command() {
    use std::os::unix::fs::PermissionsExt;
    // A copy of cvq alone in a directory, with an empty PATH: no trainer to be found.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("cvq");
    std::fs::copy(env!("CARGO_BIN_EXE_cvq"), &copy).unwrap();
    let run = |args: &[&str]| Command::new(&copy).args(args).env("PATH", tmp.path().join("none")).output().unwrap();
    let missing = run(&["train", "--help"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("cargo build --release -p cvq-train"), "{}", stderr(&missing));

    // A stand-in trainer beside it gets every argument, --help included, and its exit status.
    let trainer = tmp.path().join("cvq-train");
    std::fs::write(&trainer, "#!/bin/sh\necho \"trainer: $*\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&trainer, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ran = run(&["train", "--dataset", "commaai/commavq", "-v", "--help"]);
    assert_eq!(ran.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "trainer: --dataset commaai/commavq -v --help\n");
}
