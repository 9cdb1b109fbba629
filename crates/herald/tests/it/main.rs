//! The `herald` binary's tests that need no Herald server: configuration precedence, the
//! command line's exit codes and messages, and what the client commands send (to a scripted HTTP
//! server). End-to-end tests run the real `herald serve` (`real_server`): a
//! kill -9 loop under load (`kill`), the crash loop under mixed load (`crash_loop`) and the README's
//! tour (`tour`).

mod cli;
mod config;
mod crash_loop;
mod disconnect;
mod full_disk;
mod kill;
mod memory;
mod push_kill;
mod real_server;
mod tour;
// One scripted HTTP server for both crates' tests.
#[path = "../../../herald-client/tests/it/fake_server.rs"]
mod fake_server;
