//! Redis Streams in `herald-bench compare`, through the `redis` crate: a non-durable reference.
//!
//! The Redis on this machine runs without an append-only file and without snapshots (the bench
//! reads `CONFIG GET appendonly`, `appendfsync` and `save`), so it keeps everything in memory
//! only: a restart loses every event. Its rows show what a broker costs when it writes nothing
//! to disk, not a competitor in either durable class. (With `appendonly yes` and `appendfsync
//! always` it would be "fsync before ack", with `everysec` "OS-buffered"; the bench reports
//! whichever it finds.)
//!
//! How each workload maps onto streams (`XADD key * d <payload>`):
//! - publish: each producer (own connection) pipelines a batch of `XADD`s.
//! - queue: a consumer group; competing consumers `XREADGROUP … COUNT n BLOCK 1000` then
//!   `XACK` every id.
//! - fan-out: one consumer group per subscriber, each read with `XREADGROUP COUNT 100` + `XACK`.
//! - latency: one consumer group, one consumer blocking in `XREADGROUP`, `XACK` per read.
//! - replay: `XRANGE` from the first entry, 1,000 per call, over the queue workload's stream.
//! - request/reply: no counterpart here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Value};

use super::load::{
    Budget, CpuProbe, Stop, TimedConsumer, TimedPublisher, Worker, run_latency, run_workers,
    sent_micros, timed_payload, unix_micros,
};
use super::{Durability, Outcome, Settings, Workload};

const BACKLOG_KEY: &str = "herald-bench:backlog";
const GROUP: &str = "workers";
const FIELD: &str = "d";

/// A connected Redis and its persistence settings.
#[derive(Debug)]
pub struct RedisTarget {
    client: redis::Client,
    admin: MultiplexedConnection,
    version: String,
    appendonly: String,
    appendfsync: String,
    save: String,
    payload: Arc<Vec<u8>>,
    backlog_filled: bool,
}

fn config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        // Blocking reads wait up to 1 s on the server; leave them room.
        .set_response_timeout(Some(Duration::from_secs(30)))
}

async fn config_get(connection: &mut MultiplexedConnection, name: &str) -> anyhow::Result<String> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(connection)
        .await
        .with_context(|| format!("CONFIG GET {name}"))?;
    Ok(pair.get(1).cloned().unwrap_or_default())
}

/// The payload of a stream entry.
fn payload_of(entry: &redis::streams::StreamId) -> anyhow::Result<&[u8]> {
    match entry.map.get(FIELD) {
        Some(Value::BulkString(bytes)) => Ok(bytes),
        other => bail!("entry {} has no payload: {other:?}", entry.id),
    }
}

