//! NATS JetStream in `herald-bench compare`, through `async-nats`.
//!
//! JetStream's file store writes each message to its block file and acknowledges it; it calls
//! `fsync` only every `sync_interval` (2 minutes by default, `always` only if configured), so a
//! server started without that setting is in the "OS-buffered" class. The bench reads the server's
//! command line (`/proc`) to say how it was started.
//!
//! How each workload maps onto JetStream (every stream: file storage, limits retention, one
//! replica):
//! - publish: one stream; each producer (own connection) publishes a batch asynchronously and
//!   then awaits every publish ack.
//! - queue: one stream and one durable pull consumer (explicit acks) shared by the competing
//!   consumers (own connections), each fetching a batch (`max_messages` = its budget, expires
//!   1 s) and acking every message.
//! - fan-out: one stream, one durable pull consumer per subscriber (ack policy `all`), each
//!   consuming with `messages()` (pulls of 100) and acking the last message of what it has.
//! - latency: one durable pull consumer consumed with `messages()`, every message acked.
//! - replay: an ordered consumer from the first message of the queue workload's stream.
//! - request/reply: core NATS request/reply (`Client::request`, a responder subscription):
//!   nothing is stored, so not durable.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

use super::load::{
    Budget, CpuProbe, Stop, TimedConsumer, TimedPublisher, Worker, run_latency, run_workers,
    sent_micros, timed_payload, unix_micros,
};
use super::{Durability, Outcome, Settings, Workload};
use crate::machine::command_line_of;

const BACKLOG_STREAM: &str = "HERALD_BENCH_BACKLOG";
const BACKLOG_SUBJECT: &str = "herald-bench.backlog";
const BACKLOG_CONSUMER: &str = "workers";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A connected JetStream.
#[derive(Debug)]
pub struct NatsTarget {
    url: String,
    admin: jetstream::Context,
    version: String,
    payload: Bytes,
    backlog_filled: bool,
}

fn nats_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{error}")
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let connecting = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url);
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            anyhow!(
                "no answer from {url} within {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|error| anyhow!("connecting to {url}: {error}"))
}

impl NatsTarget {
    pub async fn connect(url: &str, settings: &Settings) -> anyhow::Result<NatsTarget> {
        let client = connect(url).await?;
        let version = client.server_info().version;
        ensure!(
            client.server_info().jetstream,
            "the NATS server at {url} runs without JetStream"
        );
        let admin = jetstream::new(client);
        Ok(NatsTarget {
            url: url.to_owned(),
            admin,
            version,
            payload: Bytes::from(super::load::payload(settings.event_bytes)),
            backlog_filled: false,
        })
    }

    /// The server's version and how it was started (its fsync setting).
    pub fn describe(&self) -> String {
        let command = command_line_of("nats-server")
            .unwrap_or_else(|| "command line not readable".to_owned());
        let sync = if command.contains("sync") {
            "check the sync setting on its command line"
        } else {
            "no sync_interval given: JetStream's default, fsync every 2 minutes"
        };
        format!(
            "nats-server {} at {} (`{command}`; {sync})",
            self.version, self.url
        )
    }

    pub fn durability(&self, workload: Workload) -> Durability {
        match workload {
            Workload::RequestReply => Durability::NotDurable,
            _ => Durability::OsBuffered,
        }
    }

    pub fn cpu_probe(&self) -> CpuProbe {
        CpuProbe::Command("nats-server")
    }

