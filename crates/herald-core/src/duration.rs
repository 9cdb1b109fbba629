//! Herald's duration strings: a whole number and a unit, `ms`, `s`, `m`, `h` or `d`
//! (`500ms`, `30s`, `5m`, `7d`). Never negative.

use std::time::Duration;

/// Why a duration string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {text:?}: {reason} (write a whole number and a unit, such as 500ms, 30s, 5m, 2h or 7d)"
)]
pub struct DurationError {
    pub text: String,
    pub reason: &'static str,
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `7d`; `0s` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let fail = |reason| DurationError {
        text: text.chars().take(64).collect(),
        reason,
    };
    let digits_end = text
        .find(|character: char| !character.is_ascii_digit())
        .ok_or_else(|| fail("the unit is missing"))?;
    if text.starts_with('-') {
        return Err(fail("durations are never negative"));
    }
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(fail("the number is missing"));
    }
    let number: u64 = number
        .parse()
        .map_err(|_| fail("the number is too large"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(fail("the unit must be ms, s, m, h or d")),
    };
    let millis = number
        .checked_mul(unit_ms)
        .ok_or_else(|| fail("the duration is too large"))?;
    Ok(Duration::from_millis(millis))
}

/// Formats a duration in the largest unit that keeps it whole (`120000ms` → `2m`).
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis >= size && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    if millis == 0 {
        return "0s".into();
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_each_unit() {
        for (text, millis) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("7d", 604_800_000),
            ("0s", 0),
        ] {
            let duration = parse_duration(text).unwrap();
            assert_eq!(duration.as_millis(), millis);
            assert_eq!(format_duration(duration), text);
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "",
            "30",
            "s",
            "-5s",
            "5 minutes",
            "1.5s",
            "99999999999999999999d",
            "5w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
