//! `herald bench`: runs the benchmarks, which live in their own binary, `herald-bench` (crate
//! `crates/herald-bench`), so that the server binary does not carry the peers' client
//! libraries (NATS, AMQP, PostgreSQL, Redis) used by the side-by-side comparison.
//!
//! The `herald-bench` next to the running `herald` is the one run (cargo builds both into the
//! same `target/<profile>/`); its subcommand defaults to `compare`, so `herald bench --quick`
//! is `herald-bench compare --quick`. Its output and exit code are passed through.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use crate::CommandError;
use crate::cli::{BenchArgs, GlobalArgs, Output};

/// herald-bench's subcommands; anything else first means `compare` plus those arguments.
const SUBCOMMANDS: [&str; 5] = ["compare", "publish", "queue", "log", "help"];

/// Runs `herald-bench` with `arguments`.
pub fn main(global: &GlobalArgs, arguments: BenchArgs) -> Result<(), CommandError> {
    let bench = bench_binary()?;
    let arguments = bench_arguments(global.output, arguments.arguments);
    let status = Command::new(&bench)
        .args(&arguments)
        .status()
        .map_err(|error| {
            CommandError::Failed(format!("cannot run {}: {error}", bench.display()))
        })?;
    match status.code() {
        Some(0) => Ok(()),
        // clap's code for bad flags, as ours.
        Some(2) => Err(CommandError::Usage(
            "herald-bench refused its arguments (see above)".to_owned(),
        )),
        _ => Err(CommandError::Failed(format!(
            "herald-bench failed ({status})"
        ))),
    }
}

/// `herald-bench` in the directory of the running executable.
fn bench_binary() -> Result<PathBuf, CommandError> {
    let herald = std::env::current_exe()
        .map_err(|error| CommandError::Failed(format!("cannot find this executable: {error}")))?;
    let directory = herald
        .parent()
        .ok_or_else(|| CommandError::Failed("this executable has no directory".to_owned()))?;
    let bench = directory.join(format!("herald-bench{}", std::env::consts::EXE_SUFFIX));
    if !bench.is_file() {
        let release = directory.file_name().is_some_and(|name| name == "release");
        return Err(CommandError::Failed(format!(
            "{} does not exist: `herald bench` runs herald-bench, built next to herald. Build it \
             with `cargo build {}-p herald -p herald-bench`",
            bench.display(),
            if release { "--release " } else { "" }
        )));
    }
    Ok(bench)
}

/// The arguments for `herald-bench`: `compare` unless a subcommand is named, and `--output
/// json` when `herald --output json` was given (the flag is global, so clap takes it before
/// the arguments are collected).
fn bench_arguments(output: Output, mut arguments: Vec<OsString>) -> Vec<OsString> {
    let named = arguments
        .first()
        .and_then(|first| first.to_str())
        .is_some_and(|first| SUBCOMMANDS.contains(&first));
    if !named {
        arguments.insert(0, "compare".into());
    }
    let has_output = arguments.iter().any(|argument| {
        argument
            .to_str()
            .is_some_and(|text| text == "--output" || text.starts_with("--output="))
    });
    if output == Output::Json && !has_output {
        arguments.push("--output".into());
        arguments.push("json".into());
    }
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(arguments: &[&str]) -> Vec<OsString> {
        arguments.iter().map(OsString::from).collect()
    }

    #[test]
    fn compare_is_the_default_subcommand() {
        assert_eq!(
            bench_arguments(Output::Table, strings(&["--quick"])),
            strings(&["compare", "--quick"])
        );
        assert_eq!(
            bench_arguments(Output::Table, Vec::new()),
            strings(&["compare"])
        );
        assert_eq!(
            bench_arguments(Output::Table, strings(&["publish", "--quick"])),
            strings(&["publish", "--quick"])
        );
    }

    #[test]
    fn flags_after_bench_are_collected_for_herald_bench() {
        use clap::Parser;

        let cli = crate::Cli::try_parse_from(["herald", "bench", "--quick", "--help", "-x"])
            .expect("the arguments parse");
        match cli.command {
            crate::cli::Command::Bench(arguments) => {
                assert_eq!(arguments.arguments, strings(&["--quick", "--help", "-x"]));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_global_json_output_is_passed_on_once() {
        assert_eq!(
            bench_arguments(Output::Json, strings(&["--quick"])),
            strings(&["compare", "--quick", "--output", "json"])
        );
        assert_eq!(
            bench_arguments(Output::Json, strings(&["--output", "json"])),
            strings(&["compare", "--output", "json"])
        );
    }
}
