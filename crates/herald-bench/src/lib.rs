//! Herald's benchmarks: what the partition log, and publishing over HTTP, cost next to the bare
//! disk they run on, and how Herald compares with the brokers a user would run instead.
//!
//! The map:
//! - [`compare`]: the `herald-bench compare` run (also `herald bench`): publish, queue, replay,
//!   fan-out, latency and request/reply against Herald (`fsync always` and `never`), NATS
//!   JetStream, RabbitMQ, PostgreSQL and Redis Streams on this machine, each row with its
//!   durability class, medians over alternating rounds and Herald ÷ peer ratios.
//! - [`log_bench`]: the `herald-bench log` run. Every append and read case of the partition log
//!   is measured right after a raw-disk loop doing the same I/O, so each line of the report is a
//!   side-by-side comparison on this machine, at this moment.
//! - [`publish_bench`]: the `herald-bench publish` run: durable events/s of the real `herald serve`
//!   over HTTP (batches of CloudEvents from N connections), each round right after a raw
//!   `write` + `fdatasync` loop of one batch frame.
//! - [`publish_load`]: its load generator, cheap enough to share the machine with the server.
//! - [`queue_bench`]: the `herald-bench queue` run: draining a queue subscription with competing
//!   consumers (pull + ack), and the publish-to-delivery latency of a long-polling consumer.
//! - [`request_bench`]: the `herald-bench request` run: action/response round trips (request →
//!   responder pulling and replying → 200), closed loops of 1 and 16 requesters and an open loop
//!   at a fixed rate.
//! - [`push_bench`]: the `herald-bench push` run: webhook (push) subscriptions delivering a
//!   backlog to a receiver in this process (deliveries/s with 1 and 16 subscriptions, CPU of the
//!   server and of the bench), and the publish-to-receipt latency at a fixed rate.
//! - [`herald_process`]: starting, watching and stopping a `herald serve` process.
//! - [`raw_disk`]: the baselines: plain `write` (+ `fdatasync`) and `pread` loops with no log.
//! - [`workload`]: the records and batches every case and the criterion benches use, and the
//!   budget (time and bytes) each case runs under.
//! - [`counting`]: a [`herald_log::Storage`] wrapper that counts writes and syncs, so a report
//!   can say how many appends shared one `fdatasync`.
//! - [`machine`]: facts about the machine, the bench directory's file system and the commit.
//! - [`report`]: the results, printed as a markdown table or as JSON.
//!
//! The criterion micro-benchmarks live in `benches/log.rs` (`cargo bench -p herald-bench --bench
//! log`). Nothing here runs in CI's pass/fail.

pub mod compare;
pub mod counting;
pub mod herald_process;
pub mod log_bench;
pub mod machine;
pub mod publish_bench;
pub mod publish_load;
pub mod push_bench;
pub mod queue_bench;
pub mod raw_disk;
pub mod report;
pub mod request_bench;
pub mod workload;
