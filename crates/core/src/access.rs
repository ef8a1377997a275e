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

/// What of a job's input is secret: its own S3 access and its database
/// password. Sealed together in the job's record.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    #[serde(default)]
    pub s3: Option<S3Access>,
    #[serde(default)]
    pub sql_password: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("s3", &self.s3)
            .field("sql_password", &self.sql_password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self.s3.is_none() && self.sql_password.is_none()
    }
}

/// A PostgreSQL source: where, as whom, and what (the password is in
/// [`Secrets`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlSource {
    /// postgresql://host:port/database.
    pub url: String,
    pub username: String,
    pub query: String,
}

impl SqlSource {
    /// A submission's SQL source and password, checked; errors name the
    /// field under `field`.
    pub fn from_request(field: &str, q: &pb::SqlQuery) -> Result<(SqlSource, String), FieldViolation> {
        let url = q.url.strip_prefix("jdbc:").unwrap_or(&q.url);
        let Some(rest) = url.strip_prefix("postgresql://") else {
            return Err(FieldViolation::new(
                format!("{field}.url"),
                format!("{:?} is not a PostgreSQL URL: use jdbc:postgresql://host:port/database", q.url),
            ));
        };
        if rest.contains('@') || rest.is_empty() || rest.starts_with('/') {
            return Err(FieldViolation::new(
                format!("{field}.url"),
                "must be jdbc:postgresql://host:port/database, with the user and password in their own fields",
            ));
        }
        if q.username.is_empty() {
            return Err(FieldViolation::new(format!("{field}.username"), "must be set"));
        }
        if q.query.trim().is_empty() {
            return Err(FieldViolation::new(format!("{field}.query"), "must be set"));
        }
        Ok((
            SqlSource { url: url.to_owned(), username: q.username.clone(), query: q.query.clone() },
            q.password.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_sources_take_postgresql_urls_only_and_name_what_is_wrong() {
        let q = |url: &str| pb::SqlQuery {
            url: url.into(),
            username: "u".into(),
            password: "pw".into(),
            query: "select 1".into(),
            batch_size: 1,
        };
        let (source, password) =
            SqlSource::from_request("sql_query", &q("jdbc:postgresql://db:5432/app")).expect("valid");
        assert_eq!((source.url.as_str(), password.as_str()), ("postgresql://db:5432/app", "pw"));
        for bad in ["jdbc:mysql://db/app", "postgres://db/app", "jdbc:postgresql://u:p@db/app", "jdbc:postgresql://"] {
            assert_eq!(
                SqlSource::from_request("sql_query", &q(bad)).err().map(|e| e.field),
                Some("sql_query.url".into()),
                "{bad}"
            );
        }
        let secrets = Secrets { s3: None, sql_password: Some("pw-123".into()) };
        assert!(!format!("{secrets:?}").contains("pw-123"));
    }

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