impl RedisTarget {
    pub async fn connect(url: &str, settings: &Settings) -> anyhow::Result<RedisTarget> {
        let client = redis::Client::open(url).with_context(|| format!("the Redis URL {url}"))?;
        let mut admin = client
            .get_multiplexed_async_connection_with_config(&config())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut admin)
            .await?;
        let version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        Ok(RedisTarget {
            appendonly: config_get(&mut admin, "appendonly").await?,
            appendfsync: config_get(&mut admin, "appendfsync").await?,
            save: config_get(&mut admin, "save").await?,
            client,
            admin,
            version,
            payload: Arc::new(super::load::payload(settings.event_bytes)),
            backlog_filled: false,
        })
    }

    pub fn describe(&self) -> String {
        let save = if self.save.is_empty() {
            "\"\" (no snapshots)"
        } else {
            &self.save
        };
        format!(
            "Redis {}; appendonly = {}, appendfsync = {}, save = {save}",
            self.version, self.appendonly, self.appendfsync
        )
    }

    pub fn durability(&self, _workload: Workload) -> Durability {
        match (self.appendonly.as_str(), self.appendfsync.as_str()) {
            ("yes", "always") => Durability::FsyncBeforeAck,
            ("yes", _) => Durability::OsBuffered,
            _ => Durability::NotDurable,
        }
    }

    pub fn cpu_probe(&self) -> CpuProbe {
        CpuProbe::Command("redis-server")
    }

    pub fn design(&self, workload: Workload) -> &'static str {
        match workload {
            Workload::Publish => "pipelined XADD per batch",
            Workload::Queue => "consumer group; XREADGROUP COUNT n BLOCK 1000 + XACK of every id",
            Workload::Fanout => "one consumer group per subscriber; XREADGROUP COUNT 100 + XACK",
            Workload::Latency => "consumer group, one consumer blocking in XREADGROUP, XACK",
            Workload::Replay => "XRANGE from the first entry, 1,000 per call",
            Workload::RequestReply => "",
        }
    }

    async fn connection(&self) -> anyhow::Result<MultiplexedConnection> {
        self.client
            .get_multiplexed_async_connection_with_config(&config())
            .await
            .context("connecting to Redis")
    }

    async fn delete(&mut self, key: &str) -> anyhow::Result<()> {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut self.admin)
            .await
            .with_context(|| format!("DEL {key}"))
    }

    /// Creates `key` (empty) with consumer groups reading from its start.
    async fn create(&mut self, key: &str, groups: &[String]) -> anyhow::Result<()> {
        self.delete(key).await?;
        for group in groups {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut self.admin)
                .await
                .with_context(|| format!("XGROUP CREATE {key} {group}"))?;
        }
        Ok(())
    }

    async fn producers(
        &self,
        key: &str,
        count: u32,
        batch: u32,
        budget: Option<Arc<Budget>>,
    ) -> anyhow::Result<Vec<Producer>> {
        let mut producers = Vec::new();
        for _ in 0..count {
            producers.push(Producer {
                connection: self.connection().await?,
                key: key.to_owned(),
                payload: self.payload.clone(),
                batch,
                budget: budget.clone(),
            });
        }
        Ok(producers)
    }

    async fn group_reader(
        &self,
        key: &str,
        group: &str,
        consumer: &str,
    ) -> anyhow::Result<GroupReader> {
        Ok(GroupReader {
            connection: self.connection().await?,
            key: key.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            budget: None,
            limit: 100,
        })
    }

    pub async fn publish(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let key = format!("herald-bench:publish:r{round}");
        self.delete(&key).await?;
        let producers = self
            .producers(&key, settings.producers, settings.publish_batch, None)
            .await?;
        let run = run_workers(producers, settings.publish_stop(), &self.cpu_probe()).await;
        self.delete(&key).await?;
        Ok(Outcome::Measured(run?.into()))
    }

    pub async fn prefill(&mut self, settings: &Settings) -> anyhow::Result<Outcome> {
        self.create(BACKLOG_KEY, &[GROUP.to_owned()]).await?;
        let budget = Budget::new(settings.backlog_events);
        let producers = self
            .producers(
                BACKLOG_KEY,
                settings.producers,
                settings.prefill_batch,
                Some(budget),
            )
            .await?;
        let run = run_workers(
            producers,
            Stop::Count {
                target: settings.backlog_events,
            },
            &self.cpu_probe(),
        )
        .await?;
        self.backlog_filled = true;
        Ok(Outcome::Measured(run.into()))
    }

    pub async fn drain(
        &mut self,
        settings: &Settings,
        events: u64,
        _round: u32,
    ) -> anyhow::Result<Outcome> {
        ensure!(self.backlog_filled, "the backlog was not filled");
        let budget = Budget::new(events);
        let mut consumers = Vec::new();
        for number in 0..settings.consumers {
            let mut reader = self
                .group_reader(BACKLOG_KEY, GROUP, &format!("c{number}"))
                .await?;
            reader.budget = Some(budget.clone());
            reader.limit = u64::from(settings.pull_max);
            consumers.push(reader);
        }
        let run = run_workers(consumers, Stop::Count { target: events }, &self.cpu_probe()).await?;
        Ok(Outcome::Measured(run.into()))
    }

    pub async fn replay(&mut self, settings: &Settings, _round: u32) -> anyhow::Result<Outcome> {
        if !self.backlog_filled {
            self.prefill(settings).await?;
        }
        let reader = RangeReader {
            connection: self.connection().await?,
            next: "-".to_owned(),
            batch: settings.replay_batch,
        };
        let run = run_workers(
            vec![reader],
            Stop::Count {
                target: settings.backlog_events,
            },
            &self.cpu_probe(),
        )
        .await?;
        Ok(Outcome::Measured(run.into()))
    }

    pub async fn fanout(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let key = format!("herald-bench:fanout:r{round}");
        let groups: Vec<String> = (0..settings.fanout_subscriptions)
            .map(|number| format!("s{number}"))
            .collect();
        self.create(&key, &groups).await?;
        let mut subscribers = Vec::new();
        for group in &groups {
            subscribers.push(self.group_reader(&key, group, "c").await?);
        }
        let mut producers = self
            .producers(
                &key,
                1,
                settings.fanout_batch,
                Some(Budget::new(settings.fanout_events)),
            )
            .await?;
        let result = super::run_fanout(
            producers.remove(0),
            subscribers,
            settings.fanout_events,
            &self.cpu_probe(),
        )
        .await;
        self.delete(&key).await?;
        Ok(Outcome::Measured(result?))
    }

    pub async fn latency(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let key = format!("herald-bench:latency:r{round}");
        self.create(&key, &[GROUP.to_owned()]).await?;
        let consumer = self.group_reader(&key, GROUP, "latency").await?;
        let mut connections = Vec::new();
        for _ in 0..4 {
            connections.push(self.connection().await?);
        }
        let publisher = LatencyPublisher {
            connections: Arc::new(connections),
            key: Arc::new(key.clone()),
            template: self.payload.clone(),
        };
        let result = run_latency(
            publisher,
            consumer,
            settings.latency_rate,
            settings.latency_batch,
            settings.latency_duration(),
            &self.cpu_probe(),
        )
        .await;
        self.delete(&key).await?;
        Ok(Outcome::Measured(result?.into()))
    }

    pub async fn cleanup(&mut self) -> anyhow::Result<()> {
        if self.backlog_filled {
            self.delete(BACKLOG_KEY).await?;
            self.backlog_filled = false;
        }
        Ok(())
    }
}

