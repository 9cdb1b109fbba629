//! RabbitMQ in `herald-bench compare`, through `lapin` (AMQP 0-9-1).
//!
//! A quorum queue appends every message to its Raft log (the Ra write-ahead log, synced with
//! `fdatasync` by default) before the publisher's confirm, so with publisher confirms it is in
//! the "fsync before ack" class. A stream queue (the replay workload) does not fsync; it relies
//! on replication, so on one node it is "OS-buffered". Direct reply-to keeps nothing.
//!
//! How each workload maps onto RabbitMQ:
//! - publish: one quorum queue; each producer (own connection and channel, confirms on)
//!   publishes a batch to the default exchange, then awaits every confirm.
//! - queue: one quorum queue; competing consumers (own connections) with prefetch 100 take the
//!   events of their budget and ack the last one with `multiple`.
//! - fan-out: a topic exchange bound to one quorum queue per subscriber; each subscriber
//!   (prefetch 100) takes what has arrived and acks the last with `multiple`.
//! - latency: one quorum queue, one consumer (prefetch 100), acks with `multiple`.
//! - replay: a stream queue (`x-queue-type: stream`), filled once, read from
//!   `x-stream-offset: first` with prefetch 1,000.
//! - request/reply: direct reply-to (`amq.rabbitmq.reply-to`) over a classic, non-durable
//!   request queue: nothing stored, so not durable.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use super::load::{
    Budget, CpuProbe, Stop, TimedConsumer, TimedPublisher, Worker, run_latency, run_workers,
    sent_micros, timed_payload, unix_micros,
};
use super::{Durability, Outcome, Settings, Workload};

const BACKLOG_QUEUE: &str = "herald-bench.backlog";
const REPLAY_STREAM: &str = "herald-bench.replay";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a consumer waits for a delivery it is owed before the run fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Persistent (delivery mode 2); quorum and stream queues store every message anyway.
const PERSISTENT: u8 = 2;

/// A connected RabbitMQ.
#[derive(Debug)]
pub struct RabbitTarget {
    url: String,
    admin: Channel,
    /// Kept open for `admin`.
    _connection: Arc<Connection>,
    payload: Arc<Vec<u8>>,
    backlog_filled: bool,
    replay_filled: bool,
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "no answer from {url} within {} s",
            CONNECT_TIMEOUT.as_secs()
        )
    })?
    .with_context(|| format!("connecting to {url}"))
}

/// A connection with one channel on it (the connection closes when both are dropped).
async fn channel(url: &str) -> anyhow::Result<(Connection, Channel)> {
    let connection = connect(url).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

fn queue_arguments(kind: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from(kind)),
    );
    arguments
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

impl RabbitTarget {
    pub async fn connect(url: &str, settings: &Settings) -> anyhow::Result<RabbitTarget> {
        let (connection, admin) = channel(url).await?;
        Ok(RabbitTarget {
            url: url.to_owned(),
            admin,
            _connection: Arc::new(connection),
            payload: Arc::new(super::load::payload(settings.event_bytes)),
            backlog_filled: false,
            replay_filled: false,
        })
    }

    pub fn describe(&self) -> String {
        let address = self.url.rsplit('@').next().unwrap_or(&self.url);
        format!(
            "RabbitMQ at amqp://{address} (guest); quorum queues for the durable workloads, a \
             stream queue for replay, direct reply-to for request/reply"
        )
    }

    pub fn durability(&self, workload: Workload) -> Durability {
        match workload {
            Workload::Replay => Durability::OsBuffered,
            Workload::RequestReply => Durability::NotDurable,
            _ => Durability::FsyncBeforeAck,
        }
    }

    pub fn cpu_probe(&self) -> CpuProbe {
        CpuProbe::Command("beam.smp")
    }

