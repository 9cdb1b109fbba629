//! Herald's webhook dispatcher. A push subscription is a queue subscription whose consumer is
//! Herald itself: its events are leased like any other, POSTed to the subscription's URL, and
//! acknowledged on a 2xx, so retries, dead letters, redrive and key ordering are the queue's.
//!
//! The map:
//! - [`dispatcher`]: [`Dispatcher`], one task per push subscription (in-flight limit, acks in
//!   batches, nacks with `Retry-After`, the 410 switch-off, the record of attempts).
//! - [`breaker`]: the circuit breaker of an endpoint (pure).
//! - [`message`]: the request's headers and body in CloudEvents binary or structured mode (pure).
//! - [`signature`]: Standard Webhooks secrets and signatures (pure).
//! - [`destination`]: the SSRF guard, on the URL and on every resolved address.

pub mod breaker;
pub mod destination;
pub mod dispatcher;
pub mod message;
pub mod signature;

pub use breaker::PushState;
pub use dispatcher::{Attempt, AttemptOutcome, Dispatcher, PushConfig, PushStatus};
