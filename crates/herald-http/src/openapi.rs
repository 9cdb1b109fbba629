//! The OpenAPI 3.1 document, generated from the handlers' annotations and the DTOs.

use std::time::Duration;

use herald_core::broker::{
    ACK_TIMEOUT_MAX_MS, PARTITIONS_MAX, PUSH_IN_FLIGHT_MAX, PUSH_URL_BYTES_MAX,
    SUBSCRIPTION_TOPICS_MAX,
};
use herald_core::filter::{FILTER_DEPTH_MAX, FILTER_NODES_MAX};
use herald_core::names::{self, NAME_CHARS_MAX};
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::{api, dto, metrics, push, requests};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "A durable event broker for microservices. Errors are RFC 9457 application/problem+json."
    ),
    paths(
        api::healthz,
        api::readyz,
        metrics::metrics,
        api::services,
        api::put_topic,
        api::list_topics,
        api::get_topic,
        api::delete_topic,
        api::publish,
        api::read_events,
        api::tail,
        api::put_subscription,
        api::list_subscriptions,
        api::get_subscription,
        api::delete_subscription,
        push::patch_subscription,
        push::attempts,
        api::pull,
        api::ack,
        api::nack,
        api::extend,
        api::reject,
        api::seek,
        api::redrive,
        requests::post_request,
        requests::post_reply,
        requests::get_request,
    ),
    components(schemas(
        dto::Health,
        dto::ProblemDto,
        dto::TopicRequest,
        dto::RetentionDto,
        dto::TopicDto,
        dto::TopicList,
        dto::PartitionDto,
        dto::RetentionView,
        dto::PublishResponse,
        dto::PublishedDto,
        dto::ReadResponse,
        dto::StoredEventDto,
        dto::TailMessage,
        dto::SubscriptionRequest,
        dto::RetryDto,
        dto::SubscriptionDto,
        dto::SubscriptionList,
        dto::SubscriptionStats,
        dto::ConsumerDto,
        dto::PushStats,
        dto::PushRequest,
        dto::PushPatch,
        dto::PushView,
        dto::SubscriptionPatch,
        dto::AttemptDto,
        dto::AttemptList,
        dto::RetryView,
        dto::PullRequest,
        dto::PullResponse,
        dto::RequestQuery,
        dto::RequestReplied,
        dto::RequestAccepted,
        dto::RequestDto,
        dto::ReplyDto,
        dto::DeliveryDto,
        dto::AckRequest,
        dto::NackRequest,
        dto::ExtendRequest,
        dto::RejectRequest,
        dto::ReceiptsResponse,
        dto::ReceiptResult,
        dto::SeekRequest,
        dto::RedriveRequest,
        dto::ServiceList,
        dto::ServiceDto,
    ))
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    let mut document = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(document) => document,
        Err(error) => return format!("{{\"error\":\"{error}\"}}"),
    };
    describe_errors(&mut document);
    let missing = write_bounds(&mut document);
    debug_assert!(
        missing.is_empty(),
        "bounds for parts the document lacks: {missing:?}"
    );
    document.to_string()
}

/// Every error answer is `application/problem+json`, and any operation can answer an error
/// the annotations do not list (415 for a missing Content-Type, 404 for a missing subscription,
/// 503 before recovery has finished, ...): error responses get that media type, and every
/// operation a `default` response of it.
fn describe_errors(document: &mut serde_json::Value) {
    let problem = serde_json::json!({
        "description": "An RFC 9457 problem: what is wrong and how to fix it",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDto"}}}
    });
    let Some(paths) = document
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    for operations in paths.values_mut() {
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(serde_json::Value::as_object_mut)
            else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                let is_error = status.starts_with('4') || status.starts_with('5');
                if let Some(content) = response
                    .get_mut("content")
                    .and_then(serde_json::Value::as_object_mut)
                    && is_error
                    && let Some(json) = content.remove("application/json")
                {
                    content.insert("application/problem+json".into(), json);
                }
            }
            responses
                .entry("default")
                .or_insert_with(|| problem.clone());
        }
    }
}

// ---- bounds ----
//
// utoipa's attributes take literals, so the bounds the handlers and the core enforce are written
// into the document here, from the same constants. Each bound is exact: a value the document
// allows is accepted, one it forbids is refused with a 4xx (`scripts/api-fuzz.sh` checks both).

