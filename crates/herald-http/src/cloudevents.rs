//! CloudEvents in, in all four publish content modes of the contract:
//! structured (`application/cloudevents+json`), batch (`application/cloudevents-batch+json`),
//! binary (`ce-*` headers, the body is `data`), and plain `application/json` (the body is `data`
//! and Herald fills in the rest).
//!
//! Herald stores each event as one CloudEvents JSON object. In the structured and batch modes
//! that object is the client's own text, borrowed straight from the request body: it is checked
//! here (valid JSON, required attributes, attribute types, extension names) and then copied once,
//! into the log's batch frame. The other two modes build the object here.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use herald_core::EventToPublish;
use serde::Deserializer;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Longest extension attribute name Herald accepts (the spec recommends 20; Herald's own
/// `deadlettersubscription` is longer).
pub const EXTENSION_NAME_CHARS_MAX: usize = 64;

/// Why a request's events cannot be published. Turned into a 400, 413 or 415 problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    /// Malformed input; the text says what to fix.
    Invalid(String),
    /// An event or the batch is too large.
    TooLarge(String),
    /// The content type is not one Herald accepts.
    UnsupportedMediaType(String),
}

impl fmt::Display for EventError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::Invalid(text)
            | EventError::TooLarge(text)
            | EventError::UnsupportedMediaType(text) => formatter.write_str(text),
        }
    }
}

/// Limits on what one request may carry.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    pub event_bytes_max: u32,
    pub batch_events_max: u32,
}

/// A string that borrows from the input when it can (no escapes) and owns otherwise.
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(value.to_owned())))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// An attribute value that may be a string, a boolean, an integer, or null (absent).
enum Scalar<'a> {
    Text(Cow<'a, str>),
    Other,
    Null,
    Invalid(&'static str),
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string, boolean or integer")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(Cow::Owned(value.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                // CloudEvents integers are signed 32-bit.
                Ok(if value <= i32::MAX as u64 {
                    Scalar::Other
                } else {
                    Scalar::Invalid("an integer beyond 32 bits")
                })
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Invalid(
                    "a number with a fraction (CloudEvents integers only)",
                ))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Invalid("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Invalid("an object"))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// Any JSON value, checked rather than kept: unlike `IgnoredAny`, numbers are parsed, so one
/// beyond what a 64-bit float holds (`1e999999`) is an error here instead of an event that
/// consumers' JSON parsers cannot read back.
struct Checked;

impl<'de> de::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CheckedVisitor;
        impl<'de> Visitor<'de> for CheckedVisitor {
            type Value = Checked;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Checked, E> {
                if value.is_finite() {
                    Ok(Checked)
                } else {
                    Err(E::custom("a number out of range"))
                }
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
                while map.next_entry::<IgnoredAny, Checked>()?.is_some() {}
                Ok(Checked)
            }
        }
        deserializer.deserialize_any(CheckedVisitor)
    }
}

/// The attributes Herald needs from a structured event, borrowed from the input.
#[derive(Default)]
struct Fields<'a> {
    specversion: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    source: Option<Cow<'a, str>>,
    event_type: Option<Cow<'a, str>>,
    partition_key: Option<Cow<'a, str>>,
    has_data: bool,
    has_data_base64: bool,
    /// The first problem found; parsing goes on to the end of the object so that the JSON
    /// error, if any, wins.
    problem: Option<String>,
}

