//! Names of topics and subscriptions, and topic patterns.
//!
//! A name is 1–249 characters of `[A-Za-z0-9._-]` (Kafka's legal set), not `.` or `..`; `.`
//! separates segments. Names starting with `_` belong to Herald itself. A pattern is a name whose
//! segments may also be `*` (exactly one segment) or `#` (zero or more segments).

/// Longest topic or subscription name.
pub const NAME_CHARS_MAX: usize = 249;

/// Longest subscription name: its redrive topic `_redrive.{name}` must be a name too.
pub const SUBSCRIPTION_NAME_CHARS_MAX: usize = NAME_CHARS_MAX - "_redrive.".len();
/// Longest reply group: its queue `_replies.{group}` is a subscription, whose redrive topic
/// `_redrive._replies.{group}` must be a name too.
pub const REPLY_GROUP_CHARS_MAX: usize = SUBSCRIPTION_NAME_CHARS_MAX - "_replies.".len();

/// Why a name is refused; the text says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} name {name:?}: {reason}")]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
    pub reason: &'static str,
}

fn check(what: &'static str, name: &str, allow_wildcards: bool) -> Result<(), NameError> {
    let fail = |reason| {
        Err(NameError {
            what,
            name: name.chars().take(NAME_CHARS_MAX + 1).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > NAME_CHARS_MAX {
        return fail("it is longer than 249 characters");
    }
    if name == "." || name == ".." {
        return fail("'.' and '..' are not allowed");
    }
    let legal = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-');
    if allow_wildcards {
        for segment in name.split('.') {
            if segment.contains(['*', '#']) && segment != "*" && segment != "#" {
                return fail("'*' and '#' must stand alone as a whole segment");
            }
            if segment != "*" && segment != "#" && !segment.bytes().all(legal) {
                return fail("only letters, digits, '.', '_' and '-' are allowed");
            }
        }
    } else if !name.bytes().all(legal) {
        return fail("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Checks a topic name.
pub fn check_topic_name(name: &str) -> Result<(), NameError> {
    check("topic", name, false)
}

/// Checks a subscription name (at most [`SUBSCRIPTION_NAME_CHARS_MAX`] characters).
pub fn check_subscription_name(name: &str) -> Result<(), NameError> {
    check("subscription", name, false)?;
    check_length("subscription", name, SUBSCRIPTION_NAME_CHARS_MAX)
}

/// Checks a reply group: a service name of at most [`REPLY_GROUP_CHARS_MAX`] characters.
pub fn check_reply_group(name: &str) -> Result<(), NameError> {
    check("reply group", name, false)?;
    check_length("reply group", name, REPLY_GROUP_CHARS_MAX)
}

fn check_length(what: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.len() > max {
        return Err(NameError {
            what,
            name: name.to_owned(),
            reason: if max == SUBSCRIPTION_NAME_CHARS_MAX {
                "it is longer than 240 characters (its redrive topic _redrive.{name} must fit in 249)"
            } else {
                "it is longer than 231 characters (its queue _replies.{group} and that queue's redrive topic must fit in 249)"
            },
        });
    }
    Ok(())
}

/// Checks a topic pattern (a name, or one with `*` / `#` segments).
pub fn check_pattern(pattern: &str) -> Result<(), NameError> {
    check("topic pattern", pattern, true)
}

/// True for names that belong to Herald itself (users may read them, not create them).
pub fn is_internal(name: &str) -> bool {
    name.starts_with('_')
}

/// True when `topic` matches `pattern`: `*` matches exactly one segment, `#` zero or more.
/// Runs in O(pattern segments × topic segments) whatever the pattern (no backtracking).
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let topic: Vec<&str> = topic.split('.').collect();
    // matched[j]: the pattern's first i segments match the topic's first j segments.
    let mut matched = vec![false; topic.len() + 1];
    matched[0] = true;
    for segment in &pattern {
        let mut next = vec![false; topic.len() + 1];
        match *segment {
            "#" => {
                // Zero or more: true from the first reachable position on.
                let mut reachable = false;
                for j in 0..=topic.len() {
                    reachable |= matched[j];
                    next[j] = reachable;
                }
            }
            literal => {
                for j in 1..=topic.len() {
                    next[j] = matched[j - 1] && (literal == "*" || literal == topic[j - 1]);
                }
            }
        }
        matched = next;
    }
    matched[topic.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafkas_legal_set() {
        assert!(check_topic_name("orders.created_v2-eu").is_ok());
        assert!(check_topic_name(&"a".repeat(249)).is_ok());
        assert!(check_topic_name(&"a".repeat(250)).is_err());
        for bad in ["", ".", "..", "orders created", "ordérs", "a/b", "a*"] {
            assert!(check_topic_name(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(check_pattern("orders.*").is_ok());
        assert!(check_pattern("#").is_ok());
        assert!(check_pattern("orders.cre*").is_err());
        assert!(check_subscription_name(&"s".repeat(240)).is_ok());
        assert!(check_subscription_name(&"s".repeat(241)).is_err());
        assert!(check_reply_group(&"g".repeat(231)).is_ok());
        assert!(check_reply_group(&"g".repeat(232)).is_err());
    }

    #[test]
    fn star_matches_one_segment_and_hash_any_number() {
        assert!(pattern_matches("orders.*", "orders.created"));
        assert!(!pattern_matches("orders.*", "orders"));
        assert!(!pattern_matches("orders.*", "orders.created.eu"));
        assert!(pattern_matches("orders.#", "orders"));
        assert!(pattern_matches("orders.#", "orders.created.eu"));
        assert!(pattern_matches("#.eu", "orders.created.eu"));
        assert!(pattern_matches("#", "anything.at.all"));
        assert!(pattern_matches("payments.captured", "payments.captured"));
        assert!(!pattern_matches("payments.captured", "payments.refunded"));
        assert!(pattern_matches("*.created.#", "orders.created"));
        assert!(pattern_matches("#.#.b", "a.b"));
        assert!(!pattern_matches("a.*", "b.c"));
    }

    #[test]
    fn many_hash_segments_match_without_backtracking() {
        // A backtracking matcher needs longer than the age of the universe for this one.
        let pattern = format!("{}.zz", vec!["#"; 120].join("."));
        let topic = "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t";
        assert!(!pattern_matches(&pattern, topic));
        assert!(pattern_matches(&pattern, &format!("{topic}.zz")));
    }
}
