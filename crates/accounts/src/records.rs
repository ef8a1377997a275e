//! What is stored in etcd, as JSON: an account (`/batchmill/accounts/<id>`)
//! and a key (`/batchmill/keys/<key_id>`, with the key's hash, never the
//! key). Fields added later come with `#[serde(default)]`, so records
//! written before them still read: admission quotas and a priority ceiling
//! join [`Limits`] that way.

use batchmill_core::Role;
use serde::{Deserialize, Serialize};

pub const ACCOUNTS_PREFIX: &str = "/batchmill/accounts/";
pub const KEYS_PREFIX: &str = "/batchmill/keys/";

pub fn account_key(account_id: &str) -> String {
    format!("{ACCOUNTS_PREFIX}{account_id}")
}

pub fn key_key(key_id: &str) -> String {
    format!("{KEYS_PREFIX}{key_id}")
}

/// What an account may use at once; 0 is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Unended jobs.
    #[serde(default)]
    pub max_concurrent_jobs: u32,
    /// Workers over all unended jobs, each job counted at its `workers`.
    #[serde(default)]
    pub max_workers: u32,
    /// The highest priority its jobs may ask for.
    #[serde(default)]
    pub max_priority: u32,
    /// Per admission queue, the most capacity its admitted jobs may hold
    /// (0 or absent: no quota).
    #[serde(default)]
    pub queue_quotas: std::collections::BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub account_id: String,
    #[serde(default)]
    pub limits: Limits,
    pub create_ms: u64,
    #[serde(default)]
    pub revoke_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub account_id: String,
    pub role: Role,
    #[serde(default)]
    pub description: String,
    /// Hex SHA-256 of the whole key.
    pub hash: String,
    pub create_ms: u64,
    #[serde(default)]
    pub revoke_ms: Option<u64>,
}