impl<'de> de::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a CloudEvent (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Fields::default();
                let note = |fields: &mut Fields<'de>, problem: String| {
                    fields.problem.get_or_insert(problem);
                };
                while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
                    match name.as_ref() {
                        "data" => {
                            map.next_value::<Checked>()?;
                            if fields.has_data {
                                note(&mut fields, "attribute \"data\" appears twice".into());
                            }
                            fields.has_data = true;
                        }
                        "data_base64" => {
                            let value = map.next_value::<Scalar<'de>>()?;
                            match value {
                                Scalar::Text(text) if BASE64.decode(text.as_bytes()).is_ok() => {}
                                Scalar::Null => {}
                                _ => note(
                                    &mut fields,
                                    "\"data_base64\" must be a base64 string".into(),
                                ),
                            }
                            fields.has_data_base64 = true;
                        }
                        "specversion" | "id" | "source" | "type" | "subject" | "time"
                        | "datacontenttype" | "dataschema" | "partitionkey" => {
                            let value = map.next_value::<Scalar<'de>>()?;
                            let text = match value {
                                Scalar::Text(text) => Some(text),
                                Scalar::Null => None,
                                Scalar::Other | Scalar::Invalid(_) => {
                                    note(
                                        &mut fields,
                                        format!("attribute {name:?} must be a string"),
                                    );
                                    None
                                }
                            };
                            let slot = match name.as_ref() {
                                "specversion" => &mut fields.specversion,
                                "id" => &mut fields.id,
                                "source" => &mut fields.source,
                                "type" => &mut fields.event_type,
                                "partitionkey" => &mut fields.partition_key,
                                "time" => {
                                    if let Some(time) = &text
                                        && crate::time::parse_rfc3339(time).is_none()
                                    {
                                        note(
                                            &mut fields,
                                            format!(
                                                "attribute \"time\" is not an RFC 3339 timestamp: {time:?}"
                                            ),
                                        );
                                    }
                                    continue;
                                }
                                _ => continue,
                            };
                            let repeated = slot.is_some();
                            *slot = text;
                            if repeated {
                                note(&mut fields, format!("attribute {name:?} appears twice"));
                            }
                        }
                        extension => {
                            if let Err(problem) = check_extension_name(extension) {
                                note(&mut fields, problem);
                            }
                            match map.next_value::<Scalar<'de>>()? {
                                Scalar::Invalid(what) => note(
                                    &mut fields,
                                    format!(
                                        "extension {extension:?} is {what}; extension values are strings, booleans or integers"
                                    ),
                                ),
                                Scalar::Text(_) | Scalar::Other | Scalar::Null => {}
                            }
                        }
                    }
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

fn check_extension_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= EXTENSION_NAME_CHARS_MAX
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "attribute name {:?} is not valid: CloudEvents attribute names are 1 to {EXTENSION_NAME_CHARS_MAX} lower-case letters or digits",
            name.chars().take(80).collect::<String>()
        ))
    }
}

fn json_error(error: &serde_json::Error) -> String {
    format!("the body is not valid JSON: {error}")
}

/// Parses and checks one structured event whose text is `raw`.
fn structured_event<'a>(
    raw: &'a str,
    limits: &EventLimits,
) -> Result<EventToPublish<'a>, EventError> {
    if raw.len() > limits.event_bytes_max as usize {
        return Err(EventError::TooLarge(format!(
            "the event is {} bytes; the limit (event_bytes_max) is {}",
            raw.len(),
            limits.event_bytes_max
        )));
    }
    let fields: Fields<'a> = serde_json::from_str(raw).map_err(|error| {
        EventError::Invalid(if error.is_data() {
            "an event must be a JSON object with the CloudEvents attributes".to_owned()
        } else {
            json_error(&error)
        })
    })?;
    if let Some(problem) = fields.problem {
        return Err(EventError::Invalid(problem));
    }
    if fields.has_data && fields.has_data_base64 {
        return Err(EventError::Invalid(
            "an event has either \"data\" or \"data_base64\", not both".into(),
        ));
    }
    match fields.specversion.as_deref() {
        Some("1.0") => {}
        Some(other) => {
            return Err(EventError::Invalid(format!(
                "specversion {other:?} is not supported; use \"1.0\""
            )));
        }
        None => {
            return Err(EventError::Invalid(
                "the required attribute \"specversion\" is missing".into(),
            ));
        }
    }
    let required = |value: Option<Cow<'a, str>>, name: &str| match value {
        Some(value) if !value.is_empty() => Ok(value),
        Some(_) => Err(EventError::Invalid(format!(
            "attribute {name:?} must not be empty"
        ))),
        None => Err(EventError::Invalid(format!(
            "the required attribute {name:?} is missing"
        ))),
    };
    Ok(EventToPublish {
        id: required(fields.id, "id")?,
        source: required(fields.source, "source")?,
        event_type: required(fields.event_type, "type")?,
        partition_key: fields.partition_key,
        body: raw.as_bytes(),
    })
}

