//! What one webhook request carries, built from a stored event (pure: bytes in, bytes out).
//! CloudEvents' HTTP binding: binary mode puts the attributes in `ce-*` headers and `data` in
//! the body; structured mode sends the event itself as `application/cloudevents+json`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use herald_core::subscription::ContentMode;
use serde_json::{Map, Value};

/// A webhook request's content, before the Standard Webhooks headers are added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `(name, value)` pairs besides the Standard Webhooks ones; values are valid header text.
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Why a stored event could not be turned into a request (a stored event is always a JSON
/// object; this guards against a damaged one rather than failing the dispatcher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageError(pub String);

/// The request for `event` (the stored CloudEvent JSON) in `mode`.
pub fn build(event: &Bytes, mode: ContentMode) -> Result<Message, MessageError> {
    match mode {
        ContentMode::Structured => Ok(Message {
            headers: Vec::new(),
            content_type: Some("application/cloudevents+json; charset=utf-8".into()),
            body: event.clone(),
        }),
        ContentMode::Binary => binary(event),
    }
}

fn binary(event: &Bytes) -> Result<Message, MessageError> {
    let mut attributes: Map<String, Value> = serde_json::from_slice(event)
        .map_err(|error| MessageError(format!("the stored event is not a JSON object: {error}")))?;
    let content_type = match attributes.remove("datacontenttype") {
        Some(Value::String(text)) => Some(text),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let data = attributes.remove("data");
    let data_base64 = attributes.remove("data_base64");
    let (body, content_type) = match (data_base64, data) {
        (Some(Value::String(encoded)), _) => {
            let bytes = BASE64
                .decode(encoded)
                .map_err(|error| MessageError(format!("data_base64 is not base64: {error}")))?;
            (Bytes::from(bytes), content_type)
        }
        (_, Some(Value::String(text))) if content_type.as_deref().is_some_and(|t| !is_json(t)) => {
            (Bytes::from(text), content_type)
        }
        (_, Some(value)) => (
            Bytes::from(value.to_string()),
            content_type.or_else(|| Some("application/json".into())),
        ),
        (_, None) => (Bytes::new(), content_type),
    };
    let mut headers = Vec::with_capacity(attributes.len());
    for (name, value) in attributes {
        let text = match value {
            // An attribute set to null is an attribute that is absent.
            Value::Null => continue,
            Value::String(text) => text,
            other => other.to_string(),
        };
        headers.push((format!("ce-{name}"), percent_encode(&text)));
    }
    Ok(Message {
        headers,
        content_type,
        body,
    })
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

/// Percent-encodes what the HTTP binding says a `ce-*` value may not carry as is: space, `"`,
/// `%` and everything outside printable ASCII (as UTF-8 bytes).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
        message
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn structured_mode_sends_the_stored_event_as_is() {
        let event = Bytes::from_static(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"a":1}}"#,
        );
        let message = build(&event, ContentMode::Structured).unwrap();
        assert_eq!(message.body, event);
        assert!(message.headers.is_empty());
        assert!(
            message
                .content_type
                .unwrap()
                .starts_with("application/cloudevents+json")
        );
    }

    #[test]
    fn binary_mode_puts_attributes_in_headers_and_data_in_the_body() {
        let event = Bytes::from_static(
            br#"{"specversion":"1.0","id":"1","source":"/shop","type":"order.created","subject":"caf\u00e9 50%","priority":3,"datacontenttype":"application/json","data":{"total":12}}"#,
        );
        let message = build(&event, ContentMode::Binary).unwrap();
        assert_eq!(message.body, Bytes::from_static(br#"{"total":12}"#));
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        assert_eq!(header(&message, "ce-id"), Some("1"));
        assert_eq!(header(&message, "ce-type"), Some("order.created"));
        assert_eq!(header(&message, "ce-subject"), Some("caf%C3%A9%2050%25"));
        assert_eq!(header(&message, "ce-priority"), Some("3"));
        assert_eq!(header(&message, "ce-data"), None);
    }

    #[test]
    fn binary_mode_sends_text_and_base64_data_as_their_bytes() {
        let text = Bytes::from_static(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/plain","data":"hello"}"#,
        );
        assert_eq!(
            build(&text, ContentMode::Binary).unwrap().body,
            Bytes::from_static(b"hello")
        );
        let binary = Bytes::from_static(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#,
        );
        let message = build(&binary, ContentMode::Binary).unwrap();
        assert_eq!(message.body, Bytes::from_static(&[0, 1, 2]));
        assert_eq!(
            message.content_type.as_deref(),
            Some("application/octet-stream")
        );
        let nulls = Bytes::from_static(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":null,"datacontenttype":null,"data":{"a":1}}"#,
        );
        let message = build(&nulls, ContentMode::Binary).unwrap();
        assert_eq!(header(&message, "ce-subject"), None);
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        let empty =
            Bytes::from_static(br#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#);
        assert!(build(&empty, ContentMode::Binary).unwrap().body.is_empty());
    }
}
