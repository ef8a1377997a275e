//! How long a failed batch waits before it is delivered again: an initial
//! wait that doubles with each delivery, up to a ceiling. A pipeline version
//! may set both (`retry.initialBackoff`, `retry.maxBackoff`); the worker
//! applies them when it hands a failed batch back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::FieldViolation;
use crate::time::{checked_duration_ms, duration_ms, duration_to_ms};

/// Longest initial wait a pipeline may set.
pub const MOST_INITIAL_MS: u64 = 10 * 60 * 1000;
/// Longest ceiling a pipeline may set.
pub const MOST_MAX_MS: u64 = 60 * 60 * 1000;

/// A batch's backoff between deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    /// 1 s, then 2, 4, 8, 16 and 30 s from then on.
    fn default() -> Backoff {
        Backoff { initial_ms: 1000, max_ms: 30_000 }
    }
}

impl Backoff {
    /// The wait after the `attempt`th delivery (from 1) failed.
    pub fn delay(&self, attempt: u64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(63) as u32;
        let ms = self.initial_ms.saturating_mul(1u64 << doublings);
        Duration::from_millis(ms.min(self.max_ms))
    }

    /// A backoff a user gives, either part unset for the default; errors
    /// name the field under `prefix` (`retry`).
    pub fn checked(
        prefix: &str,
        initial: Option<&prost_types::Duration>,
        max: Option<&prost_types::Duration>,
    ) -> Result<Backoff, FieldViolation> {
        let read = |name: &str, d: Option<&prost_types::Duration>, most: u64| -> Result<Option<u64>, FieldViolation> {
            let Some(d) = d else { return Ok(None) };
            match checked_duration_ms(d) {
                Some(ms) if ms <= most => Ok(Some(ms)),
                _ => Err(FieldViolation::new(
                    format!("{prefix}.{name}"),
                    format!("must be a duration from 0 s to {} s", most / 1000),
                )),
            }
        };
        let initial_ms = read("initial_backoff", initial, MOST_INITIAL_MS)?.unwrap_or(Backoff::default().initial_ms);
        let max_ms = match read("max_backoff", max, MOST_MAX_MS)? {
            Some(ms) if ms < initial_ms => {
                return Err(FieldViolation::new(
                    format!("{prefix}.max_backoff"),
                    format!("must be at least initial_backoff ({} ms), got {ms} ms", initial_ms),
                ));
            }
            Some(ms) => ms,
            None => Backoff::default().max_ms.max(initial_ms),
        };
        Ok(Backoff { initial_ms, max_ms })
    }

    /// The backoff a worker is told, as the two durations of its assignment.
    pub fn to_proto(self) -> (prost_types::Duration, prost_types::Duration) {
        (duration_ms(self.initial_ms), duration_ms(self.max_ms))
    }

    /// The backoff of an assignment; an unset part is the default's.
    pub fn from_proto(initial: Option<&prost_types::Duration>, max: Option<&prost_types::Duration>) -> Backoff {
        let default = Backoff::default();
        let initial_ms = initial.map_or(default.initial_ms, duration_to_ms);
        Backoff { initial_ms, max_ms: max.map_or(default.max_ms.max(initial_ms), duration_to_ms) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> prost_types::Duration {
        prost_types::Duration { seconds: s, nanos: 0 }
    }

    #[test]
    fn the_wait_doubles_from_the_initial_up_to_the_ceiling() {
        let default = Backoff::default();
        let waits: Vec<u64> = (1..=8).map(|a| default.delay(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        let custom = Backoff { initial_ms: 250, max_ms: 1_000 };
        assert_eq!(custom.delay(1), Duration::from_millis(250));
        assert_eq!(custom.delay(3), Duration::from_millis(1_000));
        assert_eq!(custom.delay(u64::MAX), Duration::from_millis(1_000), "no overflow");
        assert_eq!(Backoff { initial_ms: 0, max_ms: 0 }.delay(5), Duration::ZERO);
    }

    #[test]
    fn a_users_backoff_is_checked_naming_the_field() {
        assert_eq!(Backoff::checked("retry", None, None), Ok(Backoff::default()));
        assert_eq!(
            Backoff::checked("retry", Some(&secs(60)), None),
            Ok(Backoff { initial_ms: 60_000, max_ms: 60_000 }),
            "the default ceiling rises to a longer initial wait"
        );
        assert_eq!(
            Backoff::checked("retry", Some(&secs(2)), Some(&secs(120))),
            Ok(Backoff { initial_ms: 2_000, max_ms: 120_000 })
        );
        for (initial, max, field) in [
            (Some(secs(-1)), None, "retry.initial_backoff"),
            (Some(secs(601)), None, "retry.initial_backoff"),
            (None, Some(secs(3601)), "retry.max_backoff"),
            (Some(secs(10)), Some(secs(5)), "retry.max_backoff"),
        ] {
            let err = Backoff::checked("retry", initial.as_ref(), max.as_ref()).expect_err("refused");
            assert_eq!(err.field, field);
        }
    }

    #[test]
    fn an_assignment_carries_the_backoff_both_ways() {
        let backoff = Backoff { initial_ms: 1_500, max_ms: 9_000 };
        let (initial, max) = backoff.to_proto();
        assert_eq!(Backoff::from_proto(Some(&initial), Some(&max)), backoff);
        assert_eq!(Backoff::from_proto(None, None), Backoff::default(), "an older scheduler's assignment");
    }
}
