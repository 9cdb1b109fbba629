//! The client's own copies of the bodies in Herald's HTTP contract (`HTTP-API.md`). They are
//! written from the contract, not shared with the server, so a test that uses them checks the
//! wire format rather than the server's types.
//!
//! Answers are decoded leniently: a field the contract marks optional may be missing, and the
//! objects a user inspects as a whole (topics, subscriptions, their stats, services) keep any field
//! this client does not know in `extra`, so printing them again loses nothing. CloudEvents are
//! plain [`serde_json::Value`]s.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The body of `PUT /v1/topics/{topic}`. A field left `None` takes the server's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopicSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// A duration string such as `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_window: Option<String>,
}

/// How long a topic keeps its events. `None` in an answer means "no limit"; in a request it means
/// "the server's default" for `max_age` and "no limit" for `max_bytes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    /// A duration string such as `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// `GET /v1/topics/{topic}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topic {
    pub name: String,
    #[serde(default)]
    pub partitions: Vec<PartitionInfo>,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub dedup_window: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub created: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One partition of a [`Topic`]: the offsets it holds are `start_offset..end_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub partition: u32,
    pub start_offset: u64,
    pub end_offset: u64,
    #[serde(default)]
    pub bytes: u64,
}

/// `GET /v1/topics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicList {
    pub topics: Vec<Topic>,
}

/// The answer to a publish: one entry per event, in input order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishResult {
    pub events: Vec<PublishedEvent>,
}

/// Where one published event was stored. `duplicate` means an event with the same `source` and
/// `id` was already stored within the topic's dedup window, at this position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedEvent {
    pub id: String,
    pub partition: u32,
    pub offset: u64,
    #[serde(default)]
    pub duplicate: bool,
}

/// The query of `GET /v1/topics/{topic}/events`. Give `offset` or `from_time`, not both; with
/// neither the server's default applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadQuery {
    pub partition: u32,
    pub offset: Option<u64>,
    /// RFC 3339.
    pub from_time: Option<String>,
    /// 1–1,000; the server's default (100) when `None`.
    pub limit: Option<u32>,
    /// A duration string (at most `60s`): long-poll until an event exists past `offset`.
    pub wait: Option<String>,
}

/// `GET /v1/topics/{topic}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadResponse {
    pub events: Vec<StoredEvent>,
    /// The offset to read from next.
    pub next_offset: u64,
}

/// One event as stored in a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub partition: u32,
    pub offset: u64,
    /// RFC 3339: when the broker stored the event.
    pub timestamp: String,
    pub event: Value,
}

/// One message of the live tail (`GET /v1/tail`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailEvent {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub event: Value,
}

/// The body of `PUT /v1/subscriptions/{name}`. Only `topics` is required; a field left `None`
/// takes the server's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionSettings {
    pub topics: Vec<String>,
    /// `queue` or `stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `latest`, `earliest` or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// A CloudEvents Subscriptions API filter, e.g. `{"prefix": {"type": "order."}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySettings>,
    /// `none` or `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<String>,
    /// Webhook settings (`url`, `secret`, `timeout`, `max_in_flight`, `content_mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<Value>,
}

/// The backoff applied to nacks without a delay and to expired leases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetrySettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
}

/// A subscription as the server describes it: its settings, and `stats` when one subscription is
/// described.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub name: String,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub start: Option<Value>,
    #[serde(default)]
    pub filter: Option<Value>,
    #[serde(default)]
    pub ack_timeout: Option<String>,
    #[serde(default)]
    pub max_deliveries: Option<u32>,
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    #[serde(default)]
    pub retry: Option<RetrySettings>,
    #[serde(default)]
    pub ordering: Option<String>,
    #[serde(default)]
    pub push: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SubscriptionStats>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The counters of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionStats {
    #[serde(default)]
    pub backlog: u64,
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub delivered: u64,
    #[serde(default)]
    pub acked: u64,
    #[serde(default)]
    pub redelivered: u64,
    #[serde(default)]
    pub dead_lettered: u64,
    /// Queue mode: how long the oldest event not yet done has been waiting, a duration string;
    /// `None` when no event is pending (and in stream mode).
    #[serde(default)]
    pub oldest_pending_age: Option<String>,
    /// Stream mode: the group's members that pulled recently, and their partitions.
    #[serde(default)]
    pub consumers: Vec<Consumer>,
    /// Webhook state (`state`, `last_error`) for push subscriptions.
    #[serde(default)]
    pub push: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One member of a stream subscription's consumer group, in [`SubscriptionStats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    #[serde(default)]
    pub name: String,
    /// The partitions it owns, as `topic/partition`.
    #[serde(default)]
    pub partitions: Vec<String>,
    /// RFC 3339: its last pull.
    #[serde(default)]
    pub last_seen: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GET /v1/subscriptions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionList {
    pub subscriptions: Vec<Subscription>,
}

/// The body of `POST /v1/subscriptions/{name}/pull`. A field left `None` takes the server's
/// default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// 1–1,000; the server's default is 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// A duration string (at most `60s`): long-poll until a delivery is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
    /// Names the caller; in stream mode it is the consumer's identity within the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
}