/// A name of a topic, subscription, service or consumer: 1–249 of `[A-Za-z0-9._-]`, not `.` or
/// `..`.
const NAME: &str = r"^(?!\.\.?$)[A-Za-z0-9._-]+$";
/// A name a user may create: a name not starting with `_` (those are Herald's own).
const USER_NAME: &str = r"^(?!\.\.?$)(?!_)[A-Za-z0-9._-]+$";
/// A topic pattern: a name whose segments may also be `*` (one segment) or `#` (any number).
const PATTERN: &str = r"^(?!\.\.?$)(?:[A-Za-z0-9_-]*|\*|#)(?:\.(?:[A-Za-z0-9_-]*|\*|#))*$";
/// One segment of a pattern (inside a longer regex).
const SEGMENT: &str = r"(?:[A-Za-z0-9_-]*|\*|#)";
/// A push secret: `whsec_` and the canonical padded base64 of a 24–64 byte key.
const SECRET: &str = r"^whsec_(?:(?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?|(?:[A-Za-z0-9+/]{4}){21}(?:[A-Za-z0-9+/][AQgw]==)?)$";

fn name(pattern: &str) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": NAME_CHARS_MAX, "pattern": pattern})
}

/// A Herald duration between `min` and `max`.
fn duration(min: Duration, max: Duration) -> Value {
    json!({"type": "string", "pattern": duration_pattern(millis(min), millis(max))})
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Any duration Herald can hold.
fn any_duration() -> Value {
    json!({"type": "string", "pattern": duration_pattern(0, u64::MAX)})
}

/// An integer between `min` and `max`.
fn integer(min: u64, max: u64) -> Value {
    json!({"type": "integer", "minimum": min, "maximum": max})
}

/// An RFC 3339 time.
fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn one_of(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

/// The filter grammar (`exact`, `prefix`, `suffix`, `all`, `any`, `not`) as the recursive
/// schema `Filter`. Its two caps, nesting depth (`FILTER_DEPTH_MAX`) and filters in all
/// (`FILTER_NODES_MAX`), are stated in its description: JSON Schema cannot count nodes, and one
/// schema per depth makes the document too large for a fuzzer to generate from.
fn filter_schema(document: &mut Value) {
    let attribute = json!({
        "type": "object", "minProperties": 1, "maxProperties": 1,
        "propertyNames": {"pattern": "^[a-z0-9]{1,64}$"},
        "additionalProperties": {"type": "string"}
    });
    let inner = json!({"$ref": "#/components/schemas/Filter"});
    let mut dialects = vec![];
    for dialect in ["exact", "prefix", "suffix"] {
        dialects.push(json!({
            "type": "object", "required": [dialect], "additionalProperties": false,
            "properties": {dialect: attribute}
        }));
    }
    for dialect in ["all", "any"] {
        dialects.push(json!({
            "type": "object", "required": [dialect], "additionalProperties": false,
            "properties": {dialect: {"type": "array", "minItems": 1, "items": inner}}
        }));
    }
    dialects.push(json!({
        "type": "object", "required": ["not"], "additionalProperties": false,
        "properties": {"not": inner}
    }));
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert(
            "Filter".into(),
            json!({
                "description": format!(
                    "A CloudEvents filter on top-level attributes, nested at most {FILTER_DEPTH_MAX} deep, at most {FILTER_NODES_MAX} filters in all"
                ),
                "oneOf": dialects
            }),
        );
    }
}

/// A regex matching exactly the decimal integers `min..=max` (leading zeros allowed).
pub(crate) fn integer_pattern(min: u64, max: u64) -> String {
    // Split by number of digits; within one length, cover the range with blocks
    // `prefix [a-b] \d{k}`, each as large as the alignment allows.
    let mut alternatives = Vec::new();
    let mut low = u128::from(min);
    let high = u128::from(max);
    while low <= high {
        let digits = low.to_string().len() as u32;
        let end = high.min(10u128.pow(digits) - 1);
        if digits == 1 && low == end {
            alternatives.push(low.to_string());
        } else if digits == 1 {
            alternatives.push(format!("[{low}-{end}]"));
        } else {
            // (head, first last digit, last last digit, trailing \d count)
            let mut blocks: Vec<(String, u8, u8, u32)> = Vec::new();
            let mut at = low;
            while at <= end {
                let mut k = 0;
                while k + 1 < digits
                    && at % 10u128.pow(k + 1) == 0
                    && at + 10u128.pow(k + 1) - 1 <= end
                {
                    k += 1;
                }
                let text = at.to_string();
                let prefix = &text[..text.len() - k as usize];
                let (head, last) = prefix.split_at(prefix.len() - 1);
                let last = last.as_bytes()[0] - b'0';
                match blocks.last_mut() {
                    Some(block) if block.0 == head && block.3 == k && block.2 + 1 == last => {
                        block.2 = last;
                    }
                    _ => blocks.push((head.to_owned(), last, last, k)),
                }
                at += 10u128.pow(k);
            }
            for (head, first, last, k) in blocks {
                let digit = if first == last {
                    first.to_string()
                } else {
                    format!("[{first}-{last}]")
                };
                let tail = match k {
                    0 => String::new(),
                    1 => "[0-9]".into(),
                    k => format!("[0-9]{{{k}}}"),
                };
                alternatives.push(format!("{head}{digit}{tail}"));
            }
        }
        low = end + 1;
    }
    format!("0*(?:{})", alternatives.join("|"))
}

/// A regex matching exactly the Herald durations (`500ms`, `30s`, `5m`, `2h`, `7d`) from `min`
/// to `max` milliseconds.
pub(crate) fn duration_pattern(min: u64, max: u64) -> String {
    let mut units = Vec::new();
    for (unit, size) in [
        ("ms", 1u64),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ] {
        let low = min.div_ceil(size);
        let high = max / size;
        if low <= high {
            units.push(format!("{}{unit}", integer_pattern(low, high)));
        }
    }
    format!("^(?:{})$", units.join("|"))
}

/// Writes the bounds into the document; answers the places it did not find.
fn write_bounds(document: &mut Value) -> Vec<String> {
    let day = Duration::from_secs(86_400);
    let wait = duration(Duration::ZERO, api::WAIT_MAX);
    let lease = Duration::from_millis(ACK_TIMEOUT_MAX_MS);
    let any_name = name(NAME);
    let user_name = name(USER_NAME);
    let pattern =
        json!({"type": "string", "minLength": 1, "maxLength": NAME_CHARS_MAX, "pattern": PATTERN});
    let tail_item =
        format!(r"(?=[^,]{{1,{NAME_CHARS_MAX}}}(?:,|$))(?!\.\.?(?:,|$)){SEGMENT}(?:\.{SEGMENT})*");
    let tail = json!({"type": "string", "pattern": format!(
        "^{tail_item}(?:,{tail_item}){{0,{}}}$", api::TAIL_PATTERNS_MAX - 1
    )});
    let receipts =
        json!({"type": "array", "maxItems": api::RECEIPTS_MAX, "items": {"type": "string"}});
    // Host names only (an address literal may be refused as private): the last label starts
    // with a letter (one ending in a number parses as IPv4) and no label is punycode (`xn--`).
    let url = json!({
        "type": "string", "maxLength": PUSH_URL_BYTES_MAX,
        "pattern": format!(
            r"^https?://(?:(?![Xx][Nn]--)[A-Za-z0-9-]+\.)*(?![Xx][Nn]--)[A-Za-z][A-Za-z0-9-]*(?::{})?(?:/[A-Za-z0-9._~/-]*)?$",
            integer_pattern(0, 65_535)
        )
    });
    let secret = json!({"type": "string", "pattern": SECRET});
    let in_flight = integer(1, u64::from(PUSH_IN_FLIGHT_MAX));
    let content_mode = one_of(&["structured", "binary"]);

    // (JSON pointer, what to merge into the schema there)
    let schemas = "/components/schemas";
    let mut bounds: Vec<(String, Value)> = vec![
        (
            format!("{schemas}/TopicRequest/properties/partitions"),
            integer(1, u64::from(PARTITIONS_MAX)),
        ),
        (
            format!("{schemas}/TopicRequest/properties/dedup_window"),
            any_duration(),
        ),
        (
            format!("{schemas}/RetentionDto/properties/max_age"),
            any_duration(),
        ),
        (
            format!("{schemas}/RetentionDto/properties/max_bytes"),
            json!({"minimum": 1, "maximum": u64::MAX}),
        ),
        (
            format!("{schemas}/SubscriptionRequest/properties/topics"),
            json!({"type": "array", "minItems": 1, "maxItems": SUBSCRIPTION_TOPICS_MAX, "items": pattern}),
        ),
        (
            format!("{schemas}/SubscriptionRequest/properties/mode"),
            one_of(&["queue", "stream"]),
        ),
        (
            format!("{schemas}/SubscriptionRequest/properties/start"),
            json!({"anyOf": [one_of(&["latest", "earliest"]), time()]}),
        ),
        (
            format!("{schemas}/SubscriptionRequest/properties/filter"),
            json!({"$ref": "#/components/schemas/Filter"}),
        ),
        (
            format!("{schemas}/SubscriptionRequest/properties/ack_timeout"),
            duration(Duration::from_millis(1), lease),
        ),
        (
            format!("{schemas}/SubscriptionRequest/properties/max_deliveries"),
            integer(1, u64::from(u32::MAX)),
        ),
        (
            format!("{schemas}/SubscriptionRequest/properties/dead_letter_topic"),
            user_name.clone(),
        ),
        (
            format!("{schemas}/SubscriptionRequest/properties/ordering"),
            one_of(&["none", "key"]),
        ),
        (
            format!("{schemas}/RetryDto/properties/initial"),
            any_duration(),
        ),
        (format!("{schemas}/RetryDto/properties/max"), any_duration()),
        (
            format!("{schemas}/RetryDto/properties/multiplier"),
            json!({"minimum": 1.0, "maximum": 100.0}),
        ),
        (format!("{schemas}/PushRequest/properties/url"), url.clone()),
        (
            format!("{schemas}/PushRequest/properties/secret"),
            secret.clone(),
        ),
        (
            format!("{schemas}/PushRequest/properties/timeout"),
            duration(Duration::from_millis(1), lease),
        ),
        (
            format!("{schemas}/PushRequest/properties/max_in_flight"),
            in_flight.clone(),
        ),
        (
            format!("{schemas}/PushRequest/properties/content_mode"),
            content_mode.clone(),
        ),
        (format!("{schemas}/PushPatch/properties/url"), url),
        (format!("{schemas}/PushPatch/properties/secret"), secret),
        (
            format!("{schemas}/PushPatch/properties/secret_grace"),
            duration(Duration::ZERO, 7 * day),
        ),
        (
            format!("{schemas}/PushPatch/properties/timeout"),
            duration(Duration::from_millis(1), lease),
        ),
        (
            format!("{schemas}/PushPatch/properties/max_in_flight"),
            in_flight,
        ),
        (
            format!("{schemas}/PushPatch/properties/content_mode"),
            content_mode,
        ),
        (
            format!("{schemas}/PullRequest/properties/max"),
            integer(1, u64::from(api::LIMIT_MAX)),
        ),
        (
            format!("{schemas}/PullRequest/properties/wait"),
            wait.clone(),
        ),
        (
            format!("{schemas}/PullRequest/properties/consumer"),
            any_name.clone(),
        ),
        (
            format!("{schemas}/AckRequest/properties/receipts"),
            receipts.clone(),
        ),
        (
            format!("{schemas}/NackRequest/properties/receipts"),
            receipts.clone(),
        ),
        (
            format!("{schemas}/NackRequest/properties/delay"),
            duration(Duration::ZERO, herald_core::queue::LEASE_MAX),
        ),
        (
            format!("{schemas}/ExtendRequest/properties/receipts"),
            receipts.clone(),
        ),
        (
            format!("{schemas}/ExtendRequest/properties/by"),
            any_duration(),
        ),
        (
            format!("{schemas}/RejectRequest/properties/receipts"),
            receipts,
        ),
        (
            format!("{schemas}/RejectRequest/properties/reason"),
            json!({"maxLength": api::REASON_CHARS_MAX}),
        ),
        (
            format!("{schemas}/RedriveRequest/properties/max"),
            integer(1, u64::from(api::LIMIT_MAX)),
        ),
        (
            format!("{schemas}/SeekRequest/properties/to"),
            json!({"anyOf": [
                one_of(&["earliest", "latest"]),
                time(),
                {"type": "object", "required": ["partition", "offset"], "additionalProperties": false,
                 "properties": {"topic": any_name, "partition": integer(0, u64::from(u32::MAX)), "offset": integer(0, u64::MAX)}}
            ]}),
        ),
    ];
    let parameter = |path: &str, method: &str, name: &str| {
        let path = path.replace('~', "~0").replace('/', "~1");
        format!("/paths/{path}/{method}/parameters/{name}")
    };
    let events = "/v1/topics/{topic}/events";
    for (path, method, param, schema) in [
        (events, "get", "partition", integer(0, u64::from(u32::MAX))),
        (events, "get", "offset", integer(0, u64::MAX)),
        (events, "get", "from_time", time()),
        (
            events,
            "get",
            "limit",
            integer(1, u64::from(api::LIMIT_MAX)),
        ),
        (events, "get", "wait", wait.clone()),
        ("/v1/tail", "get", "topics", tail),
        ("/v1/topics/{topic}/requests", "post", "timeout", wait),
        (
            "/v1/topics/{topic}/requests",
            "post",
            "deadline",
            duration(
                Duration::from_millis(1),
                herald_core::requests::DEADLINE_MAX,
            ),
        ),
        (
            "/v1/topics/{topic}/requests",
            "post",
            "herald-reply-group",
            json!({"type": "string", "minLength": 1, "maxLength": names::REPLY_GROUP_CHARS_MAX, "pattern": NAME}),
        ),
        (
            "/v1/subscriptions/{name}/attempts",
            "get",
            "limit",
            integer(1, herald_push::dispatcher::ATTEMPTS_KEPT_MAX as u64),
        ),
    ] {
        bounds.push((parameter(path, method, param), schema));
    }
    filter_schema(document);
    // Path names: what may be created is a user's name; what is looked up may be any name.
    let mut missing = Vec::new();
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, operations) in paths.iter_mut() {
            let Some(operations) = operations.as_object_mut() else {
                continue;
            };
            for (method, operation) in operations.iter_mut() {
                let creates = matches!(
                    (path.as_str(), method.as_str()),
                    ("/v1/topics/{topic}", "put" | "delete")
                        | ("/v1/topics/{topic}/events", "post")
                        | ("/v1/topics/{topic}/requests", "post")
                );
                let creates_subscription =
                    (path.as_str(), method.as_str()) == ("/v1/subscriptions/{name}", "put");
                let Some(parameters) = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for parameter in parameters {
                    let is_name = parameter["in"] == "path"
                        && (parameter["name"] == "topic" || parameter["name"] == "name");
                    if is_name && creates_subscription {
                        parameter["schema"] = json!({"type": "string", "minLength": 1,
                            "maxLength": names::SUBSCRIPTION_NAME_CHARS_MAX, "pattern": USER_NAME});
                    } else if is_name {
                        parameter["schema"] = name(if creates { USER_NAME } else { NAME });
                    }
                }
            }
        }
    }
    // Bodies that may be left out (an empty body is `{}`).
    for (path, method) in [
        ("/v1/topics/{topic}", "put"),
        ("/v1/subscriptions/{name}/pull", "post"),
        ("/v1/subscriptions/{name}/redrive", "post"),
    ] {
        let path = path.replace('/', "~1");
        match document.pointer_mut(&format!("/paths/{path}/{method}/requestBody/required")) {
            Some(required) => *required = Value::Bool(false),
            None => missing.push(format!("{path} {method}: requestBody")),
        }
    }
    // Any JSON: the event's data (plain JSON mode) or a CloudEvent, any JSON value as context.
    let any = [
        "/paths/~1v1~1topics~1{topic}~1events/post/requestBody/content/application~1json/schema",
        "/paths/~1v1~1topics~1{topic}~1requests/post/requestBody/content/application~1json/schema",
        "/paths/~1v1~1requests~1{request_id}~1reply/post/requestBody/content/application~1json/schema",
        "/components/schemas/RequestDto/properties/context",
        "/components/schemas/RequestReplied/properties/context",
    ];
    for pointer in any {
        match document.pointer_mut(pointer) {
            Some(schema) => {
                let description = schema.get("description").cloned();
                *schema =
                    description.map_or_else(|| json!({}), |text| json!({"description": text}));
            }
            None => missing.push(pointer.to_owned()),
        }
    }
    // herald-context is JSON text (up to CONTEXT_BYTES_MAX bytes).
    let context = document
        .pointer_mut("/paths/~1v1~1topics~1{topic}~1requests/post/parameters")
        .and_then(Value::as_array_mut)
        .and_then(|parameters| {
            parameters
                .iter_mut()
                .find(|parameter| parameter["name"] == "herald-context")
        })
        .and_then(Value::as_object_mut);
    match context {
        Some(parameter) => {
            parameter.remove("schema");
            parameter.insert(
                "content".into(),
                json!({"application/json": {"schema": {}}}),
            );
        }
        None => missing.push("herald-context".into()),
    }
    for (pointer, bound) in bounds {
        match locate(document, &pointer) {
            Some(schema) => merge(schema, bound),
            None => missing.push(pointer),
        }
    }
    missing
}