    pub fn design(&self, workload: Workload) -> &'static str {
        match workload {
            Workload::Publish => {
                "quorum queue, publisher confirms; publish the batch, await every confirm"
            }
            Workload::Queue => "quorum queue, prefetch 100, manual ack (multiple) of each batch",
            Workload::Fanout => {
                "topic exchange → one quorum queue per subscriber; prefetch 100, ack multiple"
            }
            Workload::Latency => "quorum queue, one consumer, prefetch 100, ack multiple",
            Workload::Replay => {
                "stream queue over AMQP 0-9-1, x-stream-offset first, prefetch 1,000"
            }
            Workload::RequestReply => {
                "direct reply-to; competing responders on a classic non-durable request queue (nothing stored)"
            }
        }
    }

    async fn declare(&self, name: &str, kind: &str) -> anyhow::Result<()> {
        // Whatever an interrupted run left is dropped first.
        self.delete_queue(name).await?;
        self.admin
            .queue_declare(name.into(), durable(), queue_arguments(kind))
            .await
            .with_context(|| format!("declaring {kind} queue {name}"))?;
        Ok(())
    }

    async fn delete_queue(&self, name: &str) -> anyhow::Result<()> {
        self.admin
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting queue {name}"))?;
        Ok(())
    }

    async fn producers(
        &self,
        exchange: &str,
        routing_key: &str,
        count: u32,
        batch: u32,
        budget: Option<Arc<Budget>>,
    ) -> anyhow::Result<Vec<Producer>> {
        let mut producers = Vec::new();
        for _ in 0..count {
            let (connection, channel) = channel(&self.url).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            producers.push(Producer {
                _connection: connection,
                channel,
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                payload: self.payload.clone(),
                batch,
                budget: budget.clone(),
            });
        }
        Ok(producers)
    }

    async fn fill(
        &self,
        queue: &str,
        settings: &Settings,
        events: u64,
    ) -> anyhow::Result<super::load::Run> {
        let budget = Budget::new(events);
        let producers = self
            .producers(
                "",
                queue,
                settings.producers,
                settings.prefill_batch,
                Some(budget),
            )
            .await?;
        run_workers(producers, Stop::Count { target: events }, &self.cpu_probe()).await
    }

    pub async fn publish(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let queue = format!("herald-bench.publish.r{round}");
        self.declare(&queue, "quorum").await?;
        let producers = self
            .producers("", &queue, settings.producers, settings.publish_batch, None)
            .await?;
        let run = run_workers(producers, settings.publish_stop(), &self.cpu_probe()).await;
        self.delete_queue(&queue).await?;
        Ok(Outcome::Measured(run?.into()))
    }

    pub async fn prefill(&mut self, settings: &Settings) -> anyhow::Result<Outcome> {
        self.declare(BACKLOG_QUEUE, "quorum").await?;
        let run = self
            .fill(BACKLOG_QUEUE, settings, settings.backlog_events)
            .await?;
        self.backlog_filled = true;
        Ok(Outcome::Measured(run.into()))
    }

    async fn consumer(
        &self,
        queue: &str,
        prefetch: u16,
        arguments: FieldTable,
    ) -> anyhow::Result<Subscriber> {
        let (connection, channel) = channel(&self.url).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .with_context(|| format!("consuming from {queue}"))?;
        Ok(Subscriber {
            _connection: connection,
            channel,
            consumer,
        })
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
            consumers.push(QueueConsumer {
                subscriber: Some(
                    self.consumer(BACKLOG_QUEUE, 100, FieldTable::default())
                        .await?,
                ),
                pull_max: u64::from(settings.pull_max),
                budget: budget.clone(),
            });
        }
        let run = run_workers(consumers, Stop::Count { target: events }, &self.cpu_probe()).await?;
        Ok(Outcome::Measured(run.into()))
    }

    pub async fn replay(&mut self, settings: &Settings, _round: u32) -> anyhow::Result<Outcome> {
        if !self.replay_filled {
            self.declare(REPLAY_STREAM, "stream").await?;
            self.fill(REPLAY_STREAM, settings, settings.backlog_events)
                .await?;
            self.replay_filled = true;
        }
        let mut arguments = FieldTable::default();
        arguments.insert(
            ShortString::from("x-stream-offset"),
            AMQPValue::LongString(LongString::from("first")),
        );
        let prefetch = u16::try_from(settings.replay_batch).unwrap_or(u16::MAX);
        let reader = self.consumer(REPLAY_STREAM, prefetch, arguments).await?;
        let run = run_workers(
            vec![StreamReader {
                subscriber: reader,
                batch: settings.replay_batch,
            }],
            Stop::Count {
                target: settings.backlog_events,
            },
            &self.cpu_probe(),
        )
        .await?;
        Ok(Outcome::Measured(run.into()))
    }

    pub async fn fanout(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let exchange = format!("herald-bench.fanout.r{round}");
        self.admin
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring exchange {exchange}"))?;
        let queues: Vec<String> = (0..settings.fanout_subscriptions)
            .map(|number| format!("{exchange}.s{number}"))
            .collect();
        let mut subscribers = Vec::new();
        for queue in &queues {
            self.declare(queue, "quorum").await?;
            self.admin
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "bench.#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            subscribers.push(self.consumer(queue, 100, FieldTable::default()).await?);
        }
        let mut producers = self
            .producers(
                &exchange,
                "bench.event",
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
        for queue in &queues {
            self.delete_queue(queue).await?;
        }
        self.admin
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
        Ok(Outcome::Measured(result?))
    }

    pub async fn latency(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let queue = format!("herald-bench.latency.r{round}");
        self.declare(&queue, "quorum").await?;
        let consumer = self.consumer(&queue, 100, FieldTable::default()).await?;
        let mut channels = Vec::new();
        let mut connections = Vec::new();
        for _ in 0..4 {
            let (connection, channel) = channel(&self.url).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            connections.push(connection);
            channels.push(channel);
        }
        let publisher = LatencyPublisher {
            channels: Arc::new(channels),
            queue: Arc::new(queue.clone()),
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
        drop(connections);
        self.delete_queue(&queue).await?;
        Ok(Outcome::Measured(result?.into()))
    }

    pub async fn request_reply(
        &mut self,
        settings: &Settings,
        round: u32,
    ) -> anyhow::Result<Outcome> {
        const REPLY_TO: &str = "amq.rabbitmq.reply-to";
        let queue = format!("herald-bench.rpc.r{round}");
        self.admin
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        // As many responders as requesters, competing on the request queue.
        let mut responders = Vec::new();
        for _ in 0..settings.requesters {
            let (connection, channel) = channel(&self.url).await?;
            let requests = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            responders.push(tokio::spawn(respond(
                connection,
                channel,
                requests,
                self.payload.clone(),
            )));
        }
        let mut requesters = Vec::new();
        for _ in 0..settings.requesters {
            let (connection, channel) = channel(&self.url).await?;
            let replies = channel
                .basic_consume(
                    REPLY_TO.into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            requesters.push(Requester {
                _connection: connection,
                channel,
                replies,
                queue: queue.as_str().into(),
                payload: self.payload.clone(),
                sequence: 0,
            });
        }
        let run = run_workers(requesters, settings.request_stop(), &self.cpu_probe()).await;
        for responder in responders {
            responder.abort();
        }
        self.delete_queue(&queue).await?;
        Ok(Outcome::Measured(run?.into()))
    }

    pub async fn cleanup(&mut self) -> anyhow::Result<()> {
        if self.backlog_filled {
            self.delete_queue(BACKLOG_QUEUE).await?;
            self.backlog_filled = false;
        }
        if self.replay_filled {
            self.delete_queue(REPLAY_STREAM).await?;
            self.replay_filled = false;
        }
        Ok(())
    }
}

/// Publishes a batch with confirms on, then awaits every confirm.
struct Producer {
    _connection: Connection,
    channel: Channel,
    exchange: ShortString,
    routing_key: ShortString,
    payload: Arc<Vec<u8>>,
    batch: u32,
    budget: Option<Arc<Budget>>,
}

async fn publish_confirmed(
    channel: &Channel,
    exchange: &ShortString,
    routing_key: &ShortString,
    payloads: impl Iterator<Item = &[u8]>,
) -> anyhow::Result<()> {
    let mut confirms = Vec::new();
    for payload in payloads {
        confirms.push(
            channel
                .basic_publish(
                    exchange.clone(),
                    routing_key.clone(),
                    BasicPublishOptions::default(),
                    payload,
                    BasicProperties::default().with_delivery_mode(PERSISTENT),
                )
                .await?,
        );
    }
    for confirm in confirms {
        ensure!(
            confirm.await?.is_ack(),
            "the broker refused (nacked) a message"
        );
    }
    Ok(())
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
        publish_confirmed(
            &self.channel,
            &self.exchange,
            &self.routing_key,
            std::iter::repeat_n(payload, self.batch as usize),
        )
        .await?;
        Ok(Some(batch))
    }
}

/// A consumer on its own connection.
struct Subscriber {
    _connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

impl Subscriber {
    async fn next_delivery(&mut self) -> anyhow::Result<lapin::message::Delivery> {
        tokio::time::timeout(DELIVERY_TIMEOUT, self.consumer.next())
            .await
            .map_err(|_| anyhow!("no delivery within {} s", DELIVERY_TIMEOUT.as_secs()))?
            .context("the consumer was cancelled")?
            .context("a delivery failed")
    }

    /// Waits for one delivery, takes what else has already arrived (up to `max`), and returns
    /// them with the time the first arrived.
    async fn next_deliveries(
        &mut self,
        max: usize,
    ) -> anyhow::Result<(u64, Vec<lapin::message::Delivery>)> {
        let first = self.next_delivery().await?;
        let arrived = unix_micros();
        let mut deliveries = vec![first];
        while deliveries.len() < max {
            match self.consumer.next().now_or_never() {
                Some(Some(delivery)) => deliveries.push(delivery?),
                _ => break,
            }
        }
        Ok((arrived, deliveries))
    }
}

async fn ack_through(delivery: &lapin::message::Delivery) -> anyhow::Result<()> {
    delivery
        .acker
        .ack(BasicAckOptions { multiple: true })
        .await?;
    Ok(())
}

impl Worker for Subscriber {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let (_, deliveries) = self.next_deliveries(100).await?;
        if let Some(last) = deliveries.last() {
            ack_through(last).await?;
        }
        Ok(Some(deliveries.len() as u64))
    }
}

impl TimedConsumer for Subscriber {
    async fn receive(&mut self) -> anyhow::Result<(u64, Vec<u64>)> {
        let (arrived, deliveries) = self.next_deliveries(100).await?;
        let sent = deliveries
            .iter()
            .map(|delivery| sent_micros(&delivery.data))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(last) = deliveries.last() {
            ack_through(last).await?;
        }
        Ok((arrived, sent))
    }
}

/// A competing consumer of the queue workload: receives what its budget allows, acks them.
struct QueueConsumer {
    subscriber: Option<Subscriber>,
    pull_max: u64,
    budget: Arc<Budget>,
}

impl Worker for QueueConsumer {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let wanted = self.budget.take(self.pull_max);
        if wanted == 0 {
            // Closing the channel hands what the broker pushed ahead back to the queue, for
            // the consumers still working.
            if let Some(subscriber) = self.subscriber.take() {
                subscriber.channel.close(200, "done".into()).await.ok();
            }
            return Ok(None);
        }
        let subscriber = self
            .subscriber
            .as_mut()
            .context("the consumer was closed")?;
        let mut last = None;
        for _ in 0..wanted {
            last = Some(subscriber.next_delivery().await?);
        }
        if let Some(last) = last {
            ack_through(&last).await?;
        }
        Ok(Some(wanted))
    }
}

