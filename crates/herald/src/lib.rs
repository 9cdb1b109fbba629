//! Herald's one binary. `herald serve` runs the broker; the other subcommands are a CLI client of
//! its HTTP API. `main.rs` only parses the command line and calls [`run`].
//!
//! - [`cli`] — the command line as clap types, and the exit codes in `herald --help`.
//! - [`config`] — `herald serve`'s configuration from defaults, `herald.toml`, `HERALD_*`
//!   variables and flags, in rising precedence.
//! - [`serve`] — binds the listener, handles SIGINT and SIGTERM, runs `herald_http::serve`.
//! - [`commands`] — the client commands, built on `herald_client`.
//! - [`event`] — CloudEvents built from flags, batch files.
//! - [`table`] — aligned tables for human output.
//! - [`bench`] — `herald bench`: runs the `herald-bench` binary built next to this one.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the server answered with an error: one line on stderr, `error: <status> <title>: <detail>` (for `herald serve`: the server could not start or failed) |
//! | 2 | usage error: bad flags, bad input data or bad configuration |
//! | 3 | the server cannot be reached: one line on stderr naming its URL |

use std::process::ExitCode;

use herald_client::ClientError;

pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod event;
pub mod serve;
pub mod table;

pub use cli::Cli;

/// The process exit codes (see the crate documentation).
pub mod exit_code {
    pub const SUCCESS: u8 = 0;
    /// The server answered with an error (or `herald serve` failed).
    pub const FAILED: u8 = 1;
    /// Bad flags, input or configuration; also what clap uses for bad flags.
    pub const USAGE: u8 = 2;
    /// The server cannot be reached.
    pub const UNREACHABLE: u8 = 3;
}

/// Why a command failed; it decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad flags, input data or configuration.
    #[error("{0}")]
    Usage(String),
    /// A client call failed: unreachable server, error answer, undecodable answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// Anything else, e.g. the server could not start.
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Usage(_) => exit_code::USAGE,
            CommandError::Client(ClientError::Connect { .. }) => exit_code::UNREACHABLE,
            CommandError::Client(_) | CommandError::Output(_) | CommandError::Failed(_) => {
                exit_code::FAILED
            }
        }
    }

    /// The message printed on stderr: `error: ...`, on one line for client errors so scripts can
    /// read it (configuration errors from the TOML parser keep their lines, which point at the
    /// bad key).
    pub fn message(&self) -> String {
        let text = self.to_string();
        let text = match self {
            CommandError::Client(_) => text.split_whitespace().collect::<Vec<_>>().join(" "),
            _ => text,
        };
        format!("error: {text}")
    }
}

/// Runs a parsed command line and returns the process's exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        cli::Command::Serve(args) => serve::main(&args),
        cli::Command::Bench(args) => bench::main(&cli.global, args),
        command => commands::main(&cli.global, command),
    };
    match result {
        Ok(()) => ExitCode::from(exit_code::SUCCESS),
        Err(error) => {
            eprintln!("{}", error.message());
            ExitCode::from(error.exit_code())
        }
    }
}
