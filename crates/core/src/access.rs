//! A job's own S3 access: the credentials, region and endpoint its inputs
//! are read with. The secret is never printed; it is sealed
//! ([`crate::sealed`]) before it is stored.

use serde::{Deserialize, Serialize};

use crate::FieldViolation;
use batchmill_proto::jobs::v1 as pb;
use batchmill_proto::lister::v1 as lister;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Access {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub endpoint: String,
}

impl std::fmt::Debug for S3Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Access")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl S3Access {
    /// The credentials of a submission, checked; `field` names them.
    pub fn from_request(field: &str, c: &pb::S3Credentials) -> Result<S3Access, FieldViolation> {
        if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
            return Err(FieldViolation::new(field, "needs both access_key_id and secret_access_key"));
        }
        if !(c.endpoint.is_empty() || c.endpoint.starts_with("http://") || c.endpoint.starts_with("https://")) {
            return Err(FieldViolation::new(format!("{field}.endpoint"), "must be an http:// or https:// URL"));
        }
        Ok(S3Access {
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            region: c.region.clone(),
            endpoint: c.endpoint.clone(),
        })
    }

    /// As the lister and workers are told it.
    pub fn to_pb(&self) -> lister::S3Access {
        lister::S3Access {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
        }
    }

    pub fn from_pb(a: &lister::S3Access) -> S3Access {
        S3Access {
            access_key_id: a.access_key_id.clone(),
            secret_access_key: a.secret_access_key.clone(),
            region: a.region.clone(),
            endpoint: a.endpoint.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_never_printed_and_both_keys_are_needed() {
        let c =
            pb::S3Credentials { access_key_id: "AK".into(), secret_access_key: "s3cr3t".into(), ..Default::default() };
        let access = S3Access::from_request("s3_credentials", &c).expect("valid");
        assert!(!format!("{access:?}").contains("s3cr3t"));
        assert_eq!(S3Access::from_pb(&access.to_pb()), access);
        let half = pb::S3Credentials { access_key_id: "AK".into(), ..Default::default() };
        assert_eq!(
            S3Access::from_request("s3_credentials", &half).err().map(|e| e.field),
            Some("s3_credentials".into())
        );
        let bad = pb::S3Credentials { endpoint: "ftp://x".into(), ..c };
        assert_eq!(
            S3Access::from_request("s3_credentials", &bad).err().map(|e| e.field),
            Some("s3_credentials.endpoint".into())
        );
    }
}
