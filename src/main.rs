fn main() {
    if let Err(e) = cvq::cli::main() {
        eprintln!("cvq: error: {e:#}");
        std::process::exit(1);
    }
}
