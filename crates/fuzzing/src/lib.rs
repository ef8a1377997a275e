//! The fuzz targets: each parser that reads bytes from outside the cluster
//! (a request, an object, another process) as one function of any bytes,
//! which must return whatever they hold: no panic, no hang, no allocation
//! out of proportion to its input.
//!
//! `fuzz/` (cargo-fuzz, nightly) drives them coverage-guided; on stable,
//! this crate's test runs each over its checked-in corpus
//! (`fuzz/corpus/<target>/`) and over inputs mutated from it, for a bounded
//! time.

use std::sync::OnceLock;

use batchmill_gateway::rest::Transcoder;
use prost::Message;

/// A fuzz target: its name (its corpus directory) and its entry point,
/// which says whether the input was accepted (for the corpus run's counts).
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> bool,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target { name: "rest", run: rest },
    Target { name: "cortex", run: batchmill_gateway::fuzz::cortex },
    Target { name: "modzy", run: batchmill_gateway::fuzz::modzy },
    Target { name: "glob", run: glob },
    Target { name: "ndjson", run: ndjson },
    Target { name: "python_frame", run: python_frame },
    Target { name: "job_spec", run: job_spec },
];

/// The target named `name`.
///
/// # Panics
/// When there is none (a cargo-fuzz target names one of [`TARGETS`]).
pub fn target(name: &str) -> Target {
    *TARGETS.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no fuzz target {name:?}"))
}

/// A REST request through the gateway's transcoder (see
/// `batchmill_gateway::fuzz::rest` for the input's layout).
fn rest(data: &[u8]) -> bool {
    static TRANSCODER: OnceLock<Transcoder> = OnceLock::new();
    let transcoder = TRANSCODER.get_or_init(|| {
        Transcoder::new(batchmill_gateway::PUBLIC_SERVICES).unwrap_or_else(|e| panic!("the public routes: {e}"))
    });
    batchmill_gateway::fuzz::rest(transcoder, data)
}

/// Globs as a submission gives them: the first line an include, the second
/// an exclude, every further line a path to match.
fn glob(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let includes: Vec<String> = lines.next().into_iter().map(str::to_owned).collect();
    let excludes: Vec<String> = lines.next().into_iter().filter(|l| !l.is_empty()).map(str::to_owned).collect();
    let Ok(filter) = batchmill_core::glob::Filter::new(&includes, &excludes) else { return false };
    // Every path is matched, not only up to the first accepted.
    lines.filter(|path| filter.accepts(path)).count() > 0
}

/// An NDJSON object as the lister reads it.
fn ndjson(data: &[u8]) -> bool {
    batchmill_lister::lines::items_of(data).is_ok()
}

/// A reply frame from a Python predictor process.
fn python_frame(data: &[u8]) -> bool {
    batchmill_worker::python::read_reply(&mut &data[..]).is_ok()
}

/// A `SubmitJob` request as gRPC delivers it (protobuf), checked as the
/// gateway checks it and made a job spec as the scheduler does.
fn job_spec(data: &[u8]) -> bool {
    let Ok(mut request) = batchmill_proto::jobs::v1::SubmitJobRequest::decode(data) else { return false };
    batchmill_core::JobSpec::check(&mut request).is_ok() && batchmill_core::JobSpec::try_from(request).is_ok()
}
