//! Building CloudEvents from the CLI's flags, and reading batch files. Pure functions, no I/O.

use serde_json::{Map, Value};

/// The `source` of events the CLI builds when `--source` is not given.
pub const DEFAULT_SOURCE: &str = "/herald-cli";

/// The attributes given as flags; `None` takes a default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventAttributes {
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub id: Option<String>,
    pub partition_key: Option<String>,
}

impl EventAttributes {
    /// True when any attribute was given, so the CLI builds the CloudEvent itself rather than
    /// letting the server wrap plain JSON data.
    pub fn any(&self) -> bool {
        self.event_type.is_some()
            || self.source.is_some()
            || self.id.is_some()
            || self.partition_key.is_some()
    }

    /// A structured CloudEvent carrying `data`: `type` defaults to the topic's name (as the
    /// server does for plain JSON), `source` to [`DEFAULT_SOURCE`], `id` to a new ULID.
    pub fn build(&self, topic: &str, data: Value) -> Value {
        let mut event = Map::new();
        event.insert("specversion".into(), "1.0".into());
        event.insert(
            "id".into(),
            self.id
                .clone()
                .unwrap_or_else(|| ulid::Ulid::new().to_string())
                .into(),
        );
        event.insert(
            "source".into(),
            self.source.as_deref().unwrap_or(DEFAULT_SOURCE).into(),
        );
        event.insert(
            "type".into(),
            self.event_type.as_deref().unwrap_or(topic).into(),
        );
        if let Some(key) = &self.partition_key {
            event.insert("partitionkey".into(), key.as_str().into());
        }
        event.insert("datacontenttype".into(), "application/json".into());
        event.insert("data".into(), data);
        Value::Object(event)
    }
}

/// Parses an event's data given on the command line.
pub fn parse_data(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|error| {
        format!(
            "DATA is not JSON ({error}); quote text as a JSON string, e.g. '\"hello\"', or pass an object, e.g. '{{\"total\": 42}}'"
        )
    })
}

/// Parses a batch file: a JSON array, or one JSON value per line (blank lines are skipped).
/// `name` names the file in errors.
pub fn parse_batch(name: &str, text: &str) -> Result<Vec<Value>, String> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text)
            .map_err(|error| format!("{name} is not a JSON array of events: {error}"));
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line)
                .map_err(|error| format!("{name} line {} is not JSON: {error}", index + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_event_gets_defaults_for_what_was_not_given() {
        let attributes = EventAttributes {
            partition_key: Some("customer-7".into()),
            ..EventAttributes::default()
        };
        assert!(attributes.any());
        let event = attributes.build("orders", json!({"total": 42}));
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], DEFAULT_SOURCE);
        assert_eq!(event["type"], "orders");
        assert_eq!(event["partitionkey"], "customer-7");
        assert_eq!(event["data"], json!({"total": 42}));
        let id = event["id"].as_str().unwrap();
        assert_eq!(id.len(), 26, "a ULID: {id}");
        let other = attributes.build("orders", json!(null));
        assert_ne!(other["id"], event["id"]);
    }

    #[test]
    fn given_attributes_are_kept() {
        let attributes = EventAttributes {
            event_type: Some("order.created".into()),
            source: Some("/shop".into()),
            id: Some("A-1".into()),
            partition_key: None,
        };
        let event = attributes.build("orders", json!("x"));
        assert_eq!(event["type"], "order.created");
        assert_eq!(event["source"], "/shop");
        assert_eq!(event["id"], "A-1");
        assert!(event.get("partitionkey").is_none());
    }

    #[test]
    fn no_attributes_means_plain_json() {
        assert!(!EventAttributes::default().any());
    }

    #[test]
    fn data_must_be_json() {
        assert_eq!(parse_data(r#"{"a": 1}"#), Ok(json!({"a": 1})));
        assert_eq!(parse_data(r#""hello""#), Ok(json!("hello")));
        let error = parse_data("hello").unwrap_err();
        assert!(error.starts_with("DATA is not JSON"), "{error}");
    }

    #[test]
    fn a_batch_file_is_an_array_or_json_lines() {
        assert_eq!(
            parse_batch("f", " [{\"a\":1}, {\"a\":2}]\n"),
            Ok(vec![json!({"a": 1}), json!({"a": 2})])
        );
        assert_eq!(
            parse_batch("f", "{\"a\":1}\n\n{\"a\":2}\n"),
            Ok(vec![json!({"a": 1}), json!({"a": 2})])
        );
        assert_eq!(parse_batch("f", ""), Ok(vec![]));
        let error = parse_batch("events.jsonl", "{\"a\":1}\nnope\n").unwrap_err();
        assert!(
            error.starts_with("events.jsonl line 2 is not JSON"),
            "{error}"
        );
    }
}
