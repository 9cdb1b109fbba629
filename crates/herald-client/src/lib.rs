//! An async Rust client for Herald's HTTP API (`shared/design/HTTP-API.md`), used by the `herald`
//! CLI, the benchmarks and the end-to-end tests.
//!
//! - [`client`] — [`Client`], one async method per endpoint; every call returns
//!   `Result<_, ClientError>`.
//! - [`model`] — the request and answer bodies, the client's own serde types written from the
//!   contract. CloudEvents are plain [`serde_json::Value`]s.
//! - [`error`] — [`ClientError`] (unreachable server, problem answer, undecodable answer, other)
//!   and the decoding of RFC 9457 problem bodies.
//! - [`sse`] — a small incremental `text/event-stream` parser for the live tail and subscription
//!   streams.
//! - [`duration`] — Herald's duration strings (`500ms`, `30s`, `5m`, `7d`), shared with the CLI
//!   and the configuration.
//!
//! ```no_run
//! # async fn example() -> Result<(), herald_client::ClientError> {
//! use herald_client::{Client, PullRequest, TopicSettings};
//! let client = Client::new("http://127.0.0.1:7070").with_service("billing");
//! client.create_topic("orders", &TopicSettings::default()).await?;
//! client.publish_json("orders", &serde_json::json!({"total": 42})).await?;
//! let pulled = client.pull("orders-worker", &PullRequest::default()).await?;
//! # let _ = pulled;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod duration;
pub mod error;
pub mod model;
pub mod sse;

pub use client::{CONNECT_TIMEOUT, Client, SERVICE_HEADER};
pub use error::ClientError;
pub use model::{
    AckResponse, Attempt, AttemptList, Consumer, Delivery, PartitionInfo, Problem, PublishResult,
    PublishedEvent, PullRequest, PullResponse, ReadQuery, ReadResponse, ReceiptResult,
    RedriveResponse, RequestAnswer, RequestInfo, RequestOptions, Retention, RetrySettings, Service,
    Services, StoredEvent, Subscription, SubscriptionList, SubscriptionSettings, SubscriptionStats,
    TailEvent, Topic, TopicList, TopicSettings,
};
pub use sse::SseMessage;