/// One structured-mode event (`application/cloudevents+json`).
pub fn parse_structured<'a>(
    body: &'a [u8],
    limits: &EventLimits,
) -> Result<EventToPublish<'a>, EventError> {
    let text = std::str::from_utf8(body)
        .map_err(|error| EventError::Invalid(format!("the body is not UTF-8: {error}")))?;
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|error| EventError::Invalid(json_error(&error)))?;
    structured_event(raw.get(), limits)
}

/// A JSON array read up to `max + 1` elements and no further, so a huge array of tiny elements
/// costs no more memory than the limit allows before it is refused.
struct BoundedArray {
    max: usize,
}

impl<'de> de::DeserializeSeed<'de> for BoundedArray {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedArray {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON array")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max + 1));
        while let Some(value) = seq.next_element::<&'de RawValue>()? {
            values.push(value);
            if values.len() > self.max {
                // Enough to answer 413; the rest is only skipped over, never kept in memory.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(values);
            }
        }
        Ok(values)
    }
}

/// A batch (`application/cloudevents-batch+json`): a JSON array of structured events. An error
/// names the index of the bad event.
pub fn parse_batch<'a>(
    body: &'a [u8],
    limits: &EventLimits,
) -> Result<Vec<EventToPublish<'a>>, EventError> {
    let text = std::str::from_utf8(body)
        .map_err(|error| EventError::Invalid(format!("the body is not UTF-8: {error}")))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let raws = de::DeserializeSeed::deserialize(
        BoundedArray {
            max: limits.batch_events_max as usize,
        },
        &mut deserializer,
    )
    .and_then(|raws| deserializer.end().map(|()| raws))
    .map_err(|error| {
        EventError::Invalid(if error.is_data() {
            "a batch must be a JSON array of CloudEvents".to_owned()
        } else {
            json_error(&error)
        })
    })?;
    if raws.len() > limits.batch_events_max as usize {
        return Err(EventError::TooLarge(format!(
            "the batch holds {} events; the limit (batch_events_max) is {}",
            raws.len(),
            limits.batch_events_max
        )));
    }
    raws.iter()
        .enumerate()
        .map(|(index, raw)| {
            structured_event(raw.get(), limits).map_err(|error| match error {
                EventError::Invalid(text) => EventError::Invalid(format!("event {index}: {text}")),
                EventError::TooLarge(text) => {
                    EventError::TooLarge(format!("event {index}: {text}"))
                }
                other => other,
            })
        })
        .collect()
}

/// Appends `value` to `out` as a JSON string.
fn push_json_string(out: &mut Vec<u8>, value: &str) {
    // serde_json escapes exactly as JSON requires; writing into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).expect("writing a string into a Vec never fails");
}

/// An event Herald builds (binary and plain-JSON modes): the stored JSON and its attributes.
#[derive(Debug, Clone)]
pub struct BuiltEvent {
    pub json: Vec<u8>,
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub partition_key: Option<String>,
}

impl BuiltEvent {
    pub fn as_event(&self) -> EventToPublish<'_> {
        EventToPublish {
            id: Cow::Borrowed(&self.id),
            source: Cow::Borrowed(&self.source),
            event_type: Cow::Borrowed(&self.event_type),
            partition_key: self.partition_key.as_deref().map(Cow::Borrowed),
            body: &self.json,
        }
    }
}

fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

fn is_text_media_type(content_type: &str) -> bool {
    content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("text/")
}