/// The schema at `pointer`, where `parameters/{name}` picks a parameter by name.
fn locate<'a>(document: &'a mut Value, pointer: &str) -> Option<&'a mut Value> {
    if let Some((operation, name)) = pointer.split_once("/parameters/") {
        let parameters = document.pointer_mut(&format!("{operation}/parameters"))?;
        let parameter = parameters
            .as_array_mut()?
            .iter_mut()
            .find(|parameter| parameter["name"] == name)?;
        return parameter.get_mut("schema");
    }
    document.pointer_mut(pointer)
}

/// Adds `bound` to `schema`, keeping its `null` (an optional member may be `null`).
fn merge(schema: &mut Value, bound: Value) {
    let nullable = schema["type"]
        .as_array()
        .is_some_and(|types| types.iter().any(|kind| kind == "null"))
        || schema["oneOf"]
            .as_array()
            .is_some_and(|choices| choices.iter().any(|choice| choice["type"] == "null"));
    let (Some(target), Value::Object(bound)) = (schema.as_object_mut(), bound) else {
        return;
    };
    let replaces = ["type", "anyOf", "oneOf", "$ref"]
        .iter()
        .any(|key| bound.contains_key(*key));
    if replaces {
        let description = target.remove("description");
        target.clear();
        if let Some(description) = description {
            target.insert("description".into(), description);
        }
        if nullable {
            target.insert(
                "anyOf".into(),
                json!([{"type": "null"}, Value::Object(bound)]),
            );
            return;
        }
    }
    target.extend(bound);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(pattern: &str) -> regex::Regex {
        regex::Regex::new(pattern).expect("the pattern compiles")
    }

    #[test]
    fn integer_patterns_match_exactly_their_range() {
        for (min, max) in [
            (0, 9),
            (1, 1000),
            (0, 65_535),
            (37, 4_321),
            (100, 100),
            (0, u64::MAX),
        ] {
            let pattern = matcher(&format!("^{}$", integer_pattern(min, max)));
            let mut probes = vec![0, 1, 9, 10, 99, 100, 101, 999, 1000, 1001, 65_535, 65_536];
            probes.extend([
                min.saturating_sub(1),
                min,
                max,
                max.saturating_add(1),
                u64::MAX,
            ]);
            probes.extend((0..2_000u64).map(|step| min.saturating_add(step.wrapping_mul(7_919))));
            for value in probes {
                let inside = (min..=max).contains(&value);
                assert_eq!(
                    pattern.is_match(&value.to_string()),
                    inside,
                    "{value} in {min}..={max}"
                );
                assert_eq!(pattern.is_match(&format!("00{value}")), inside, "00{value}");
            }
            assert!(!pattern.is_match(""));
            assert!(!pattern.is_match("-1"));
            assert!(!pattern.is_match("1.5"));
        }
        // Past u64::MAX, for the widest range.
        assert!(
            !matcher(&format!("^{}$", integer_pattern(0, u64::MAX)))
                .is_match("18446744073709551616")
        );
    }

    #[test]
    fn duration_patterns_agree_with_the_parser_and_the_bounds() {
        let wait = matcher(&duration_pattern(0, millis(api::WAIT_MAX)));
        let any = matcher(&duration_pattern(0, u64::MAX));
        for text in [
            "0s",
            "0ms",
            "60s",
            "1m",
            "60000ms",
            "59999ms",
            "007s",
            "61s",
            "60001ms",
            "2m",
            "1h",
            "0d",
            "1d",
            "5124095576030h",
            "5124095576031h",
            "213503982334d",
            "213503982335d",
            "18446744073709551615ms",
            "18446744073709551616ms",
            " 5s",
            "5s ",
            "5",
            "s",
            "-1s",
            "1.5s",
            "5S",
            "",
        ] {
            let parsed = herald_core::duration::parse_duration(text).ok();
            assert_eq!(
                any.is_match(text),
                parsed.is_some(),
                "{text:?}: the parser and the document disagree"
            );
            let within = parsed.is_some_and(|duration| duration <= api::WAIT_MAX);
            assert_eq!(wait.is_match(text), within, "{text:?} as a wait");
        }
    }

    #[test]
    fn every_bound_finds_its_place_in_the_document() {
        let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        describe_errors(&mut document);
        assert_eq!(write_bounds(&mut document), Vec::<String>::new());
        let pull = &document["components"]["schemas"]["PullRequest"]["properties"]["max"];
        assert_eq!(pull["anyOf"][1]["minimum"], 1);
        assert_eq!(pull["anyOf"][1]["maximum"], 1000);
    }
}
