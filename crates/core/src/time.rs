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
/// Unix milliseconds as RFC 3339 in UTC with milliseconds:
/// `2021-06-01T18:34:42.345Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

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
    fn rfc3339_dates_are_civil_dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_622_572_482_345), "2021-06-01T18:34:42.345Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(250), "250ms");
        assert_eq!(human_ms(90_000), "90s");
        assert_eq!(human_ms(1_500), "1.5s");
    }
}
