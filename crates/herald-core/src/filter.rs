//! CloudEvents Subscriptions API filters: `exact`, `prefix`, `suffix` on attribute values, and
//! `all`, `any`, `not` to combine them. An event a subscription's filter refuses is skipped.

use serde_json::{Map, Value};

/// Deepest nesting of `all` / `any` / `not` accepted.
pub const FILTER_DEPTH_MAX: usize = 16;
/// Most filters in one subscription, counting nested ones.
pub const FILTER_NODES_MAX: usize = 256;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Exact(String, String),
    Prefix(String, String),
    Suffix(String, String),
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
}

/// Why a filter is refused; the text says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub struct FilterError(pub String);

impl Filter {
    /// Parses the JSON form, e.g. `{"prefix": {"type": "order."}}`.
    pub fn parse(value: &Value) -> Result<Filter, FilterError> {
        let mut nodes = 0;
        parse_node(value, 0, &mut nodes)
    }

    /// True when the event (its top-level attributes) passes.
    pub fn matches(&self, attributes: &Map<String, Value>) -> bool {
        let text = |name: &str| attributes.get(name).and_then(attribute_text);
        match self {
            Filter::Exact(name, value) => text(name).is_some_and(|found| &found == value),
            Filter::Prefix(name, value) => {
                text(name).is_some_and(|found| found.starts_with(value.as_str()))
            }
            Filter::Suffix(name, value) => {
                text(name).is_some_and(|found| found.ends_with(value.as_str()))
            }
            Filter::All(filters) => filters.iter().all(|filter| filter.matches(attributes)),
            Filter::Any(filters) => filters.iter().any(|filter| filter.matches(attributes)),
            Filter::Not(filter) => !filter.matches(attributes),
        }
    }
}

/// An attribute's canonical string form (CloudEvents: booleans and integers as text).
fn attribute_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn parse_node(value: &Value, depth: usize, nodes: &mut usize) -> Result<Filter, FilterError> {
    *nodes += 1;
    if *nodes > FILTER_NODES_MAX {
        return Err(FilterError(format!("more than {FILTER_NODES_MAX} filters")));
    }
    if depth > FILTER_DEPTH_MAX {
        return Err(FilterError(format!(
            "nested deeper than {FILTER_DEPTH_MAX}"
        )));
    }
    let Some(object) = value.as_object() else {
        return Err(FilterError(
            "a filter is an object such as {\"exact\": {\"type\": \"order.created\"}}".into(),
        ));
    };
    if object.len() != 1 {
        return Err(FilterError(
            "a filter object has exactly one dialect: exact, prefix, suffix, all, any or not"
                .into(),
        ));
    }
    let (dialect, argument) = object.iter().next().expect("one member");
    let attribute = |argument: &Value| -> Result<(String, String), FilterError> {
        let Some(pair) = argument.as_object().filter(|pair| pair.len() == 1) else {
            return Err(FilterError(format!(
                "{dialect} takes one attribute and its value, such as {{\"type\": \"order.created\"}}"
            )));
        };
        let (name, value) = pair.iter().next().expect("one member");
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit());
        if !valid_name {
            return Err(FilterError(format!(
                "{name:?} is not a CloudEvents attribute name"
            )));
        }
        let Some(value) = value.as_str() else {
            return Err(FilterError(format!(
                "the value for {name:?} in {dialect} must be a string"
            )));
        };
        Ok((name.clone(), value.to_owned()))
    };
    let list = |argument: &Value, nodes: &mut usize| -> Result<Vec<Filter>, FilterError> {
        let Some(items) = argument.as_array().filter(|items| !items.is_empty()) else {
            return Err(FilterError(format!(
                "{dialect} takes a non-empty array of filters"
            )));
        };
        items
            .iter()
            .map(|item| parse_node(item, depth + 1, nodes))
            .collect()
    };
    match dialect.as_str() {
        "exact" => attribute(argument).map(|(name, value)| Filter::Exact(name, value)),
        "prefix" => attribute(argument).map(|(name, value)| Filter::Prefix(name, value)),
        "suffix" => attribute(argument).map(|(name, value)| Filter::Suffix(name, value)),
        "all" => list(argument, nodes).map(Filter::All),
        "any" => list(argument, nodes).map(Filter::Any),
        "not" => parse_node(argument, depth + 1, nodes).map(|filter| Filter::Not(Box::new(filter))),
        other => Err(FilterError(format!(
            "unknown dialect {other:?}; use exact, prefix, suffix, all, any or not"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn each_dialect_decides_as_the_spec_says() {
        let order = event(
            json!({"type": "order.created", "source": "/shop/eu", "subject": "42", "priority": 3, "vip": true}),
        );
        let cases = [
            (json!({"exact": {"type": "order.created"}}), true),
            (json!({"exact": {"type": "order"}}), false),
            (json!({"prefix": {"type": "order."}}), true),
            (json!({"suffix": {"source": "/eu"}}), true),
            (json!({"exact": {"priority": "3"}}), true),
            (json!({"exact": {"vip": "true"}}), true),
            (json!({"exact": {"missing": "x"}}), false),
            (
                json!({"all": [{"prefix": {"type": "order."}}, {"exact": {"subject": "42"}}]}),
                true,
            ),
            (
                json!({"all": [{"prefix": {"type": "order."}}, {"exact": {"subject": "7"}}]}),
                false,
            ),
            (
                json!({"any": [{"exact": {"subject": "7"}}, {"suffix": {"type": "created"}}]}),
                true,
            ),
            (json!({"not": {"prefix": {"type": "payment."}}}), true),
            (json!({"not": {"exact": {"type": "order.created"}}}), false),
        ];
        for (filter, expected) in cases {
            assert_eq!(
                Filter::parse(&filter).unwrap().matches(&order),
                expected,
                "{filter}"
            );
        }
    }

    #[test]
    fn malformed_filters_are_refused_with_a_reason() {
        for bad in [
            json!("type"),
            json!({}),
            json!({"exact": {"type": "a"}, "prefix": {"type": "b"}}),
            json!({"exact": {"type": 3}}),
            json!({"exact": {"Type": "a"}}),
            json!({"exact": {}}),
            json!({"all": []}),
            json!({"sql": "type = 'a'"}),
        ] {
            assert!(Filter::parse(&bad).is_err(), "{bad}");
        }
        let mut deep = json!({"exact": {"type": "a"}});
        for _ in 0..20 {
            deep = json!({"not": deep});
        }
        assert!(Filter::parse(&deep).unwrap_err().0.contains("deeper"));
    }
}
