//! The write a submission's output location must take before the job is
//! accepted. A location whose results could not be written (no such bucket,
//! writes refused) is refused now, naming `output_uri`, instead of failing
//! every delivery of every batch once workers reach it. A location that
//! took a probe lately is not probed again (a user submits many jobs to one
//! place); S3 being unreachable is the cluster's trouble, not the request's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use batchmill_blob::{BlobError, ObjectStore};
use batchmill_core::{FieldViolation, S3Uri};
use bytes::Bytes;

use crate::SchedulerError;

/// Where under an output location the probe object goes; it is deleted
/// again where the store allows.
pub const PROBE_DIR: &str = ".batchmill-write-check";

/// How long a location that took a probe counts as writable.
const FRESH: Duration = Duration::from_secs(60);

/// Most locations remembered; past that the oldest are forgotten.
const REMEMBERED: usize = 1_024;

/// The locations that took a probe lately.
#[derive(Default)]
pub struct Writable {
    checked: Mutex<HashMap<String, Instant>>,
}

impl Writable {
    /// Whether results can be written under `output`, by writing (and then
    /// deleting) one empty object there named by `tag`. `field` names the
    /// request field an error is about.
    pub async fn check(
        &self,
        store: &dyn ObjectStore,
        output: &S3Uri,
        tag: &str,
        field: &str,
    ) -> Result<(), SchedulerError> {
        let location = output.to_string();
        if self.lock().get(&location).is_some_and(|at| at.elapsed() < FRESH) {
            return Ok(());
        }
        let probe = output.join(PROBE_DIR).join(tag);
        match store.put(&probe.bucket, &probe.key, Bytes::new(), "application/octet-stream").await {
            Ok(()) => {}
            Err(BlobError::NoSuchBucket { bucket }) => {
                let message = format!("bucket {bucket:?} does not exist, so no result could be written there");
                return Err(FieldViolation::new(field, message).into());
            }
            Err(e) if !e.is_transient() => {
                let message = format!("results cannot be written there: {e}");
                return Err(FieldViolation::new(field, message).into());
            }
            Err(e) => return Err(SchedulerError::OutputUnchecked(e)),
        }
        if let Err(e) = store.delete(&probe.bucket, &probe.key).await {
            // Writing is what results need; a location may well refuse
            // deletes. The probe then stays, outside any job's results.
            tracing::debug!(probe = %probe, error = %e, "the output probe could not be deleted");
        }
        let mut checked = self.lock();
        if checked.len() >= REMEMBERED {
            checked.retain(|_, at| at.elapsed() < FRESH);
            if checked.len() >= REMEMBERED {
                checked.clear();
            }
        }
        checked.insert(location, Instant::now());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use batchmill_blob::mem::MemBlob;

    use super::*;

    fn uri(s: &str) -> S3Uri {
        S3Uri::parse(s).expect("a valid URI")
    }

    #[tokio::test]
    async fn a_missing_bucket_is_refused_naming_the_field_and_a_writable_place_leaves_nothing() {
        let store = MemBlob::default();
        store.ensure_bucket("out").await.expect("bucket");
        let writable = Writable::default();
        let refused = writable.check(&store, &uri("s3://nowhere/results"), "j1", "output_uri").await;
        match refused {
            Err(SchedulerError::BadRequest(v)) => {
                assert_eq!(v.field, "output_uri");
                assert!(v.description.contains("\"nowhere\" does not exist"), "{}", v.description);
            }
            other => panic!("a missing bucket is a bad request, got {other:?}"),
        }
        let before = store.puts();
        writable.check(&store, &uri("s3://out/results"), "j2", "output_uri").await.expect("writable");
        assert!(store.objects().is_empty(), "the probe is deleted: {:?}", store.objects().keys());
        assert_eq!(store.puts(), before + 1, "one probe write");
        writable.check(&store, &uri("s3://out/results"), "j3", "output_uri").await.expect("writable");
        assert_eq!(store.puts(), before + 1, "a location checked lately is not probed again");
    }

    #[tokio::test]
    async fn s3_being_down_is_unavailable_not_the_requests_fault() {
        let store = MemBlob::default();
        store.ensure_bucket("out").await.expect("bucket");
        store.set_down(true);
        let got = Writable::default().check(&store, &uri("s3://out/r"), "j", "output_uri").await;
        assert!(matches!(got, Err(SchedulerError::OutputUnchecked(ref e)) if e.is_transient()), "{got:?}");
    }
}
