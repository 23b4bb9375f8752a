//! The command line's own definitions.

use super::Cli;
use clap::{CommandFactory, Parser};

/// `cvq help CMD` explains every argument of every command, positional ones included.
#[test]
fn every_argument_has_help_text() {
    let cli = Cli::command();
    let mut missing = vec![];
    for command in cli.get_subcommands() {
        for arg in command.get_arguments().filter(|a| !a.is_hide_set() && a.get_help().is_none()) {
            missing.push(format!("{} {}", command.get_name(), arg.get_id()));
        }
    }
    assert!(missing.is_empty(), "arguments without help text: {missing:?}");
}

#[test]
fn zero_threads_is_refused() {
    for command in [&["test", "a.cvq"][..], &["eval", "x"], &["compress", "x", "-o", "a.cvq"]] {
        let args = [&["cvq"][..], command, &["-j", "0"]].concat();
        let err = Cli::try_parse_from(&args).err().expect("-j 0 refused").to_string();
        assert!(err.contains("at least 1 thread"), "{args:?}: {err}");
        assert!(Cli::try_parse_from([&args[..args.len() - 1], &["2"]].concat()).is_ok(), "{args:?} with -j 2");
    }
}
