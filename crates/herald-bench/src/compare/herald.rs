//! Herald in `herald-bench compare`: the real `herald serve` (started through
//! [`crate::herald_process`], data on the bench directory's disk), driven over HTTP with the
//! same requests as `herald-bench publish` and `herald-bench queue` (their batch templates,
//! pull and ack helpers and byte-search parsers are reused here).
//!
//! How each workload maps onto Herald:
//! - publish: one topic of 1 partition; each producer posts batches of CloudEvents
//!   (`application/cloudevents-batch+json`) on its own connection; the 201 comes after the
//!   events are durable under the server's fsync policy.
//! - queue: a topic of 4 partitions with a queue subscription (`start: earliest`), filled
//!   before the rounds; consumers loop `pull` (`max` = what their budget allows) + `ack` of
//!   every receipt.
//! - fan-out: a topic of 1 partition and one stream subscription (consumer group) per
//!   subscriber; each loops `pull` (max 100) + `ack` of the last receipt (a stream ack commits
//!   everything up to it).
//! - latency: a queue subscription long-polled (`wait: 20s`) by one consumer that acks each
//!   answer; events carry their send time in `data.sent_us`.
//! - replay: `GET /v1/topics/{topic}/events` of the queue workload's topic, 1,000 events per
//!   call, every partition from offset 0.
//! - request/reply: `herald-bench request`'s requesters and responders: `POST
//!   /v1/topics/{topic}/requests` held open until the reply; responders pull the requests from a
//!   queue subscription, post `POST /v1/requests/{id}/reply` for each and ack them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use reqwest::StatusCode;

use super::load::{
    Budget, CpuProbe, Stop, TimedConsumer, TimedPublisher, Worker, run_latency, run_workers,
    unix_micros,
};
use super::{Durability, Outcome, Settings, Workload};
use crate::herald_process::HeraldProcess;
use crate::publish_load::{self, BatchTemplate, find};
use crate::queue_bench::{self, Deliveries};
use crate::request_bench;

const BACKLOG_TOPIC: &str = "compare-backlog";
const BACKLOG_SUBSCRIPTION: &str = "compare-workers";
const BACKLOG_PARTITIONS: u32 = 4;

/// One `herald serve` under one fsync policy.
#[derive(Debug)]
pub struct HeraldTarget {
    process: Option<HeraldProcess>,
    base_url: String,
    fsync: String,
    /// Makes this run's event sources (hence dedup keys) unique.
    run: String,
    backlog_filled: bool,
    /// The request/reply workload's queue subscription exists.
    responders_subscribed: bool,
}

impl HeraldTarget {
    /// Starts `binary serve --fsync FSYNC` with its data in `directory` and waits until it is
    /// ready. Runs `runtime.block_on` itself, so it must not be called from inside the runtime.
    pub fn start(
        binary: &Path,
        directory: &Path,
        fsync: &str,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<HeraldTarget> {
        let mut process = HeraldProcess::start(binary, directory, fsync)?;
        process.wait_ready(runtime)?;
        Ok(HeraldTarget {
            base_url: process.url(),
            process: Some(process),
            fsync: fsync.to_owned(),
            run: publish_load::run_tag(),
            backlog_filled: false,
            responders_subscribed: false,
        })
    }

    pub fn url(&self) -> &str {
        &self.base_url
    }

    pub fn durability(&self, _workload: Workload) -> Durability {
        if self.fsync == "always" {
            Durability::FsyncBeforeAck
        } else {
            Durability::OsBuffered
        }
    }

    pub fn cpu_probe(&self) -> CpuProbe {
        self.process
            .as_ref()
            .and_then(HeraldProcess::pid)
            .map_or(CpuProbe::None, CpuProbe::Pid)
    }

    pub fn design(&self, workload: Workload) -> &'static str {
        match workload {
            Workload::Publish => {
                "1 partition; POST batches (cloudevents-batch+json), 201 after the append"
            }
            Workload::Queue => {
                "4 partitions, queue subscription; pull (max 100) + ack of every receipt"
            }
            Workload::Fanout => {
                "1 partition, one stream subscription per subscriber; pull 100 + ack (commit) of the last"
            }
            Workload::Latency => {
                "queue subscription, one long-polling consumer (wait 20s), ack per answer"
            }
            Workload::Replay => {
                "GET /v1/topics/{t}/events, 1,000 per call, every partition from offset 0"
            }
            Workload::RequestReply => {
                "herald-bench request's loop: POST /v1/topics/{t}/requests held open; responders pull (max 32), POST /v1/requests/{id}/reply each, ack"
            }
        }
    }

