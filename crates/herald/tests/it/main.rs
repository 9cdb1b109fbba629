//! The `herald` binary's tests that need no Herald server: configuration precedence, the
//! command line's exit codes and messages, and what the client commands send (to a scripted HTTP
//! server). End-to-end tests against `herald serve` come with the server.

mod cli;
mod config;
// One scripted HTTP server for both crates' tests.
#[path = "../../../herald-client/tests/it/fake_server.rs"]
mod fake_server;
