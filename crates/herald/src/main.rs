//! The `herald` binary: parses the command line and hands it to the library. Exit codes: 0
//! success, 1 the server answered with an error, 2 usage error, 3 the server cannot be reached
//! (see `herald --help`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    herald::run(herald::Cli::parse())
}
