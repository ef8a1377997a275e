//! `s3://bucket/prefix` locations.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a text is not an S3 location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("{0:?} is not an s3:// URI")]
    NotS3(String),
    #[error("{0:?} is not a valid bucket name")]
    BadBucket(String),
}

/// An S3 location: a bucket and a key or key prefix (no leading slash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

impl S3Uri {
    /// Parses `s3://bucket[/key]`.
    pub fn parse(s: &str) -> Result<S3Uri, UriError> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| UriError::NotS3(s.to_owned()))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(UriError::BadBucket(bucket.to_owned()));
        }
        Ok(S3Uri { bucket: bucket.to_owned(), key: key.to_owned() })
    }

    /// This location with `/name` appended to its key.
    pub fn join(&self, name: &str) -> S3Uri {
        let key =
            if self.key.is_empty() { name.to_owned() } else { format!("{}/{name}", self.key.trim_end_matches('/')) };
        S3Uri { bucket: self.bucket.clone(), key }
    }
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins() {
        let uri = S3Uri::parse("s3://results/runs/").unwrap();
        assert_eq!(uri.bucket, "results");
        assert_eq!(uri.join("job1").join("job1-0.jsonl").to_string(), "s3://results/runs/job1/job1-0.jsonl");
        assert_eq!(S3Uri::parse("s3://bucket").unwrap().join("k").to_string(), "s3://bucket/k");
    }

    #[test]
    fn rejects_bad_uris() {
        assert!(S3Uri::parse("http://x/y").is_err());
        assert!(S3Uri::parse("s3://").is_err());
        assert!(S3Uri::parse("s3://UPPER/x").is_err());
    }
}
