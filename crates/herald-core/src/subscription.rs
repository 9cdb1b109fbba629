//! Subscription settings as the core understands them. Stored in the metadata database as
//! JSON (serde here is for persistence only; the HTTP API has its own DTOs).

use serde::{Deserialize, Serialize};

/// How a subscription is consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Competing consumers with per-event acks (not built yet).
    Queue,
    /// A consumer group reading partitions in order, committing offsets.
    Stream,
}

/// Where a new subscription starts on the topics that exist when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    Latest,
    Earliest,
    /// The first event at or after this time (ms since the Unix epoch).
    Time(u64),
}

/// Retry backoff of queue subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
}

/// Per-key ordering of queue subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    None,
    Key,
}

/// A subscription's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionSpec {
    /// Topic names or patterns.
    pub topics: Vec<String>,
    pub mode: Mode,
    pub start: Start,
    pub filter: Option<serde_json::Value>,
    pub ack_timeout_ms: u64,
    pub max_deliveries: u32,
    pub dead_letter_topic: String,
    pub retry: Retry,
    pub ordering: Ordering,
    pub push: Option<serde_json::Value>,
}

impl SubscriptionSpec {
    /// The defaults of the HTTP contract for a subscription named `name`.
    pub fn with_defaults(name: &str, topics: Vec<String>) -> Self {
        Self {
            topics,
            mode: Mode::Queue,
            start: Start::Latest,
            filter: None,
            ack_timeout_ms: 30_000,
            max_deliveries: 10,
            dead_letter_topic: format!("{name}.dlq"),
            retry: Retry {
                initial_ms: 1_000,
                max_ms: 300_000,
                multiplier: 2.0,
            },
            ordering: Ordering::None,
            push: None,
        }
    }
}
