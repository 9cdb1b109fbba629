//! The wire shapes of the HTTP API. The core's types are not serialized; handlers convert at
//! this boundary. Responses that embed stored events are written by hand (see `api::write_*`)
//! so the stored JSON goes out without being parsed again; their shapes are still described here
//! for the OpenAPI document.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Tells a missing member (`None`) from an explicit `null` (`Some(None)`).
pub fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A JSON number that is a whole number, as JSON Schema's `integer` is: `5`, and also `5.0`.
#[derive(Debug, Clone, Copy)]
struct WholeNumber(u64);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Whole;
        impl serde::de::Visitor<'_> for Whole {
            type Value = WholeNumber;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a whole number, not negative")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(value))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<WholeNumber, E> {
                u64::try_from(value)
                    .map(WholeNumber)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(value), &self))
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<WholeNumber, E> {
                // 2^64 is the first float past u64::MAX.
                if value.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&value) {
                    Ok(WholeNumber(value as u64))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(value), &self))
                }
            }
        }
        deserializer.deserialize_any(Whole)
    }
}

fn in_range<T: TryFrom<u64>, E: serde::de::Error>(value: u64) -> Result<T, E> {
    T::try_from(value).map_err(|_| {
        E::invalid_value(
            serde::de::Unexpected::Unsigned(value),
            &"a smaller whole number",
        )
    })
}

/// An optional whole number (see [`WholeNumber`]).
pub fn whole<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::<WholeNumber>::deserialize(deserializer)?
        .map(|WholeNumber(value)| in_range(value))
        .transpose()
}

/// A whole number (see [`WholeNumber`]).
pub fn required_whole<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    deserializer: D,
) -> Result<T, D::Error> {
    let WholeNumber(value) = WholeNumber::deserialize(deserializer)?;
    in_range(value)
}

/// [`double_option`] of a whole number.
fn double_option_whole<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<u64>>, D::Error> {
    whole(deserializer).map(Some)
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionDto {
    /// Delete whole segments whose newest event is older than this (`null`: keep forever).
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "7d")]
    pub max_age: Option<Option<String>>,
    /// Delete the oldest segments while a partition holds more bytes than this (`null`: no limit).
    #[serde(
        default,
        deserialize_with = "double_option_whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub max_bytes: Option<Option<u64>>,
}

/// Body of `PUT /v1/topics/{topic}`; every member is optional.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicRequest {
    #[schema(minimum = 1, maximum = 1024, example = 1)]
    #[serde(default, deserialize_with = "whole")]
    pub partitions: Option<u32>,
    pub retention: Option<RetentionDto>,
    #[schema(example = "2m")]
    pub dedup_window: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionDto {
    pub partition: u32,
    pub start_offset: u64,
    pub end_offset: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RetentionView {
    #[schema(value_type = Option<String>)]
    pub max_age: Option<String>,
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopicDto {
    pub name: String,
    pub partitions: Vec<PartitionDto>,
    pub retention: RetentionView,
    pub dedup_window: String,
    /// RFC 3339.
    pub created: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopicList {
    pub topics: Vec<TopicDto>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublishedDto {
    pub id: String,
    pub partition: u32,
    pub offset: u64,
    pub duplicate: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublishResponse {
    pub events: Vec<PublishedDto>,
}

/// Query of `GET /v1/topics/{topic}/events`.
#[derive(Debug, Clone, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Default 0.
    pub partition: Option<u32>,
    /// First offset to read; default: the first retained one. Not with `from_time`.
    pub offset: Option<u64>,
    /// RFC 3339: read from the first event stored at or after this time.
    pub from_time: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
    /// Long-poll up to this long (0s–60s) for an event past `offset`.
    pub wait: Option<String>,
}

/// One stored event, as `GET /v1/topics/{topic}/events` returns it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoredEventDto {
    pub partition: u32,
    pub offset: u64,
    /// When Herald stored it (RFC 3339).
    pub timestamp: String,
    /// The CloudEvent.
    #[schema(value_type = Object)]
    pub event: Value,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReadResponse {
    pub events: Vec<StoredEventDto>,
    pub next_offset: u64,
}

/// One message of the live tail (`data` of each SSE message).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TailMessage {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    #[schema(value_type = Object)]
    pub event: Value,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryDto {
    #[schema(example = "1s")]
    pub initial: Option<String>,
    #[schema(example = "5m")]
    pub max: Option<String>,
    #[schema(example = 2.0)]
    pub multiplier: Option<f64>,
}

/// Body of `PUT /v1/subscriptions/{name}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRequest {
    /// Topic names or patterns (`*` one segment, `#` zero or more).
    pub topics: Vec<String>,
    /// `queue` (default) or `stream`.
    #[schema(example = "stream")]
    pub mode: Option<String>,
    /// `latest` (default), `earliest`, or an RFC 3339 time.
    pub start: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    pub ack_timeout: Option<String>,
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "whole")]
    pub max_deliveries: Option<u32>,
    pub dead_letter_topic: Option<String>,
    pub retry: Option<RetryDto>,
    /// `none` (default) or `key`.
    pub ordering: Option<String>,
    /// Makes this a webhook subscription (queue mode only).
    pub push: Option<PushRequest>,
}

/// `push` of `PUT /v1/subscriptions/{name}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// `http://` or `https://` URL events are POSTed to.
    #[schema(example = "https://example.com/webhooks/orders", max_length = 2048)]
    pub url: String,
    /// `whsec_` + base64 of a 24–64 byte key; generated when absent and shown once.
    pub secret: Option<String>,
    /// Time for one attempt (default 10s; at most `ack_timeout` minus 1s or a tenth of it,
    /// whichever is longer).
    #[schema(example = "10s")]
    pub timeout: Option<String>,
    /// Most requests at once (1–1000, default 16).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "whole")]
    pub max_in_flight: Option<u32>,
    /// `structured` (default: the whole event is signed) or `binary`.
    #[schema(example = "structured")]
    pub content_mode: Option<String>,
}

