//! `herald-bench`: measures Herald on this machine. Parses flags and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::ensure;
use clap::{Args, Parser, Subcommand, ValueEnum};
use herald_bench::log_bench::{self, Options};
use herald_bench::machine::default_scratch_root;

#[derive(Debug, Parser)]
#[command(name = "herald-bench", about = "Measures Herald on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The partition log's appends and reads, each next to a raw-disk loop doing the same I/O.
    Log(LogArgs),
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Where the data goes (a fresh directory inside it, removed afterwards). Must be on the
    /// disk under test, not tmpfs. Default: the workspace's target/ directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per case, all rounds together [default: 3, or 0.3 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// Rounds per case; each runs the raw-disk loop and then the log case, back to back
    /// [default: 3, or 1 with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// Short cases and small sizes: checks that the bench works in a few seconds.
    #[arg(long)]
    quick: bool,
    /// Appender threads of the group commit case (batches of 1, fsync always).
    #[arg(long, default_value_t = 64)]
    writers: u32,
    /// Run only the cases whose id contains this, e.g. `batch1-` or `read` (ids are in the JSON
    /// output).
    #[arg(long)]
    only: Option<String>,
    /// Print the report as markdown or as JSON.
    #[arg(long, value_enum, default_value_t = Output::Markdown)]
    output: Output,
    /// Run even if the directory is in memory (tmpfs); the figures are then meaningless.
    #[arg(long)]
    allow_tmpfs: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Markdown,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Log(arguments) => run_log(arguments),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herald-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_log(arguments: LogArgs) -> anyhow::Result<()> {
    let seconds = arguments
        .seconds
        .unwrap_or(if arguments.quick { 0.3 } else { 3.0 });
    ensure!(
        seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0,
        "--seconds must be between 0 and 3600"
    );
    let options = Options {
        scratch_root: arguments.dir.unwrap_or_else(default_scratch_root),
        case_duration: Duration::from_secs_f64(seconds),
        rounds: arguments
            .rounds
            .unwrap_or(if arguments.quick { 1 } else { 3 }),
        quick: arguments.quick,
        writers: arguments.writers,
        allow_in_memory: arguments.allow_tmpfs,
        only: arguments.only,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = log_bench::run(&options, &mut |line| eprintln!("{line}"))?;
    match arguments.output {
        Output::Markdown => print!("{}", report.to_markdown()),
        Output::Json => println!("{}", report.to_json()),
    }
    Ok(())
}
