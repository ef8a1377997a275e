//! Injected faults, for tests and the chaos suite: a share of object writes
//! (PUTs: whole objects and multipart parts) answered with a 500
//! `InternalError`, as S3 answers now and then, without reaching the store.
//! The share is set at start (`--fail-puts`) or at any time through the
//! metrics address (`POST /faults?put_error_rate=0.1`); which writes fail
//! follows a seed (`--fault-seed`), so a run can be repeated.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use http::{Method, Request, Response, StatusCode};

/// Rates are kept in parts per million.
const MILLION: u32 = 1_000_000;

pub struct Faults {
    put_error_ppm: AtomicU32,
    rng: Mutex<fastrand::Rng>,
    injected: AtomicU64,
}

impl Faults {
    pub fn new(put_error_rate: f64, seed: u64) -> Faults {
        let faults = Faults {
            put_error_ppm: AtomicU32::new(0),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            injected: AtomicU64::new(0),
        };
        faults.set_put_error_rate(put_error_rate);
        faults
    }

    /// Sets the share of PUTs that fail, from 0 to 1.
    pub fn set_put_error_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * f64::from(MILLION)).round() as u32;
        self.put_error_ppm.store(ppm, Ordering::Relaxed);
    }

    pub fn put_error_rate(&self) -> f64 {
        f64::from(self.put_error_ppm.load(Ordering::Relaxed)) / f64::from(MILLION)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The 500 that `request` gets instead of an answer, if it is a write
    /// picked to fail.
    pub fn inject<B, R: From<String>>(&self, request: &Request<B>) -> Option<Response<R>> {
        let ppm = self.put_error_ppm.load(Ordering::Relaxed);
        if ppm == 0 || request.method() != Method::PUT {
            return None;
        }
        let roll = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner).u32(..MILLION);
        if roll >= ppm {
            return None;
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(internal_error())
    }

    /// Answers the control request `POST /faults?put_error_rate=R` (and
    /// `GET /faults`): the rate now, as text, or why the request is wrong.
    pub fn control(&self, method: &Method, query: Option<&str>) -> Result<String, ControlError> {
        if *method == Method::POST {
            let rate = query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| pair.strip_prefix("put_error_rate="))
                .ok_or(ControlError::NoRate)?;
            let rate: f64 = rate.parse().map_err(|_| ControlError::NotANumber(rate.to_owned()))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(ControlError::OutOfRange(rate));
            }
            self.set_put_error_rate(rate);
        }
        Ok(format!("put_error_rate {}\ninjected {}\n", self.put_error_rate(), self.injected()))
    }
}

/// Why a control request is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlError {
    NoRate,
    NotANumber(String),
    OutOfRange(f64),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::NoRate => write!(f, "POST /faults takes ?put_error_rate=<0 to 1>"),
            ControlError::NotANumber(rate) => write!(f, "put_error_rate {rate:?} is not a number"),
            ControlError::OutOfRange(rate) => write!(f, "put_error_rate {rate} is not between 0 and 1"),
        }
    }
}

/// S3's answer to a request it failed on its side.
fn internal_error<R: From<String>>() -> Response<R> {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>\
                <Message>We encountered an internal error. Please try again. (injected fault)</Message></Error>";
    let mut response = Response::new(R::from(body.to_owned()));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/xml"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put() -> Request<()> {
        Request::builder().method(Method::PUT).uri("/b/k").body(()).unwrap_or_default()
    }

    #[test]
    fn a_share_of_puts_fails_repeatably_and_nothing_else() {
        let faults = Faults::new(0.1, 7);
        let failed: Vec<bool> = (0..10_000).map(|_| faults.inject::<_, String>(&put()).is_some()).collect();
        let share = failed.iter().filter(|f| **f).count();
        assert!((800..1200).contains(&share), "about one in ten: {share}");
        assert_eq!(faults.injected(), share as u64);
        let again = Faults::new(0.1, 7);
        assert!(
            failed.iter().all(|f| again.inject::<_, String>(&put()).is_some() == *f),
            "the same seed, the same faults"
        );
        let get = Request::builder().method(Method::GET).uri("/b/k").body(()).unwrap_or_default();
        assert!((0..1000).all(|_| faults.inject::<_, String>(&get).is_none()), "reads are left alone");
    }

    #[test]
    fn the_rate_is_set_through_the_control_request_and_checked() {
        let faults = Faults::new(0.0, 1);
        assert!(faults.inject::<_, String>(&put()).is_none());
        assert_eq!(
            faults.control(&Method::POST, Some("put_error_rate=1")),
            Ok("put_error_rate 1\ninjected 0\n".into())
        );
        assert!(faults.inject::<_, String>(&put()).is_some());
        assert!(
            faults
                .control(&Method::POST, Some("put_error_rate=2"))
                .unwrap_err()
                .to_string()
                .contains("between 0 and 1")
        );
        assert!(faults.control(&Method::POST, None).unwrap_err().to_string().contains("put_error_rate"));
        assert_eq!(faults.control(&Method::GET, None), Ok("put_error_rate 1\ninjected 1\n".into()));
    }
}