/// Body of `PATCH /v1/subscriptions/{name}`: changes a push subscription's delivery settings.
/// Every PATCH also enables a subscription that a 410 Gone disabled.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    pub push: PushPatch,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushPatch {
    pub url: Option<String>,
    /// A new secret; the old one keeps signing too (a second signature) for `secret_grace`.
    pub secret: Option<String>,
    /// `true`: Herald generates the new secret (shown once in the answer).
    pub rotate_secret: Option<bool>,
    /// How long the previous secret still signs after a rotation (default 24h, at most 7d).
    #[schema(example = "24h")]
    pub secret_grace: Option<String>,
    pub timeout: Option<String>,
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "whole")]
    pub max_in_flight: Option<u32>,
    pub content_mode: Option<String>,
}

/// A push subscription's delivery settings as shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PushView {
    pub url: String,
    /// Shown once: in the answer that created or rotated it; `null` afterwards.
    pub secret: Option<String>,
    pub timeout: String,
    pub max_in_flight: u32,
    pub content_mode: String,
    /// During a rotation: until when the previous secret still signs.
    pub previous_secret_until: Option<String>,
}

/// One webhook attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptDto {
    pub time: String,
    pub webhook_id: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// 1 for the event's first attempt.
    pub attempt: u32,
    /// The response's status (`null` when none came: refused, timed out, blocked).
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
    /// `delivered`, `failed`, `dead_lettered` or `disabled`.
    pub outcome: String,
}

/// Answer of `GET /v1/subscriptions/{name}/attempts`, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptList {
    pub attempts: Vec<AttemptDto>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RetryView {
    pub initial: String,
    pub max: String,
    pub multiplier: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConsumerDto {
    pub name: String,
    /// `topic/partition` pairs it owns.
    pub partitions: Vec<String>,
    pub last_seen: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PushStats {
    /// `healthy`, `retrying`, `open_circuit` or `disabled`.
    pub state: String,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// Requests to the endpoint under way now.
    pub in_flight: u32,
    /// Attempts by result, kept across restarts.
    pub attempts_delivered: u64,
    pub attempts_failed: u64,
    /// While the circuit is open: when the next probe goes out.
    pub next_probe: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubscriptionStats {
    pub backlog: u64,
    pub in_flight: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    /// Queue: how long the oldest event not yet done has been waiting (`null` when none is).
    pub oldest_pending_age: Option<String>,
    /// Stream: the group's members and their partitions.
    pub consumers: Vec<ConsumerDto>,
    pub push: Option<PushStats>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubscriptionDto {
    pub name: String,
    pub topics: Vec<String>,
    pub mode: String,
    pub start: String,
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    pub ack_timeout: String,
    pub max_deliveries: u32,
    pub dead_letter_topic: String,
    pub retry: RetryView,
    pub ordering: String,
    pub push: Option<PushView>,
    pub created: String,
    pub stats: SubscriptionStats,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionDto>,
}

/// Body of `POST /v1/subscriptions/{name}/pull`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// 1–1000, default 10.
    #[serde(default, deserialize_with = "whole")]
    pub max: Option<u32>,
    /// Long-poll up to this long (0s–60s) for a first delivery.
    pub wait: Option<String>,
    /// The caller's name within the group; a generated one is used if absent.
    pub consumer: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryDto {
    pub receipt: String,
    pub attempt: u32,
    pub deadline: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    #[schema(value_type = Object)]
    pub event: Value,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PullResponse {
    pub deliveries: Vec<DeliveryDto>,
}

/// Reads at most `RECEIPTS_MAX` receipts and refuses a longer list at the first receipt past
/// it, so an absurd list costs no memory.
fn bounded_receipts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<String>;
        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("an array of receipt strings")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let limit = crate::api::RECEIPTS_MAX;
            let mut receipts = Vec::new();
            while let Some(receipt) = seq.next_element::<String>()? {
                if receipts.len() == limit {
                    return Err(serde::de::Error::custom(format!(
                        "more than {limit} receipts in one call; the limit is {limit}"
                    )));
                }
                receipts.push(receipt);
            }
            Ok(receipts)
        }
    }
    deserializer.deserialize_seq(Bounded)
}

/// Body of `POST /v1/subscriptions/{name}/ack`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Receipts of deliveries (at most 1000).
    #[serde(deserialize_with = "bounded_receipts")]
    pub receipts: Vec<String>,
}

/// Body of `POST /v1/subscriptions/{name}/nack`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    /// Receipts of deliveries (at most 1000).
    #[serde(deserialize_with = "bounded_receipts")]
    pub receipts: Vec<String>,
    /// Deliver again after this long (0s–12h) instead of the retry policy's backoff.
    pub delay: Option<String>,
}

