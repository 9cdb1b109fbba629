//! Subscription settings as the core understands them. Stored in the metadata database as
//! JSON (serde here is for persistence only; the HTTP API has its own DTOs).

use serde::{Deserialize, Serialize};

/// How a subscription is consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Competing consumers with per-event acks.
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
    /// Set for a webhook subscription: Herald itself consumes it and POSTs each event.
    pub push: Option<PushSpec>,
}

/// How a webhook carries the event (CloudEvents HTTP binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// `ce-*` headers, the event's `data` as the body.
    Binary,
    /// The whole event as `application/cloudevents+json`.
    Structured,
}

/// A webhook subscription's delivery settings, and its two pieces of state that must survive a
/// restart: the previous secret during a rotation, and whether the endpoint disabled it.
/// (`Debug` leaves the secrets out, so they never reach a log.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSpec {
    pub url: String,
    /// `whsec_` + base64 of the signing key.
    pub secret: String,
    /// The secret before the last rotation, also signed with until `previous_secret_until_ms`.
    #[serde(default)]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub previous_secret_until_ms: u64,
    pub timeout_ms: u64,
    pub max_in_flight: u32,
    pub content_mode: ContentMode,
    /// Why deliveries stopped (the endpoint answered 410 Gone); `None` while enabled.
    #[serde(default)]
    pub disabled: Option<String>,
}

impl std::fmt::Debug for PushSpec {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PushSpec")
            .field("url", &self.url)
            .field("secret", &"(hidden)")
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "(hidden)"),
            )
            .field("previous_secret_until_ms", &self.previous_secret_until_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("content_mode", &self.content_mode)
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl PushSpec {
    /// The secrets to sign with at `now_ms`: the current one, then the previous one during its
    /// grace period.
    pub fn signing_secrets(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        let previous = self
            .previous_secret
            .as_deref()
            .filter(|_| now_ms < self.previous_secret_until_ms);
        std::iter::once(self.secret.as_str()).chain(previous)
    }
}

impl SubscriptionSpec {
    /// True when `other` asks for the same subscription: every setting equal, ignoring the push
    /// state that changes on its own (a rotation's previous secret, a disabled endpoint).
    pub fn same_settings(&self, other: &SubscriptionSpec) -> bool {
        let settings = |spec: &SubscriptionSpec| {
            let mut spec = spec.clone();
            if let Some(push) = &mut spec.push {
                push.previous_secret = None;
                push.previous_secret_until_ms = 0;
                push.disabled = None;
            }
            spec
        };
        settings(self) == settings(other)
    }
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
