//! The gateway's parsers of untrusted bytes, as the fuzz targets drive them
//! (`fuzz/`, and `crates/fuzzing` on stable): each takes any bytes and must
//! return, whatever they hold.

use bytes::Bytes;

use crate::rest::Transcoder;

/// The methods a REST request may have; the first byte of the input picks one.
const METHODS: [http::Method; 5] =
    [http::Method::GET, http::Method::POST, http::Method::DELETE, http::Method::PATCH, http::Method::PUT];

/// A REST request through the transcoder: `<method byte><path>?<query>\n<body>`.
/// True when it became an RPC's request.
pub fn rest(transcoder: &Transcoder, data: &[u8]) -> bool {
    let Some((&pick, rest)) = data.split_first() else { return false };
    let method = &METHODS[usize::from(pick) % METHODS.len()];
    let (head, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let (path, query) = match head.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (head.as_ref(), None),
    };
    transcoder.transcode(method, path, query, &Bytes::copy_from_slice(body)).is_ok()
}

/// A Cortex job submission (`POST /<api>`), its body checked and made a
/// native request, which is then checked as every submission is.
pub fn cortex(data: &[u8]) -> bool {
    let Some(mut request) = crate::cortex::request_of(data, "echo") else { return false };
    batchmill_core::JobSpec::check(&mut request).is_ok()
}

/// A Modzy job submission (`POST /api/jobs`).
pub fn modzy(data: &[u8]) -> bool {
    crate::modzy::submit::parse(data).is_ok()
}