    pub fn design(&self, workload: Workload) -> &'static str {
        match workload {
            Workload::Publish => "file stream; async publish of the batch, then await every ack",
            Workload::Queue => {
                "durable pull consumer, explicit acks; fetch batch (expires 1s), ack each"
            }
            Workload::Fanout => {
                "one durable pull consumer per subscriber (ack all); messages() + ack of the last"
            }
            Workload::Latency => "durable pull consumer, messages(), ack each",
            Workload::Replay => "ordered consumer from the first message",
            Workload::RequestReply => {
                "core NATS request/reply, responders in a queue group (nothing stored)"
            }
        }
    }

    async fn create_stream(&self, name: &str, subject: &str) -> anyhow::Result<stream::Stream> {
        // A stream left by an interrupted run would hold old messages.
        let _ = self.admin.delete_stream(name).await;
        self.admin
            .create_stream(stream::Config {
                name: name.to_owned(),
                subjects: vec![subject.to_owned()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|error| anyhow!("creating stream {name}: {error}"))
    }

    async fn delete_stream(&self, name: &str) -> anyhow::Result<()> {
        self.admin
            .delete_stream(name)
            .await
            .map_err(|error| anyhow!("deleting stream {name}: {error}"))?;
        Ok(())
    }

    async fn producers(
        &self,
        subject: &str,
        count: u32,
        batch: u32,
        budget: Option<Arc<Budget>>,
    ) -> anyhow::Result<Vec<Producer>> {
        let mut producers = Vec::new();
        for _ in 0..count {
            producers.push(Producer {
                context: jetstream::new(connect(&self.url).await?),
                subject: subject.to_owned(),
                payload: self.payload.clone(),
                batch,
                budget: budget.clone(),
            });
        }
        Ok(producers)
    }

    pub async fn publish(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let name = format!("HERALD_BENCH_PUBLISH_R{round}");
        let subject = format!("herald-bench.publish.r{round}");
        self.create_stream(&name, &subject).await?;
        let producers = self
            .producers(&subject, settings.producers, settings.publish_batch, None)
            .await?;
        let run = run_workers(producers, settings.publish_stop(), &self.cpu_probe()).await;
        self.delete_stream(&name).await?;
        Ok(Outcome::Measured(run?.into()))
    }

    pub async fn prefill(&mut self, settings: &Settings) -> anyhow::Result<Outcome> {
        let stream = self.create_stream(BACKLOG_STREAM, BACKLOG_SUBJECT).await?;
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(BACKLOG_CONSUMER.to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(|error| anyhow!("creating consumer {BACKLOG_CONSUMER}: {error}"))?;
        let budget = Budget::new(settings.backlog_events);
        let producers = self
            .producers(
                BACKLOG_SUBJECT,
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
        for _ in 0..settings.consumers {
            let context = jetstream::new(connect(&self.url).await?);
            let stream = context
                .get_stream(BACKLOG_STREAM)
                .await
                .map_err(nats_error)?;
            let consumer: consumer::PullConsumer = stream
                .get_consumer(BACKLOG_CONSUMER)
                .await
                .map_err(nats_error)?;
            consumers.push(QueueConsumer {
                consumer,
                pull_max: u64::from(settings.pull_max),
                budget: budget.clone(),
            });
        }
        let run = run_workers(consumers, Stop::Count { target: events }, &self.cpu_probe()).await?;
        Ok(Outcome::Measured(run.into()))
    }

    pub async fn replay(&mut self, settings: &Settings, _round: u32) -> anyhow::Result<Outcome> {
        if !self.backlog_filled {
            self.prefill(settings).await?;
        }
        let context = jetstream::new(connect(&self.url).await?);
        let stream = context
            .get_stream(BACKLOG_STREAM)
            .await
            .map_err(nats_error)?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(nats_error)?;
        let messages = consumer.messages().await.map_err(nats_error)?;
        let reader = Reader {
            messages: Box::pin(messages.map(|message| message.map(|_| ()).map_err(nats_error))),
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
        let name = format!("HERALD_BENCH_FANOUT_R{round}");
        let subject = format!("herald-bench.fanout.r{round}");
        let stream = self.create_stream(&name, &subject).await?;
        let mut subscribers = Vec::new();
        for number in 0..settings.fanout_subscriptions {
            let durable = format!("s{number}");
            stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    ack_policy: consumer::AckPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(nats_error)?;
            let context = jetstream::new(connect(&self.url).await?);
            let consumer: consumer::PullConsumer = context
                .get_stream(&name)
                .await
                .map_err(nats_error)?
                .get_consumer(&durable)
                .await
                .map_err(nats_error)?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(100)
                .messages()
                .await
                .map_err(nats_error)?;
            subscribers.push(Subscriber {
                messages,
                ack_each: false,
            });
        }
        let mut producers = self
            .producers(
                &subject,
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
        self.delete_stream(&name).await?;
        Ok(Outcome::Measured(result?))
    }

    pub async fn latency(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let name = format!("HERALD_BENCH_LATENCY_R{round}");
        let subject = format!("herald-bench.latency.r{round}");
        let stream = self.create_stream(&name, &subject).await?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("latency".to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(nats_error)?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(100)
            .messages()
            .await
            .map_err(nats_error)?;
        let mut contexts = Vec::new();
        for _ in 0..4 {
            contexts.push(jetstream::new(connect(&self.url).await?));
        }
        let publisher = LatencyPublisher {
            contexts: Arc::new(contexts),
            subject: Arc::new(subject),
            template: Arc::new(self.payload.to_vec()),
        };
        let consumer = Subscriber {
            messages,
            ack_each: true,
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
        self.delete_stream(&name).await?;
        Ok(Outcome::Measured(result?.into()))
    }

    pub async fn request_reply(
        &mut self,
        settings: &Settings,
        round: u32,
    ) -> anyhow::Result<Outcome> {
        let subject = format!("herald-bench.rpc.r{round}");
        // As many responders as requesters, in one queue group (each request goes to one).
        let mut responders = Vec::new();
        for _ in 0..settings.requesters {
            let client = connect(&self.url).await?;
            let mut subscription = client
                .queue_subscribe(subject.clone(), "responders".to_owned())
                .await
                .map_err(nats_error)?;
            client.flush().await.map_err(nats_error)?;
            let reply = self.payload.clone();
            responders.push(tokio::spawn(async move {
                while let Some(request) = subscription.next().await {
                    if let Some(to) = request.reply {
                        client
                            .publish(to, reply.clone())
                            .await
                            .map_err(nats_error)?;
                    }
                }
                anyhow::Ok(())
            }));
        }
        let mut requesters = Vec::new();
        for _ in 0..settings.requesters {
            requesters.push(Requester {
                client: connect(&self.url).await?,
                subject: subject.clone(),
                payload: self.payload.clone(),
            });
        }
        let run = run_workers(requesters, settings.request_stop(), &self.cpu_probe()).await;
        for responder in responders {
            responder.abort();
        }
        Ok(Outcome::Measured(run?.into()))
    }

    pub async fn cleanup(&mut self) -> anyhow::Result<()> {
        if self.backlog_filled {
            self.delete_stream(BACKLOG_STREAM).await?;
            self.backlog_filled = false;
        }
        Ok(())
    }
}

/// Publishes a batch asynchronously, then awaits every ack.
struct Producer {
    context: jetstream::Context,
    subject: String,
    payload: Bytes,
    batch: u32,
    budget: Option<Arc<Budget>>,
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
        let mut acks = Vec::with_capacity(self.batch as usize);
        for _ in 0..self.batch {
            acks.push(
                self.context
                    .publish(self.subject.clone(), self.payload.clone())
                    .await
                    .map_err(nats_error)?,
            );
        }
        for ack in acks {
            ack.await.map_err(nats_error)?;
        }
        Ok(Some(batch))
    }
}

/// A competing consumer of the queue workload: fetches what its budget allows, acks each.
struct QueueConsumer {
    consumer: consumer::PullConsumer,
    pull_max: u64,
    budget: Arc<Budget>,
}

impl Worker for QueueConsumer {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let wanted = self.budget.take(self.pull_max);
        if wanted == 0 {
            return Ok(None);
        }
        let mut received = 0;
        let result = async {
            let mut batch = self
                .consumer
                .batch()
                .max_messages(wanted as usize)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(nats_error)?;
            while let Some(message) = batch.next().await {
                let message = message.map_err(nats_error)?;
                message.ack().await.map_err(nats_error)?;
                received += 1;
            }
            anyhow::Ok(())
        }
        .await;
        self.budget.give_back(wanted - received);
        result?;
        Ok(Some(received))
    }
}

/// A consumer reading a `messages()` stream: waits for one message, takes what else has
/// already arrived (up to 100), then acks (each one, or the last one under ack policy `all`).
struct Subscriber {
    messages: consumer::pull::Stream,
    ack_each: bool,
}

impl Subscriber {
    /// The next messages and the time the first arrived.
    async fn next_messages(&mut self) -> anyhow::Result<(u64, Vec<jetstream::Message>)> {
        let first = self
            .messages
            .next()
            .await
            .context("the consumer's message stream ended")?
            .map_err(nats_error)?;
        let arrived = unix_micros();
        let mut messages = vec![first];
        while messages.len() < 100 {
            match self.messages.next().now_or_never() {
                Some(Some(message)) => messages.push(message.map_err(nats_error)?),
                _ => break,
            }
        }
        Ok((arrived, messages))
    }

    async fn ack(&self, messages: &[jetstream::Message]) -> anyhow::Result<()> {
        if self.ack_each {
            for message in messages {
                message.ack().await.map_err(nats_error)?;
            }
        } else if let Some(last) = messages.last() {
            last.ack().await.map_err(nats_error)?;
        }
        Ok(())
    }
}

impl Worker for Subscriber {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let (_, messages) = self.next_messages().await?;
        self.ack(&messages).await?;
        Ok(Some(messages.len() as u64))
    }
}

impl TimedConsumer for Subscriber {
    async fn receive(&mut self) -> anyhow::Result<(u64, Vec<u64>)> {
        let (arrived, messages) = self.next_messages().await?;
        let sent = messages
            .iter()
            .map(|message| sent_micros(&message.payload))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.ack(&messages).await?;
        Ok((arrived, sent))
    }
}

/// Reads a stream of messages: what has arrived, up to a batch, per step.
struct Reader {
    messages: std::pin::Pin<Box<dyn futures_util::Stream<Item = anyhow::Result<()>> + Send>>,
    batch: u32,
}

impl Worker for Reader {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        self.messages
            .next()
            .await
            .context("the ordered consumer ended")??;
        let mut read = 1;
        while read < u64::from(self.batch) {
            match self.messages.next().now_or_never() {
                Some(Some(message)) => {
                    message?;
                    read += 1;
                }
                _ => break,
            }
        }
        Ok(Some(read))
    }
}

#[derive(Clone)]
struct LatencyPublisher {
    contexts: Arc<Vec<jetstream::Context>>,
    subject: Arc<String>,
    template: Arc<Vec<u8>>,
}

impl TimedPublisher for LatencyPublisher {
    async fn publish(&self, number: u64, sent: u64, events: u32) -> anyhow::Result<()> {
        let context = &self.contexts[number as usize % self.contexts.len()];
        let payload = Bytes::from(timed_payload(&self.template, sent));
        let mut acks = Vec::with_capacity(events as usize);
        for _ in 0..events {
            acks.push(
                context
                    .publish(self.subject.to_string(), payload.clone())
                    .await
                    .map_err(nats_error)?,
            );
        }
        for ack in acks {
            ack.await.map_err(nats_error)?;
        }
        Ok(())
    }
}

/// One requester of core NATS request/reply.
struct Requester {
    client: async_nats::Client,
    subject: String,
    payload: Bytes,
}

impl Worker for Requester {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let reply = self
            .client
            .request(self.subject.clone(), self.payload.clone())
            .await
            .map_err(nats_error)?;
        ensure!(
            reply.payload.len() == self.payload.len(),
            "a reply of {} bytes",
            reply.payload.len()
        );
        Ok(Some(1))
    }
}