    /// Fails when the server has exited, with its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.process.as_mut() {
            Some(process) => process.check_running(),
            None => bail!("the server was stopped"),
        }
    }

    fn source(&self, name: &str, number: u32) -> String {
        publish_load::event_source(&format!("{}-{name}", self.run), number)
    }

    pub async fn publish(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let topic = format!("compare-publish-r{round}");
        publish_load::create_topic(&self.base_url, &topic, 1, None).await?;
        let url = format!("{}/v1/topics/{topic}/events", self.base_url);
        let mut workers = Vec::new();
        for number in 0..settings.producers {
            workers.push(Producer {
                client: queue_bench::client()?,
                url: url.clone(),
                template: BatchTemplate::new(
                    self.source(&topic, number),
                    settings.publish_batch,
                    settings.event_bytes,
                )?,
                budget: None,
            });
        }
        let run = run_workers(workers, settings.publish_stop(), &self.cpu_probe()).await;
        publish_load::delete_topic(&self.base_url, &topic).await?;
        Ok(Outcome::Measured(run?.into()))
    }

    /// Fills the queue workload's topic (and creates its subscription first).
    pub async fn prefill(&mut self, settings: &Settings) -> anyhow::Result<Outcome> {
        publish_load::create_topic(&self.base_url, BACKLOG_TOPIC, BACKLOG_PARTITIONS, None).await?;
        let subscription = serde_json::json!({
            "topics": [BACKLOG_TOPIC], "start": "earliest", "mode": "queue"
        });
        publish_load::put_json(
            &format!("{}/v1/subscriptions/{BACKLOG_SUBSCRIPTION}", self.base_url),
            &subscription,
        )
        .await?;
        let url = format!("{}/v1/topics/{BACKLOG_TOPIC}/events", self.base_url);
        let budget = Budget::new(settings.backlog_events);
        let mut workers = Vec::new();
        for number in 0..settings.producers {
            workers.push(Producer {
                client: queue_bench::client()?,
                url: url.clone(),
                template: BatchTemplate::new(
                    self.source(BACKLOG_TOPIC, number),
                    settings.prefill_batch,
                    settings.event_bytes,
                )?,
                budget: Some(budget.clone()),
            });
        }
        let run = run_workers(
            workers,
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
        let mut workers = Vec::new();
        for number in 0..settings.consumers {
            workers.push(QueueConsumer {
                client: queue_bench::client()?,
                pull_url: format!(
                    "{}/v1/subscriptions/{BACKLOG_SUBSCRIPTION}/pull",
                    self.base_url
                ),
                ack_url: format!(
                    "{}/v1/subscriptions/{BACKLOG_SUBSCRIPTION}/ack",
                    self.base_url
                ),
                consumer: format!("c{number}"),
                pull_max: u64::from(settings.pull_max),
                budget: budget.clone(),
            });
        }
        let run = run_workers(workers, Stop::Count { target: events }, &self.cpu_probe()).await?;
        Ok(Outcome::Measured(run.into()))
    }

    pub async fn replay(&mut self, settings: &Settings, _round: u32) -> anyhow::Result<Outcome> {
        if !self.backlog_filled {
            self.prefill(settings).await?;
        }
        let reader = Replayer {
            client: queue_bench::client()?,
            base_url: self.base_url.clone(),
            partition: 0,
            offset: 0,
            limit: settings.replay_batch,
            target: settings.backlog_events,
            read: 0,
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
        let topic = format!("compare-fanout-r{round}");
        publish_load::create_topic(&self.base_url, &topic, 1, None).await?;
        let names: Vec<String> = (0..settings.fanout_subscriptions)
            .map(|number| format!("{topic}-s{number}"))
            .collect();
        for name in &names {
            let subscription =
                serde_json::json!({ "topics": [topic], "start": "earliest", "mode": "stream" });
            publish_load::put_json(
                &format!("{}/v1/subscriptions/{name}", self.base_url),
                &subscription,
            )
            .await?;
        }
        let producer = Producer {
            client: queue_bench::client()?,
            url: format!("{}/v1/topics/{topic}/events", self.base_url),
            template: BatchTemplate::new(
                self.source(&topic, 0),
                settings.fanout_batch,
                settings.event_bytes,
            )?,
            budget: Some(Budget::new(settings.fanout_events)),
        };
        let mut subscribers = Vec::new();
        for name in &names {
            subscribers.push(StreamSubscriber {
                client: queue_bench::client()?,
                pull_url: format!("{}/v1/subscriptions/{name}/pull", self.base_url),
                ack_url: format!("{}/v1/subscriptions/{name}/ack", self.base_url),
            });
        }
        let result = super::run_fanout(
            producer,
            subscribers,
            settings.fanout_events,
            &self.cpu_probe(),
        )
        .await;
        for name in &names {
            delete(&format!("{}/v1/subscriptions/{name}", self.base_url)).await?;
        }
        publish_load::delete_topic(&self.base_url, &topic).await?;
        Ok(Outcome::Measured(result?))
    }

    pub async fn latency(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let topic = format!("compare-latency-r{round}");
        publish_load::create_topic(&self.base_url, &topic, 1, None).await?;
        let subscription =
            serde_json::json!({ "topics": [topic], "start": "earliest", "mode": "queue" });
        let subscription_url = format!("{}/v1/subscriptions/{topic}", self.base_url);
        publish_load::put_json(&subscription_url, &subscription).await?;
        let publisher = LatencyPublisher {
            clients: Arc::new(
                (0..4)
                    .map(|_| queue_bench::client())
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
            url: Arc::new(format!("{}/v1/topics/{topic}/events", self.base_url)),
            source: Arc::new(self.source(&topic, 0)),
            event_bytes: settings.event_bytes,
        };
        let consumer = LatencyConsumer {
            client: queue_bench::client()?,
            pull_url: format!("{subscription_url}/pull"),
            ack_url: format!("{subscription_url}/ack"),
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
        delete(&subscription_url).await?;
        publish_load::delete_topic(&self.base_url, &topic).await?;
        Ok(Outcome::Measured(result?.into()))
    }

    /// `herald-bench request`'s requesters and responders (the same code), as many responders
    /// as requesters.
    pub async fn request_reply(
        &mut self,
        settings: &Settings,
        _round: u32,
    ) -> anyhow::Result<Outcome> {
        if !self.responders_subscribed {
            publish_load::put_json(
                &format!(
                    "{}/v1/subscriptions/{}",
                    self.base_url,
                    request_bench::SUBSCRIPTION
                ),
                &serde_json::json!({"topics": [request_bench::TOPIC], "start": "latest"}),
            )
            .await?;
            self.responders_subscribed = true;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut responders = Vec::new();
        for number in 0..settings.requesters {
            responders.push(tokio::spawn(request_bench::respond(
                request_bench::client()?,
                self.base_url.clone(),
                number,
                stop.clone(),
            )));
        }
        let url = format!(
            "{}/v1/topics/{}/requests?timeout=10s",
            self.base_url,
            request_bench::TOPIC
        );
        let data = Bytes::from(request_bench::request_data(settings.event_bytes));
        let mut requesters = Vec::new();
        for _ in 0..settings.requesters {
            requesters.push(Requester {
                client: request_bench::client()?,
                url: url.clone(),
                data: data.clone(),
            });
        }
        let run = run_workers(requesters, settings.request_stop(), &self.cpu_probe()).await;
        stop.store(true, Ordering::Relaxed);
        for responder in responders {
            responder.await.context("a responder panicked")??;
        }
        Ok(Outcome::Measured(run?.into()))
    }

    /// Stops the server (SIGTERM, graceful) and deletes its data.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(process) = self.process.take() {
            process.stop()?;
        }
        Ok(())
    }
}

async fn delete(url: &str) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .delete(url)
        .send()
        .await
        .with_context(|| format!("DELETE {url}"))?;
    ensure!(
        response.status().is_success(),
        "DELETE {url} answered {}",
        response.status()
    );
    Ok(())
}

/// Posts batches of the template; on a budget (prefill, fan-out) until it is spent.
struct Producer {
    client: reqwest::Client,
    url: String,
    template: BatchTemplate,
    budget: Option<Arc<Budget>>,
}

impl Worker for Producer {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let events = u64::from(self.template.events());
        if let Some(budget) = &self.budget {
            let taken = budget.take(events);
            if taken == 0 {
                return Ok(None);
            }
            ensure!(
                taken == events,
                "the budget is not a multiple of the batch ({events})"
            );
        }
        publish_load::publish_batch(&self.client, &self.url, &mut self.template).await?;
        Ok(Some(events))
    }
}