/// Pipelines a batch of `XADD`s.
struct Producer {
    connection: MultiplexedConnection,
    key: String,
    payload: Arc<Vec<u8>>,
    batch: u32,
    budget: Option<Arc<Budget>>,
}

async fn add_batch(
    connection: &mut MultiplexedConnection,
    key: &str,
    payloads: impl Iterator<Item = &[u8]>,
) -> anyhow::Result<()> {
    let mut pipeline = redis::pipe();
    for payload in payloads {
        pipeline
            .cmd("XADD")
            .arg(key)
            .arg("*")
            .arg(FIELD)
            .arg(payload)
            .ignore();
    }
    pipeline
        .query_async::<()>(connection)
        .await
        .with_context(|| format!("XADD to {key}"))
}

impl Worker for Producer {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let batch = u64::from(self.batch);
        if let Some(budget) = &self.budget {
            let taken = budget.take(batch);
            if taken == 0 {
                return Ok(None);
            }
            ensure!(taken == batch, "the budget is not a multiple of the batch");
        }
        let payload: &[u8] = &self.payload;
        add_batch(
            &mut self.connection,
            &self.key,
            std::iter::repeat_n(payload, self.batch as usize),
        )
        .await?;
        Ok(Some(batch))
    }
}

/// A consumer in a group: `XREADGROUP` then `XACK`.
struct GroupReader {
    connection: MultiplexedConnection,
    key: String,
    group: String,
    consumer: String,
    /// Set for the queue workload.
    budget: Option<Arc<Budget>>,
    limit: u64,
}

impl GroupReader {
    /// Reads up to `count` new entries (waiting up to 1 s), acks them, and returns them with
    /// the time they arrived.
    async fn read(&mut self, count: u64) -> anyhow::Result<(u64, Vec<redis::streams::StreamId>)> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">")
            .query_async(&mut self.connection)
            .await
            .with_context(|| format!("XREADGROUP on {}", self.key))?;
        let arrived = unix_micros();
        let entries: Vec<_> = reply
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default();
        if !entries.is_empty() {
            let acked: u64 = redis::cmd("XACK")
                .arg(&self.key)
                .arg(&self.group)
                .arg(
                    entries
                        .iter()
                        .map(|entry| entry.id.as_str())
                        .collect::<Vec<_>>(),
                )
                .query_async(&mut self.connection)
                .await
                .with_context(|| format!("XACK on {}", self.key))?;
            ensure!(
                acked == entries.len() as u64,
                "XACK acked {acked} of {}",
                entries.len()
            );
        }
        Ok((arrived, entries))
    }
}

impl Worker for GroupReader {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let Some(budget) = self.budget.clone() else {
            let (_, entries) = self.read(self.limit).await?;
            return Ok(Some(entries.len() as u64));
        };
        let wanted = budget.take(self.limit);
        if wanted == 0 {
            return Ok(None);
        }
        let read = match self.read(wanted).await {
            Ok((_, entries)) => entries.len() as u64,
            Err(error) => {
                budget.give_back(wanted);
                return Err(error);
            }
        };
        budget.give_back(wanted - read);
        Ok(Some(read))
    }
}

impl TimedConsumer for GroupReader {
    async fn receive(&mut self) -> anyhow::Result<(u64, Vec<u64>)> {
        loop {
            let (arrived, entries) = self.read(self.limit).await?;
            if entries.is_empty() {
                continue;
            }
            let sent = entries
                .iter()
                .map(|entry| sent_micros(payload_of(entry)?))
                .collect::<anyhow::Result<Vec<_>>>()?;
            return Ok((arrived, sent));
        }
    }
}

/// Reads a stream from its first entry with `XRANGE`.
struct RangeReader {
    connection: MultiplexedConnection,
    /// The start of the next range: `-`, then `(` + the last id read.
    next: String,
    batch: u32,
}

impl Worker for RangeReader {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(BACKLOG_KEY)
            .arg(&self.next)
            .arg("+")
            .arg("COUNT")
            .arg(self.batch)
            .query_async(&mut self.connection)
            .await
            .context("XRANGE")?;
        let Some(last) = reply.ids.last() else {
            bail!("the stream ended before the replay's count");
        };
        for entry in &reply.ids {
            payload_of(entry)?;
        }
        self.next = format!("({}", last.id);
        Ok(Some(reply.ids.len() as u64))
    }
}

#[derive(Clone)]
struct LatencyPublisher {
    connections: Arc<Vec<MultiplexedConnection>>,
    key: Arc<String>,
    template: Arc<Vec<u8>>,
}

impl TimedPublisher for LatencyPublisher {
    async fn publish(&self, number: u64, sent: u64, events: u32) -> anyhow::Result<()> {
        // A multiplexed connection is a cheap handle; the clone shares its socket.
        let mut connection = self.connections[number as usize % self.connections.len()].clone();
        let payload = timed_payload(&self.template, sent);
        add_batch(
            &mut connection,
            &self.key,
            std::iter::repeat_n(payload.as_slice(), events as usize),
        )
        .await
    }
}
