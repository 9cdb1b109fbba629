//! Herald's duration strings: a whole number followed by a unit, such as `500ms`, `30s`, `5m`,
//! `7d`. Several terms may follow each other (`1h30m`), and a bare `0` is zero. The API, the
//! configuration file and the CLI all use this form, so it lives here where every one of them can
//! share it.
//!
//! [`format()`] writes the shortest exact form with a single unit (`90s`, not `1m30s`), so that
//! `parse(&format(d)) == Ok(d)` for every duration `parse` accepts.

use std::time::Duration;

/// The units, from the largest to the smallest, with their length in nanoseconds. `format` picks
/// the first one that divides a duration exactly.
const UNITS: [(&str, u128); 7] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Why a duration string was refused. The message quotes the input and shows the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason}; expected a whole number and a unit (ms, s, m, h, d), e.g. 500ms, 30s, 5m, 7d"
)]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a duration such as `500ms`, `30s`, `5m`, `2h`, `7d` or `1h30m`.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let error = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(error("it is empty"));
    }
    if input.starts_with('-') {
        return Err(error("durations are never negative"));
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }

    let mut total_nanos: u128 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(error("a number must come before each unit"));
        }
        let (digits, after_digits) = rest.split_at(digits_len);
        let unit_len = after_digits
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let (unit, after_unit) = after_digits.split_at(unit_len);
        if unit.is_empty() {
            return Err(if after_digits.starts_with('.') {
                error("fractions are not supported, use a smaller unit")
            } else {
                error("a unit must follow each number")
            });
        }
        let Some(&(_, unit_nanos)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(error("unknown unit"));
        };
        let count: u128 = digits
            .parse()
            .map_err(|_| error("the number is too large"))?;
        total_nanos = count
            .checked_mul(unit_nanos)
            .and_then(|nanos| total_nanos.checked_add(nanos))
            .ok_or_else(|| error("the number is too large"))?;
        rest = after_unit;
    }

    let seconds =
        u64::try_from(total_nanos / 1_000_000_000).map_err(|_| error("the number is too large"))?;
    // The remainder of a division by 10^9 always fits a u32.
    let subsecond_nanos = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(seconds, subsecond_nanos))
}

/// Formats a duration with the largest unit that represents it exactly: `7d`, `2m`, `90s`,
/// `1500ms`, `0s`.
pub fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (unit, unit_nanos) in UNITS {
        if nanos.is_multiple_of(unit_nanos) {
            return format!("{}{unit}", nanos / unit_nanos);
        }
    }
    unreachable!("every duration is a whole number of nanoseconds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unit_parses() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("10ns"), Ok(Duration::from_nanos(10)));
    }

    #[test]
    fn terms_add_up() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn zero_is_accepted_with_or_without_a_unit() {
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("0ms"), Ok(Duration::ZERO));
    }

    #[test]
    fn malformed_durations_are_refused_with_a_reason() {
        for (input, reason) in [
            ("", "it is empty"),
            ("-5s", "durations are never negative"),
            ("30", "a unit must follow each number"),
            ("s", "a number must come before each unit"),
            ("1.5s", "fractions are not supported, use a smaller unit"),
            ("5w", "unknown unit"),
            ("5 s", "a unit must follow each number"),
            ("5S", "unknown unit"),
            (" 5s", "a number must come before each unit"),
            (
                "99999999999999999999999999999999999999999d",
                "the number is too large",
            ),
        ] {
            assert_eq!(
                parse(input),
                Err(DurationError {
                    input: input.to_owned(),
                    reason
                }),
                "{input:?}"
            );
        }
    }

    #[test]
    fn error_message_shows_the_input_and_the_expected_form() {
        let message = parse("soon").unwrap_err().to_string();
        assert!(message.contains("\"soon\""), "{message}");
        assert!(message.contains("e.g. 500ms, 30s"), "{message}");
    }

    #[test]
    fn format_uses_the_largest_exact_unit() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(500)), "500ms");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(30)), "30s");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(120)), "2m");
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(format(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format(Duration::from_nanos(1_001)), "1001ns");
    }

    #[test]
    fn format_and_parse_round_trip() {
        for nanos in [
            1,
            999,
            1_000,
            1_000_000,
            1_234_000_000,
            60_000_000_000,
            86_400_000_000_000,
            u64::MAX,
        ] {
            let duration = Duration::from_nanos(nanos);
            assert_eq!(parse(&format(duration)), Ok(duration), "{nanos}");
        }
        let longest = Duration::new(u64::MAX, 999_999_999);
        assert_eq!(parse(&format(longest)), Ok(longest));
    }
}