/// Body of `POST /v1/subscriptions/{name}/extend`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Receipts of deliveries (at most 1000).
    #[serde(deserialize_with = "bounded_receipts")]
    pub receipts: Vec<String>,
    /// Added to each lease's deadline; a deadline is never more than 12h from now.
    #[schema(example = "30s")]
    pub by: String,
}

/// Body of `POST /v1/subscriptions/{name}/reject`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    /// Receipts of deliveries (at most 1000).
    #[serde(deserialize_with = "bounded_receipts")]
    pub receipts: Vec<String>,
    /// Why (at most 1024 characters); kept in the dead letter's `deadletterreason`.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceiptResult {
    pub receipt: String,
    /// `ok`, `stale` or `unknown`.
    pub status: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceiptsResponse {
    pub results: Vec<ReceiptResult>,
}

/// Body of `POST /v1/subscriptions/{name}/seek`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeekRequest {
    /// `"earliest"`, `"latest"`, an RFC 3339 time, or `{"partition": 0, "offset": 5}` (with
    /// `"topic"` when the subscription covers several topics).
    #[schema(value_type = Object)]
    pub to: Value,
}

/// Body of `POST /v1/subscriptions/{name}/redrive`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    #[serde(default, deserialize_with = "whole")]
    pub max: Option<u32>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RedriveResponse {
    /// Events moved back into the subscription.
    pub redriven: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServiceDto {
    pub name: String,
    pub publishes: Vec<String>,
    pub consumes: Vec<String>,
    pub last_seen: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServiceList {
    pub services: Vec<ServiceDto>,
}

/// An RFC 9457 problem.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProblemDto {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// Query of `POST /v1/topics/{topic}/requests`.
#[derive(Debug, Clone, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RequestQuery {
    /// How long the call waits for the reply before answering 202 (default `5s`, at most `60s`).
    pub timeout: Option<String>,
    /// How long the request stays open for a reply (default `1h`, at most `7d`); then it expires.
    pub deadline: Option<String>,
}

/// A request answered within the call's `timeout`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RequestReplied {
    pub request_id: String,
    /// The reply CloudEvent, with the extension `correlationid` = `request_id`.
    #[schema(value_type = Object)]
    pub reply: Box<serde_json::value::RawValue>,
    /// The `herald-context` sent with the request (`null` when none was).
    #[schema(value_type = Object)]
    pub context: Option<Box<serde_json::value::RawValue>>,
}

/// A request not answered within the call's `timeout`: it stays open until its deadline
/// (`status: "pending"`), or reached its deadline while the call waited (`"expired"`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RequestAccepted {
    pub request_id: String,
    pub status: String,
}

/// `GET /v1/requests/{request_id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RequestDto {
    pub request_id: String,
    /// `pending`, `replied` or `expired`.
    pub status: String,
    /// The topic the request event was published to.
    pub topic: String,
    /// The reply group: replies and the expiry also go to `_replies.{group}`.
    pub group: String,
    /// The reply CloudEvent once replied, else `null`.
    #[schema(value_type = Option<Object>)]
    pub reply: Option<Box<serde_json::value::RawValue>>,
    #[schema(value_type = Object)]
    pub context: Option<Box<serde_json::value::RawValue>>,
    /// RFC 3339.
    pub deadline: String,
}

/// `POST /v1/requests/{request_id}/reply`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplyDto {
    pub request_id: String,
    /// Always `replied`.
    pub status: String,
}
