//! The cluster's own places in S3 (every job's results, staged inputs and
//! uploads, deployed pipelines' files), fenced off from what a job may name.
//! A job that brings no S3 credentials of its own reads its inputs with the
//! cluster's; without the fence it could then read another tenant's results
//! or uploads, or write its results over a pipeline's files.
//!
//! - Reads with the cluster's credentials may not reach into a fenced
//!   place, except the reading account's own uploads
//!   (`<staging>/uploads/<account>/`).
//! - Results may go under the cluster's results place (each job writes
//!   under its own id there), but not into staging or pipelines.

use crate::{FieldViolation, S3Uri};

/// The fenced places of one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    results: S3Uri,
    staging: S3Uri,
    pipelines: S3Uri,
}

impl Fence {
    pub fn new(results: S3Uri, staging: S3Uri, pipelines: S3Uri) -> Fence {
        Fence { results, staging, pipelines }
    }

    /// Where `account`'s uploaded inputs are kept.
    pub fn uploads(staging: &S3Uri, account: &str) -> S3Uri {
        staging.join("uploads").join(account)
    }

    fn places(&self) -> [(&S3Uri, &'static str); 3] {
        [
            (&self.results, "other jobs' results"),
            (&self.staging, "other jobs' inputs and uploads"),
            (&self.pipelines, "deployed pipelines' files"),
        ]
    }

    /// Refuses a read, given in request field `field`, of `location` (an
    /// object or a prefix) with the cluster's credentials by `account`.
    pub fn check_read(&self, field: &str, location: &S3Uri, account: &str) -> Result<(), FieldViolation> {
        if within(location, &Fence::uploads(&self.staging, account)) {
            return Ok(());
        }
        for (place, what) in self.places() {
            if overlaps(location, place) {
                return Err(FieldViolation::new(
                    field,
                    format!(
                        "{location} reaches into {}/, which holds {what}: name a location outside it, or give \
                         s3_credentials of your own",
                        place.to_string().trim_end_matches('/')
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Refuses results location `output` (request field `field`) inside
    /// staging or pipelines.
    pub fn check_output(&self, field: &str, output: &S3Uri) -> Result<(), FieldViolation> {
        for (place, what) in &self.places()[1..] {
            // Results go under <output>/<job id>/.
            if output.bucket == place.bucket && folder(&output.key).starts_with(&folder(&place.key)) {
                return Err(FieldViolation::new(
                    field,
                    format!(
                        "{output} reaches into {}/, which holds {what}: results may not go there",
                        place.to_string().trim_end_matches('/')
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `key` as a folder: with one trailing `/`, empty for the whole bucket.
fn folder(key: &str) -> String {
    let key = key.trim_end_matches('/');
    if key.is_empty() { String::new() } else { format!("{key}/") }
}

/// Whether `location` lies inside folder `place`.
fn within(location: &S3Uri, place: &S3Uri) -> bool {
    location.bucket == place.bucket && location.key.starts_with(&folder(&place.key))
}

/// Whether a listing of prefix `location` could name anything in folder
/// `place`: it lies inside it, or the place lies under it.
fn overlaps(location: &S3Uri, place: &S3Uri) -> bool {
    within(location, place) || (location.bucket == place.bucket && folder(&place.key).starts_with(&location.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> S3Uri {
        S3Uri::parse(s).expect("uri")
    }

    fn fence() -> Fence {
        Fence::new(uri("s3://bkt/results"), uri("s3://bkt/staging"), uri("s3://bkt/pipelines"))
    }

    #[test]
    fn reads_outside_the_fenced_places_pass() {
        let fence = fence();
        for ok in ["s3://bkt/data/", "s3://bkt/resultsx/a.json", "s3://other/results/", "s3://bkt/data/results/x"] {
            assert_eq!(fence.check_read("f", &uri(ok), "acme"), Ok(()), "{ok}");
        }
    }

    #[test]
    fn reads_into_or_around_a_fenced_place_are_refused_naming_the_field_and_place() {
        let fence = fence();
        for (bad, place) in [
            ("s3://bkt/results/", "s3://bkt/results/"),
            ("s3://bkt/results/j-1/b.jsonl", "s3://bkt/results/"),
            ("s3://bkt/res", "s3://bkt/results/"),
            ("s3://bkt/", "s3://bkt/results/"),
            ("s3://bkt/staging/j-1/items.ndjson", "s3://bkt/staging/"),
            ("s3://bkt/staging/uploads/other/u1/", "s3://bkt/staging/"),
            ("s3://bkt/pipelines/p/v1/", "s3://bkt/pipelines/"),
        ] {
            let error = fence.check_read("delimited_files.s3_paths", &uri(bad), "acme").expect_err(bad);
            assert_eq!(error.field, "delimited_files.s3_paths");
            assert!(error.description.contains(place), "{bad}: {error}");
        }
    }

    #[test]
    fn an_account_reads_its_own_uploads_only() {
        let fence = fence();
        let own = Fence::uploads(&uri("s3://bkt/staging"), "acme").join("u1/a/doc/");
        assert_eq!(own.to_string(), "s3://bkt/staging/uploads/acme/u1/a/doc/");
        assert_eq!(fence.check_read("f", &own, "acme"), Ok(()));
        assert!(fence.check_read("f", &own, "globex").is_err());
        assert!(fence.check_read("f", &uri("s3://bkt/staging/uploads/acme"), "acme").is_err(), "no trailing slash");
    }

    #[test]
    fn results_may_go_under_results_but_not_into_staging_or_pipelines() {
        let fence = fence();
        for ok in ["s3://bkt/results", "s3://bkt/results/mine", "s3://bkt/out", "s3://bkt/", "s3://bkt/pipe"] {
            assert_eq!(fence.check_output("output_uri", &uri(ok)), Ok(()), "{ok}");
        }
        for bad in ["s3://bkt/staging/x", "s3://bkt/pipelines", "s3://bkt/staging/"] {
            assert_eq!(fence.check_output("output_uri", &uri(bad)).expect_err(bad).field, "output_uri");
        }
    }
}