/// Writes the `data` member for a body of `content_type`: JSON as is, text as a string, anything
/// else as `data_base64`.
fn push_data(
    json: &mut Vec<u8>,
    body: &[u8],
    content_type: Option<&str>,
) -> Result<(), EventError> {
    match content_type {
        Some(content_type) if is_json_media_type(content_type) => {
            let text = std::str::from_utf8(body)
                .map_err(|error| EventError::Invalid(format!("the body is not UTF-8: {error}")))?;
            let raw: &RawValue = serde_json::from_str(text)
                .map_err(|error| EventError::Invalid(json_error(&error)))?;
            serde_json::from_str::<Checked>(raw.get())
                .map_err(|error| EventError::Invalid(json_error(&error)))?;
            json.extend_from_slice(b",\"data\":");
            json.extend_from_slice(raw.get().as_bytes());
        }
        Some(content_type) if is_text_media_type(content_type) => {
            let text = std::str::from_utf8(body).map_err(|error| {
                EventError::Invalid(format!("a text/* body must be UTF-8: {error}"))
            })?;
            json.extend_from_slice(b",\"data\":");
            push_json_string(json, text);
        }
        _ => {
            if !body.is_empty() {
                json.extend_from_slice(b",\"data_base64\":");
                push_json_string(json, &BASE64.encode(body));
            }
        }
    }
    Ok(())
}

/// Decodes a `ce-*` header value (percent-encoded, as the HTTP binding says).
fn decode_header_value(name: &str, value: &[u8]) -> Result<String, EventError> {
    let mut decoded = Vec::with_capacity(value.len());
    let mut at = 0;
    while at < value.len() {
        if value[at] == b'%' {
            let hex = value
                .get(at + 1..at + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| {
                    EventError::Invalid(format!("header {name} has a broken percent-encoding"))
                })?;
            decoded.push(hex);
            at += 3;
        } else {
            decoded.push(value[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| {
        EventError::Invalid(format!("header {name} is not UTF-8 after percent-decoding"))
    })
}

/// True when the request carries binary-mode `ce-*` headers.
pub fn has_binary_headers(headers: &axum::http::HeaderMap) -> bool {
    headers.keys().any(|name| name.as_str().starts_with("ce-"))
}

/// A binary-mode event: attributes in `ce-*` headers, `data` in the body.
pub fn parse_binary(
    headers: &axum::http::HeaderMap,
    body: &[u8],
    limits: &EventLimits,
) -> Result<BuiltEvent, EventError> {
    if body.len() > limits.event_bytes_max as usize {
        return Err(EventError::TooLarge(format!(
            "the event's data is {} bytes; the limit (event_bytes_max) is {}",
            body.len(),
            limits.event_bytes_max
        )));
    }
    let mut attributes: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attribute == "datacontenttype" {
            return Err(EventError::Invalid(
                "in binary mode the data's media type is the Content-Type header, not ce-datacontenttype".into(),
            ));
        }
        check_extension_name(attribute).map_err(EventError::Invalid)?;
        if attributes.iter().any(|(known, _)| known == attribute) {
            return Err(EventError::Invalid(format!(
                "header ce-{attribute} appears twice"
            )));
        }
        attributes.push((
            attribute.to_owned(),
            decode_header_value(name.as_str(), value.as_bytes())?,
        ));
    }
    let take = |attributes: &mut Vec<(String, String)>, name: &str| {
        attributes
            .iter()
            .position(|(known, _)| known == name)
            .map(|at| attributes.remove(at).1)
    };
    match take(&mut attributes, "specversion").as_deref() {
        Some("1.0") | None => {}
        Some(other) => {
            return Err(EventError::Invalid(format!(
                "ce-specversion {other:?} is not supported; use 1.0"
            )));
        }
    }
    let mut required = |name: &str| match take(&mut attributes, name) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(EventError::Invalid(format!(
            "binary mode needs a non-empty ce-{name} header"
        ))),
    };
    let id = required("id")?;
    let source = required("source")?;
    let event_type = required("type")?;
    if let Some((_, time)) = attributes.iter().find(|(name, _)| name == "time")
        && crate::time::parse_rfc3339(time).is_none()
    {
        return Err(EventError::Invalid(format!(
            "ce-time is not an RFC 3339 timestamp: {time:?}"
        )));
    }
    let partition_key = attributes
        .iter()
        .find(|(name, _)| name == "partitionkey")
        .map(|(_, value)| value.clone());
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| EventError::Invalid("the Content-Type header is not ASCII".into()))
        })
        .transpose()?;
    let mut json = Vec::with_capacity(body.len() + 256);
    json.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    push_json_string(&mut json, &id);
    json.extend_from_slice(b",\"source\":");
    push_json_string(&mut json, &source);
    json.extend_from_slice(b",\"type\":");
    push_json_string(&mut json, &event_type);
    for (name, value) in &attributes {
        json.push(b',');
        push_json_string(&mut json, name);
        json.push(b':');
        push_json_string(&mut json, value);
    }
    if let Some(content_type) = content_type {
        json.extend_from_slice(b",\"datacontenttype\":");
        push_json_string(&mut json, content_type);
    }
    push_data(&mut json, body, content_type)?;
    json.push(b'}');
    Ok(BuiltEvent {
        json,
        id,
        source,
        event_type,
        partition_key,
    })
}

