//! The circuit breaker of one endpoint (pure: time is passed in). After
//! `FAILURES_TO_OPEN` failed attempts in a row the circuit opens: deliveries stop and one probe
//! at a time is sent, at an interval that doubles from `PROBE_INTERVAL_FIRST` up to
//! `PROBE_INTERVAL_MAX`. The first success closes it again.

use std::time::Duration;

/// Failed attempts in a row that open the circuit.
pub const FAILURES_TO_OPEN: u32 = 5;
/// Wait before the first probe of an open circuit.
pub const PROBE_INTERVAL_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between probes: a recovered endpoint is back within this.
pub const PROBE_INTERVAL_MAX: Duration = Duration::from_secs(30);

/// The state of a push subscription's endpoint, as `stats.push.state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushState {
    Healthy,
    /// The last attempt failed; deliveries go on, failed ones are retried with backoff.
    Retrying,
    /// Too many failures in a row: only probes are sent.
    OpenCircuit,
    /// The endpoint answered 410 Gone; nothing is sent until the subscription is changed.
    Disabled,
}

impl PushState {
    pub fn as_str(self) -> &'static str {
        match self {
            PushState::Healthy => "healthy",
            PushState::Retrying => "retrying",
            PushState::OpenCircuit => "open_circuit",
            PushState::Disabled => "disabled",
        }
    }
}

/// What the dispatcher may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Deliver up to the in-flight limit.
    Closed,
    /// Send one probe, with nothing else in flight.
    Probe,
    /// Send nothing before this time (ms).
    WaitUntil(u64),
}

#[derive(Debug, Clone, Default)]
pub struct Breaker {
    consecutive_failures: u32,
    /// When the circuit is open: the current interval and the time of the next probe (ms).
    open: Option<(Duration, u64)>,
}

impl Breaker {
    pub fn gate(&self, now_ms: u64) -> Gate {
        match self.open {
            None => Gate::Closed,
            Some((_, next_probe_ms)) if now_ms >= next_probe_ms => Gate::Probe,
            Some((_, next_probe_ms)) => Gate::WaitUntil(next_probe_ms),
        }
    }

    pub fn succeeded(&mut self) {
        self.consecutive_failures = 0;
        self.open = None;
    }

    /// A failed attempt at `now_ms`; `not_before_ms` is a `Retry-After` the endpoint asked for.
    /// `probe` says it was the open circuit's probe: only a failed probe lengthens the interval
    /// (attempts that were under way when the circuit opened end without changing it).
    pub fn failed(&mut self, now_ms: u64, not_before_ms: Option<u64>, probe: bool) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let interval = match self.open {
            Some(_) if !probe => return,
            Some((interval, _)) => (interval * 2).min(PROBE_INTERVAL_MAX),
            None if self.consecutive_failures >= FAILURES_TO_OPEN => PROBE_INTERVAL_FIRST,
            None => return,
        };
        let mut next_probe_ms = now_ms + interval.as_millis() as u64;
        // A Retry-After within the longest interval is honoured for the whole endpoint too.
        if let Some(not_before_ms) = not_before_ms {
            let latest = now_ms + PROBE_INTERVAL_MAX.as_millis() as u64;
            next_probe_ms = next_probe_ms.max(not_before_ms.min(latest));
        }
        self.open = Some((interval, next_probe_ms));
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// `Healthy`, `Retrying` or `OpenCircuit`.
    pub fn state(&self) -> PushState {
        if self.open.is_some() {
            PushState::OpenCircuit
        } else if self.consecutive_failures > 0 {
            PushState::Retrying
        } else {
            PushState::Healthy
        }
    }

    /// When the next probe goes out, while the circuit is open.
    pub fn next_probe_ms(&self) -> Option<u64> {
        self.open.map(|(_, next)| next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_opens_after_failures_in_a_row_and_probes_at_growing_intervals() {
        let mut breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.failed(0, None, false);
            assert_eq!(breaker.state(), PushState::Retrying);
            assert_eq!(breaker.gate(0), Gate::Closed);
        }
        breaker.failed(0, None, false);
        assert_eq!(breaker.state(), PushState::OpenCircuit);
        assert_eq!(breaker.gate(0), Gate::WaitUntil(1_000));
        assert_eq!(breaker.gate(1_000), Gate::Probe);
        // Attempts that were under way when it opened fail without lengthening the wait.
        breaker.failed(500, None, false);
        assert_eq!(breaker.gate(0), Gate::WaitUntil(1_000));
        let mut now = 1_000;
        let mut intervals = Vec::new();
        for _ in 0..8 {
            breaker.failed(now, None, true);
            let Gate::WaitUntil(next) = breaker.gate(now) else {
                panic!("open after a failed probe")
            };
            intervals.push(next - now);
            now = next;
        }
        assert_eq!(
            intervals,
            [2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000]
        );
        breaker.succeeded();
        assert_eq!(breaker.state(), PushState::Healthy);
        assert_eq!(breaker.gate(now), Gate::Closed);
    }

    #[test]
    fn a_success_in_between_resets_the_count() {
        let mut breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            breaker.failed(0, None, false);
        }
        breaker.succeeded();
        breaker.failed(0, None, false);
        assert_eq!(breaker.state(), PushState::Retrying);
        assert_eq!(breaker.consecutive_failures(), 1);
    }

    #[test]
    fn retry_after_delays_the_next_probe_but_never_past_the_longest_interval() {
        let mut breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            breaker.failed(0, Some(10_000), false);
        }
        assert_eq!(breaker.next_probe_ms(), Some(10_000));
        breaker.failed(10_000, Some(10_000 + 3_600_000), true);
        assert_eq!(breaker.next_probe_ms(), Some(40_000));
    }
}