/// A competing consumer of the queue workload.
struct QueueConsumer {
    client: reqwest::Client,
    pull_url: String,
    ack_url: String,
    consumer: String,
    pull_max: u64,
    budget: Arc<Budget>,
}

impl Worker for QueueConsumer {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let wanted = self.budget.take(self.pull_max);
        if wanted == 0 {
            return Ok(None);
        }
        let body = Bytes::from(format!(
            r#"{{"max":{wanted},"consumer":"{}","wait":"1s"}}"#,
            self.consumer
        ));
        let answer = match queue_bench::pull(&self.client, &self.pull_url, body).await {
            Ok(answer) => answer,
            Err(error) => {
                self.budget.give_back(wanted);
                return Err(error);
            }
        };
        let deliveries = Deliveries::parse(&answer)?;
        let received = deliveries.receipts.len() as u64;
        ensure!(received <= wanted, "a pull of {wanted} answered {received}");
        self.budget.give_back(wanted - received);
        if received > 0 {
            queue_bench::ack(&self.client, &self.ack_url, &deliveries.receipts).await?;
        }
        Ok(Some(received))
    }
}

/// A consumer of one stream subscription (fan-out).
struct StreamSubscriber {
    client: reqwest::Client,
    pull_url: String,
    ack_url: String,
}