/// A plain `application/json` publish: the body is `data`; Herald fills in `id` (a ULID),
/// `source` (`/herald/{service}`), `type` (the topic), `specversion` and `time`.
pub fn build_from_json_data(
    body: &[u8],
    topic: &str,
    service: Option<&str>,
    now: &str,
    limits: &EventLimits,
) -> Result<BuiltEvent, EventError> {
    if body.len() > limits.event_bytes_max as usize {
        return Err(EventError::TooLarge(format!(
            "the event's data is {} bytes; the limit (event_bytes_max) is {}",
            body.len(),
            limits.event_bytes_max
        )));
    }
    let id = ulid::Ulid::new().to_string();
    let source = format!("/herald/{}", service.unwrap_or("anonymous"));
    let mut json = Vec::with_capacity(body.len() + 200);
    json.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    push_json_string(&mut json, &id);
    json.extend_from_slice(b",\"source\":");
    push_json_string(&mut json, &source);
    json.extend_from_slice(b",\"type\":");
    push_json_string(&mut json, topic);
    json.extend_from_slice(b",\"time\":");
    push_json_string(&mut json, now);
    json.extend_from_slice(b",\"datacontenttype\":\"application/json\"");
    push_data(&mut json, body, Some("application/json"))?;
    json.push(b'}');
    Ok(BuiltEvent {
        json,
        id,
        source,
        event_type: topic.to_owned(),
        partition_key: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: EventLimits = EventLimits {
        event_bytes_max: 1024,
        batch_events_max: 3,
    };

    fn error_text(result: Result<impl std::fmt::Debug, EventError>) -> String {
        match result {
            Err(error) => error.to_string(),
            Ok(value) => panic!("expected an error, got {value:?}"),
        }
    }

    #[test]
    fn numbers_beyond_a_float_are_refused_in_every_mode() {
        let structured =
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"n":[1e999999]}}"#;
        assert!(error_text(parse_structured(structured, &LIMITS)).contains("out of range"));
        let extension = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","big":-1e400}"#;
        assert!(error_text(parse_structured(extension, &LIMITS)).contains("out of range"));
        assert!(
            error_text(build_from_json_data(b"1e999999", "t", None, "now", &LIMITS))
                .contains("out of range")
        );
        // Large but representable numbers stay as sent.
        let fine = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":[1e300,18446744073709551616]}"#;
        assert_eq!(parse_structured(fine, &LIMITS).unwrap().body, &fine[..]);
    }

    #[test]
    fn a_structured_event_is_stored_as_sent_with_its_attributes_borrowed() {
        let body = br#"{"specversion":"1.0","id":"1","source":"/orders","type":"order.created","partitionkey":"c-7","retries":3,"data":{"total":5}}"#;
        let event = parse_structured(body, &LIMITS).unwrap();
        assert_eq!(event.id, "1");
        assert!(matches!(event.id, Cow::Borrowed(_)));
        assert_eq!(event.source, "/orders");
        assert_eq!(event.event_type, "order.created");
        assert_eq!(event.partition_key.as_deref(), Some("c-7"));
        assert_eq!(event.body, &body[..]);
    }

    #[test]
    fn structured_events_missing_or_mistyping_attributes_are_refused_with_a_reason() {
        let cases: [(&[u8], &str); 11] = [
            (br#"{"id":"1","source":"/s","type":"t"}"#, "\"specversion\" is missing"),
            (br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#, "not supported"),
            (br#"{"specversion":"1.0","source":"/s","type":"t"}"#, "\"id\" is missing"),
            (br#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#, "must not be empty"),
            (br#"{"specversion":"1.0","id":5,"source":"/s","type":"t"}"#, "must be a string"),
            (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad-Name":1}"#, "not valid"),
            (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{"a":1}}"#, "an object"),
            (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#, "RFC 3339"),
            (br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#, "not both"),
            (br#"[1,2]"#, "JSON object"),
            (br#"{"specversion":"1.0","id":"1""#, "not valid JSON"),
        ];
        for (body, expected) in cases {
            let text = error_text(parse_structured(body, &LIMITS));
            assert!(
                text.contains(expected),
                "{} → {text}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(error_text(parse_structured(b"\xff\xfe", &LIMITS)).contains("UTF-8"));
    }

    #[test]
    fn escaped_attributes_are_decoded() {
        let body = br#"{"specversion":"1.0","id":"a\"b","source":"/s","type":"t"}"#;
        assert_eq!(parse_structured(body, &LIMITS).unwrap().id, "a\"b");
    }

    #[test]
    fn a_batch_names_the_index_of_its_bad_event_and_respects_its_limits() {
        let good = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        let bad = r#"{"specversion":"1.0","source":"/s","type":"t"}"#;
        let body = format!("[{good},{bad}]");
        assert!(error_text(parse_batch(body.as_bytes(), &LIMITS)).starts_with("event 1:"));
        let body = format!("[{good},{good},{good},{good}]");
        assert!(matches!(
            parse_batch(body.as_bytes(), &LIMITS),
            Err(EventError::TooLarge(_))
        ));
        assert_eq!(parse_batch(b"[]", &LIMITS).unwrap().len(), 0);
        let big = format!(
            r#"[{{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"{}"}}]"#,
            "x".repeat(1024)
        );
        assert!(
            matches!(parse_batch(big.as_bytes(), &LIMITS), Err(EventError::TooLarge(text)) if text.starts_with("event 0"))
        );
    }

    #[test]
    fn binary_mode_builds_a_structured_event() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("ce-id", "42".parse().unwrap());
        headers.insert("ce-source", "/billing".parse().unwrap());
        headers.insert("ce-type", "invoice.paid".parse().unwrap());
        headers.insert("ce-partitionkey", "cust%2D1".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        let event = parse_binary(&headers, br#"{"amount": 3}"#, &LIMITS).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&event.json).unwrap();
        assert_eq!(value["id"], "42");
        assert_eq!(value["partitionkey"], "cust-1");
        assert_eq!(value["data"]["amount"], 3);
        assert_eq!(value["datacontenttype"], "application/json");
        assert_eq!(event.partition_key.as_deref(), Some("cust-1"));
        headers.insert("content-type", "application/octet-stream".parse().unwrap());
        let event = parse_binary(&headers, &[0, 1, 2], &LIMITS).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&event.json).unwrap();
        assert_eq!(value["data_base64"], "AAEC");
        headers.remove("ce-source");
        assert!(error_text(parse_binary(&headers, b"", &LIMITS)).contains("ce-source"));
    }

    #[test]
    fn plain_json_gets_herald_filled_attributes() {
        let event = build_from_json_data(
            br#"{"n":1}"#,
            "orders",
            Some("shop"),
            "2026-11-26T00:00:00Z",
            &LIMITS,
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&event.json).unwrap();
        assert_eq!(value["source"], "/herald/shop");
        assert_eq!(value["type"], "orders");
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["data"]["n"], 1);
        assert_eq!(value["id"].as_str().unwrap().len(), 26);
        assert!(
            error_text(build_from_json_data(b"{nope", "orders", None, "", &LIMITS))
                .contains("JSON")
        );
    }
}

#[cfg(test)]
mod bounded_tests {
    use super::*;

    #[test]
    fn a_huge_array_of_tiny_elements_is_refused_as_too_large() {
        let body = format!("[{}1]", "1,".repeat(100_000));
        let limits = EventLimits {
            event_bytes_max: 1024,
            batch_events_max: 10,
        };
        let result = parse_batch(body.as_bytes(), &limits);
        assert!(matches!(result, Err(EventError::TooLarge(_))), "{result:?}");
    }
}