/// `POST /v1/subscriptions/{name}/pull`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    pub deliveries: Vec<Delivery>,
}

/// One delivery attempt of one event. The `receipt` names this attempt in ack, nack, extend and
/// reject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub receipt: String,
    pub attempt: u32,
    /// RFC 3339: when the lease ends.
    #[serde(default)]
    pub deadline: Option<String>,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub event: Value,
}

/// The answer to ack, nack, extend and reject: one result per receipt, in input order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckResponse {
    pub results: Vec<ReceiptResult>,
}

/// What happened to one receipt: `ok`, `stale` or `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptResult {
    pub receipt: String,
    pub status: String,
}

/// One webhook attempt, in `GET /v1/subscriptions/{name}/attempts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// RFC 3339: when it started.
    pub time: String,
    pub webhook_id: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// 1 for the event's first attempt.
    pub attempt: u32,
    /// The endpoint's status, `None` when no answer came.
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
    /// `delivered`, `failed`, `dead_lettered` or `disabled`.
    pub outcome: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The answer to `GET /v1/subscriptions/{name}/attempts`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptList {
    pub attempts: Vec<Attempt>,
}

/// The answer to `POST /v1/subscriptions/{name}/redrive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedriveResponse {
    /// How many events moved from the dead-letter topic back into the subscription.
    pub redriven: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Services {
    pub services: Vec<Service>,
}

/// One service that named itself with the `herald-service` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    #[serde(default)]
    pub publishes: Vec<String>,
    #[serde(default)]
    pub consumes: Vec<String>,
    /// RFC 3339.
    #[serde(default)]
    pub last_seen: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An RFC 9457 problem, the body of every error answer. Fields beyond the standard four (such as
/// `start_offset` in a 416) are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type", default = "about_blank")]
    pub problem_type: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn about_blank() -> String {
    "about:blank".to_owned()
}

impl Problem {
    /// An extra field as a number, e.g. `problem.extra_u64("start_offset")` of a 416.
    pub fn extra_u64(&self, field: &str) -> Option<u64> {
        self.extra.get(field).and_then(Value::as_u64)
    }
}

/// Options of a request (action/response). All optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    /// How long the call waits for the reply (`"5s"`; the server's default is 5s, at most 60s).
    pub timeout: Option<String>,
    /// How long the request stays open for a reply (`"1h"` by default, at most `"7d"`).
    pub deadline: Option<String>,
    /// The service whose instances may claim the reply (`herald-reply-group`); by default the
    /// client's service.
    pub reply_group: Option<String>,
    /// JSON kept with the request and handed back with its reply (`herald-context`).
    pub context: Option<Value>,
}

/// The answer to a request call.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestAnswer {
    /// Answered within the call's timeout (200).
    Replied {
        request_id: String,
        reply: Value,
        context: Value,
    },
    /// Not answered within the call's timeout (202): `status` is `pending`, or `expired` when the
    /// deadline passed while the call waited.
    Accepted { request_id: String, status: String },
}

impl RequestAnswer {
    pub fn request_id(&self) -> &str {
        match self {
            RequestAnswer::Replied { request_id, .. }
            | RequestAnswer::Accepted { request_id, .. } => request_id,
        }
    }
}

/// `GET /v1/requests/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestInfo {
    pub request_id: String,
    /// `pending`, `replied` or `expired`.
    pub status: String,
    pub topic: String,
    pub group: String,
    #[serde(default)]
    pub reply: Value,
    #[serde(default)]
    pub context: Value,
    pub deadline: String,
}