impl Worker for StreamSubscriber {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let body = Bytes::from_static(br#"{"max":100,"consumer":"c","wait":"1s"}"#);
        let answer = queue_bench::pull(&self.client, &self.pull_url, body).await?;
        let deliveries = Deliveries::parse(&answer)?;
        if let Some(last) = deliveries.receipts.last() {
            // A stream ack commits everything up to and including its offset.
            queue_bench::ack(&self.client, &self.ack_url, &[last]).await?;
        }
        Ok(Some(deliveries.receipts.len() as u64))
    }
}

/// Reads the backlog topic from the start, partition after partition.
struct Replayer {
    client: reqwest::Client,
    base_url: String,
    partition: u32,
    offset: u64,
    limit: u32,
    target: u64,
    read: u64,
}

impl Worker for Replayer {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        const NEXT: &[u8] = b"\"next_offset\":";
        if self.read >= self.target {
            return Ok(None);
        }
        ensure!(
            self.partition < BACKLOG_PARTITIONS,
            "read every partition but found only {} of {} events",
            self.read,
            self.target
        );
        let url = format!(
            "{}/v1/topics/{BACKLOG_TOPIC}/events?partition={}&offset={}&limit={}",
            self.base_url, self.partition, self.offset, self.limit
        );
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let answer = response.bytes().await?;
        ensure!(
            status == StatusCode::OK,
            "GET {url} answered {status}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(300)])
        );
        // Offsets are dense, so the events read are `next_offset - offset`.
        let at = find(&answer, NEXT).context("a read answer without next_offset")? + NEXT.len();
        let digits = answer[at..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        let next: u64 = std::str::from_utf8(&answer[at..at + digits])?.parse()?;
        let events = next - self.offset;
        if events == 0 {
            self.partition += 1;
            self.offset = 0;
        } else {
            self.offset = next;
        }
        self.read += events;
        Ok(Some(events))
    }
}

/// Publishes the latency workload's timed batches on a few connections in turn.
#[derive(Clone)]
struct LatencyPublisher {
    clients: Arc<Vec<reqwest::Client>>,
    url: Arc<String>,
    source: Arc<String>,
    event_bytes: usize,
}

impl TimedPublisher for LatencyPublisher {
    async fn publish(&self, number: u64, sent_micros: u64, events: u32) -> anyhow::Result<()> {
        let client = &self.clients[number as usize % self.clients.len()];
        let body = queue_bench::timed_batch(
            &self.source,
            number * u64::from(events),
            events,
            self.event_bytes,
            sent_micros,
        );
        let (status, answer) =
            publish_load::post(client, &self.url, publish_load::BATCH_CONTENT_TYPE, body).await?;
        publish_load::check_published(&self.url, status, &answer, u64::from(events))
    }
}

/// The latency workload's consumer: long-polls, reads the send times, acks.
struct LatencyConsumer {
    client: reqwest::Client,
    pull_url: String,
    ack_url: String,
}

impl TimedConsumer for LatencyConsumer {
    async fn receive(&mut self) -> anyhow::Result<(u64, Vec<u64>)> {
        let body = Bytes::from_static(br#"{"max":100,"consumer":"latency","wait":"20s"}"#);
        let answer = queue_bench::pull(&self.client, &self.pull_url, body).await?;
        let arrived = unix_micros();
        let deliveries = Deliveries::parse(&answer)?;
        ensure!(
            deliveries.sent_micros.len() == deliveries.receipts.len(),
            "{} of {} deliveries carry a sent_us",
            deliveries.sent_micros.len(),
            deliveries.receipts.len()
        );
        if !deliveries.receipts.is_empty() {
            queue_bench::ack(&self.client, &self.ack_url, &deliveries.receipts).await?;
        }
        Ok((arrived, deliveries.sent_micros))
    }
}

/// One requester: sends a request and waits for the answer that carries its reply.
struct Requester {
    client: reqwest::Client,
    url: String,
    data: Bytes,
}

impl Worker for Requester {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let answered =
            request_bench::round_trip(&self.client, &self.url, self.data.clone()).await?;
        ensure!(answered, "a request was not answered within 10 s (202)");
        Ok(Some(1))
    }
}