/// Reads a stream queue: what has arrived, up to a batch, per step; acks (which grants credit).
struct StreamReader {
    subscriber: Subscriber,
    batch: u32,
}

impl Worker for StreamReader {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let (_, deliveries) = self
            .subscriber
            .next_deliveries(self.batch as usize / 2)
            .await?;
        if let Some(last) = deliveries.last() {
            ack_through(last).await?;
        }
        Ok(Some(deliveries.len() as u64))
    }
}

#[derive(Clone)]
struct LatencyPublisher {
    channels: Arc<Vec<Channel>>,
    queue: Arc<String>,
    template: Arc<Vec<u8>>,
}

impl TimedPublisher for LatencyPublisher {
    async fn publish(&self, number: u64, sent: u64, events: u32) -> anyhow::Result<()> {
        let channel = &self.channels[number as usize % self.channels.len()];
        let payload = timed_payload(&self.template, sent);
        publish_confirmed(
            channel,
            &ShortString::from(""),
            &ShortString::from(self.queue.as_str()),
            std::iter::repeat_n(payload.as_slice(), events as usize),
        )
        .await
    }
}

/// A responder of direct reply-to: answers each request to its `reply_to`.
async fn respond(
    _connection: Connection,
    channel: Channel,
    mut requests: Consumer,
    reply: Arc<Vec<u8>>,
) -> anyhow::Result<()> {
    while let Some(request) = requests.next().await {
        let request = request?;
        let to = request
            .properties
            .reply_to()
            .clone()
            .context("a request without reply_to")?;
        let mut properties = BasicProperties::default();
        if let Some(correlation) = request.properties.correlation_id() {
            properties = properties.with_correlation_id(correlation.clone());
        }
        channel
            .basic_publish(
                "".into(),
                to,
                BasicPublishOptions::default(),
                &reply,
                properties,
            )
            .await?;
    }
    Ok(())
}

/// One requester of direct reply-to.
struct Requester {
    _connection: Connection,
    channel: Channel,
    replies: Consumer,
    queue: ShortString,
    payload: Arc<Vec<u8>>,
    sequence: u64,
}

impl Worker for Requester {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        self.sequence += 1;
        let correlation = ShortString::from(self.sequence.to_string());
        self.channel
            .basic_publish(
                "".into(),
                self.queue.clone(),
                BasicPublishOptions::default(),
                &self.payload,
                BasicProperties::default()
                    .with_reply_to("amq.rabbitmq.reply-to".into())
                    .with_correlation_id(correlation.clone()),
            )
            .await?;
        let reply = tokio::time::timeout(DELIVERY_TIMEOUT, self.replies.next())
            .await
            .map_err(|_| anyhow!("no reply within {} s", DELIVERY_TIMEOUT.as_secs()))?
            .context("the reply consumer was cancelled")??;
        ensure!(
            reply.properties.correlation_id().as_ref() == Some(&correlation),
            "a reply to another request"
        );
        Ok(Some(1))
    }
}
