//! Wall-clock helpers: the control plane keeps times as Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A protobuf timestamp of Unix milliseconds.
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// A protobuf duration of milliseconds.
pub fn duration_ms(ms: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// Milliseconds of a protobuf duration; a negative one counts as zero and
/// one too long for a `u64` as `u64::MAX`. For durations a user gives, use
/// [`checked_duration_ms`], which refuses both.
pub fn duration_to_ms(d: &prost_types::Duration) -> u64 {
    if d.seconds < 0 || d.seconds == 0 && d.nanos < 0 {
        return 0;
    }
    checked_duration_ms(d).unwrap_or(u64::MAX)
}

/// Milliseconds of a protobuf duration, or None unless it is a valid,
/// non-negative duration whose milliseconds fit a `u64`: `nanos` within
/// ±999,999,999 and of the same sign as `seconds`, as protobuf defines it.
pub fn checked_duration_ms(d: &prost_types::Duration) -> Option<u64> {
    if !(0..=999_999_999).contains(&d.nanos) {
        return None;
    }
    let seconds = u64::try_from(d.seconds).ok()?;
    seconds.checked_mul(1000)?.checked_add(u64::try_from(d.nanos / 1_000_000).ok()?)
}

/// The control plane's clock: Unix milliseconds, read as the wall clock at
/// the clock's creation plus the monotonic time since, so that a jump of the
/// wall clock does not move it, and tests on tokio's paused time drive it
/// with `tokio::time::advance`. Clones share the origin.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_ms: u64,
    origin: tokio::time::Instant,
}

impl Clock {
    /// A clock that reads the wall clock's time now.
    pub fn new() -> Clock {
        Clock { origin_ms: now_ms(), origin: tokio::time::Instant::now() }
    }

    /// A clock that reads `origin_ms` now, for tests.
    pub fn starting_at(origin_ms: u64) -> Clock {
        Clock { origin_ms, origin: tokio::time::Instant::now() }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.origin_ms.saturating_add(elapsed)
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

/// Milliseconds as a person reads them: `90s`, `1.5s`, `250ms`.
pub fn human_ms(ms: u64) -> String {
    match ms {
        ms if ms < 1000 => format!("{ms}ms"),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{}.{}s", ms / 1000, format!("{:03}", ms % 1000).trim_end_matches('0')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_from_requests_are_checked() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(checked_duration_ms(&d(90, 500_000_000)), Some(90_500));
        assert_eq!(checked_duration_ms(&d(-1, 0)), None);
        assert_eq!(checked_duration_ms(&d(1, -1)), None);
        assert_eq!(checked_duration_ms(&d(1, 1_000_000_000)), None);
        assert_eq!(checked_duration_ms(&d(i64::MAX, 0)), None, "overflows u64 milliseconds");
        assert_eq!(duration_to_ms(&d(i64::MAX, 0)), u64::MAX);
        assert_eq!(duration_to_ms(&d(-5, 0)), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_tokio_time() {
        let clock = Clock::starting_at(1_000);
        tokio::time::advance(std::time::Duration::from_millis(2_500)).await;
        assert_eq!(clock.now_ms(), 3_500);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(250), "250ms");
        assert_eq!(human_ms(90_000), "90s");
        assert_eq!(human_ms(1_500), "1.5s");
    }
}
