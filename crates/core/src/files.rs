//! Files of the Files API: uploaded once per account (`POST /v1/files`),
//! kept in the cluster's staging area at `files/<account>/<file_id>`, and
//! recorded in etcd at `/batchmill/files/<account>/<file_id>`. Jobs take
//! them by id as their inputs.

use serde::{Deserialize, Serialize};

use crate::FieldViolation;

/// Where file records are kept in etcd.
pub const FILES_PREFIX: &str = "/batchmill/files/";

/// The record key of an account's file.
pub fn file_key(account: &str, file_id: &str) -> String {
    format!("{FILES_PREFIX}{account}/{file_id}")
}

/// The prefix of an account's file records.
pub fn account_prefix(account: &str) -> String {
    format!("{FILES_PREFIX}{account}/")
}

/// A file as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub file_id: String,
    /// The name it was uploaded with.
    pub name: String,
    pub size: u64,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    pub content_type: String,
    /// Where it is kept (`s3://...`).
    pub uri: String,
    pub account: String,
    /// The key id that uploaded it.
    pub key_id: String,
    pub create_ms: u64,
}

impl FileRecord {
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<FileRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A new file id: `file-` and 20 hex digits, time-ordered.
pub fn new_id(unix_ms: u64) -> String {
    format!("file-{:012x}{:08x}", unix_ms & 0xffff_ffff_ffff, fastrand::u32(..))
}

/// Checks a file id given by a user, naming `field`.
pub fn check_id(field: &str, id: &str) -> Result<(), FieldViolation> {
    let hex = id.strip_prefix("file-").unwrap_or_default();
    if hex.len() == 20 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(FieldViolation::new(field, format!("{id:?} is not a file id (file- and 20 hex digits)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_records_round_trip() {
        let id = new_id(1_700_000_000_000);
        check_id("files[0]", &id).unwrap();
        assert_eq!(check_id("files[1]", "file-xyz").unwrap_err().field, "files[1]");
        let record = FileRecord {
            file_id: id.clone(),
            name: "data.ndjson".into(),
            size: 3,
            sha256: "ab".into(),
            content_type: "application/x-ndjson".into(),
            uri: "s3://b/files/acme/x".into(),
            account: "acme".into(),
            key_id: "k".into(),
            create_ms: 1,
        };
        assert_eq!(FileRecord::decode(&record.encode().unwrap()).unwrap(), record);
        assert_eq!(file_key("acme", &id), format!("/batchmill/files/acme/{id}"));
    }
}
