fn main() {
    // Piped into `head` and the like, stop quietly as other Unix tools do, instead of
    // panicking on the closed stdout.
    #[cfg(unix)]
    // SAFETY: restoring the default action of a signal, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = cvq::cli::main() {
        eprintln!("cvq: error: {e:#}");
        std::process::exit(1);
    }
}
