//! RFC 3339 timestamps in and out, as milliseconds since the Unix epoch.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp (0 for one before 1970); `None`
/// if it is not one.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    // Herald stores nothing before 1970: an earlier time reads as the epoch, which is before
    // every stored event (`from_time`, `start`, seek) and still a valid CloudEvents `time`.
    Some(u64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// An RFC 3339 timestamp in UTC with milliseconds, such as `2026-11-26T05:17:55.123Z`.
pub fn format_rfc3339(millis: u64) -> String {
    let nanos = i128::from(millis) * 1_000_000;
    let time =
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let (year, month, day) = (time.year(), u8::from(time.month()), time.day());
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_offsets_are_honoured() {
        let millis = parse_rfc3339("2026-11-01T00:00:00Z").unwrap();
        assert_eq!(format_rfc3339(millis), "2026-11-01T00:00:00.000Z");
        assert_eq!(parse_rfc3339("2026-11-01T02:00:00+02:00"), Some(millis));
        assert_eq!(
            parse_rfc3339("2026-11-01T00:00:00.250Z"),
            Some(millis + 250)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(0));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), Some(0));
    }
}
