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

/// Milliseconds of a protobuf duration (negative counts as zero).
pub fn duration_to_ms(d: &prost_types::Duration) -> u64 {
    (d.seconds.max(0) as u64) * 1000 + (d.nanos.max(0) as u64) / 1_000_000
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
    fn human_durations() {
        assert_eq!(human_ms(250), "250ms");
        assert_eq!(human_ms(90_000), "90s");
        assert_eq!(human_ms(1_500), "1.5s");
    }
}
