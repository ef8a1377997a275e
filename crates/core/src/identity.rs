//! Who is calling: the identity the gateway establishes from an API key and
//! passes to the services behind it in gRPC metadata, and who owns what.
//!
//! Only the gateway sets these headers. It builds every onward request
//! afresh, so a client's own `x-batchmill-*` headers never pass it; the
//! services behind it are reachable only from inside the deployment.

use serde::{Deserialize, Serialize};
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::ErrorCode;

/// Metadata headers that carry the caller from the gateway onward.
pub const ACCOUNT_HEADER: &str = "x-batchmill-account";
pub const KEY_HEADER: &str = "x-batchmill-key-id";
pub const ROLE_HEADER: &str = "x-batchmill-role";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees what its own key created.
    Member,
    /// Manages its account's keys; sees everything of its account.
    AccountAdmin,
    /// Manages accounts; sees everything.
    ClusterAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::AccountAdmin => "account_admin",
            Role::ClusterAdmin => "cluster_admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "account_admin" => Some(Role::AccountAdmin),
            "cluster_admin" => Some(Role::ClusterAdmin),
            _ => None,
        }
    }
}

/// Who created an object: the account and the key id (the public part of
/// the key). Jobs record it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Owner {
    pub account: String,
    pub key_id: String,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub account: String,
    pub key_id: String,
    pub role: Role,
}

/// A request that reached a service without the gateway's identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no caller identity: calls reach batchmill through its gateway, with an API key")]
pub struct NoIdentity;

impl From<NoIdentity> for tonic::Status {
    fn from(e: NoIdentity) -> tonic::Status {
        tonic::Status::new(ErrorCode::Unauthenticated.grpc(), e.to_string())
    }
}

impl Caller {
    /// What this caller creates is owned by its account and key.
    pub fn owner(&self) -> Owner {
        Owner { account: self.account.clone(), key_id: self.key_id.clone() }
    }

    /// Whether this caller may see an object `owner` created: a member sees
    /// its own key's, an account admin its account's, a cluster admin all.
    pub fn sees(&self, owner: &Owner) -> bool {
        match self.role {
            Role::ClusterAdmin => true,
            Role::AccountAdmin => self.account == owner.account,
            Role::Member => self.account == owner.account && self.key_id == owner.key_id,
        }
    }

    /// Whether this caller may see everything of `account`.
    pub fn administers(&self, account: &str) -> bool {
        match self.role {
            Role::ClusterAdmin => true,
            Role::AccountAdmin => self.account == account,
            Role::Member => false,
        }
    }

    /// Writes this caller into onward metadata, replacing what was there.
    pub fn write(&self, metadata: &mut MetadataMap) {
        for (header, value) in
            [(ACCOUNT_HEADER, &*self.account), (KEY_HEADER, &*self.key_id), (ROLE_HEADER, self.role.as_str())]
        {
            // Ids are checked to be plain ASCII when created, so this holds.
            if let Ok(v) = MetadataValue::try_from(value) {
                metadata.insert(header, v);
            }
        }
    }

    /// The caller the gateway passed on.
    pub fn read(metadata: &MetadataMap) -> Result<Caller, NoIdentity> {
        let get = |h: &str| metadata.get(h).and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty());
        let account = get(ACCOUNT_HEADER).ok_or(NoIdentity)?.to_owned();
        let key_id = get(KEY_HEADER).ok_or(NoIdentity)?.to_owned();
        let role = get(ROLE_HEADER).and_then(Role::parse).ok_or(NoIdentity)?;
        Ok(Caller { account, key_id, role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(account: &str, key: &str, role: Role) -> Caller {
        Caller { account: account.into(), key_id: key.into(), role }
    }

    #[test]
    fn members_see_their_key_admins_their_account_cluster_admins_all() {
        let own = Owner { account: "a".into(), key_id: "k1".into() };
        assert!(caller("a", "k1", Role::Member).sees(&own));
        assert!(!caller("a", "k2", Role::Member).sees(&own));
        assert!(!caller("b", "k1", Role::Member).sees(&own));
        assert!(caller("a", "k2", Role::AccountAdmin).sees(&own));
        assert!(!caller("b", "k3", Role::AccountAdmin).sees(&own));
        assert!(caller("root", "k4", Role::ClusterAdmin).sees(&own));
        assert!(caller("a", "k2", Role::AccountAdmin).administers("a"));
        assert!(!caller("a", "k1", Role::Member).administers("a"));
    }

    #[test]
    fn a_caller_survives_metadata_and_a_missing_header_is_no_identity() {
        let c = caller("acme", "AbC123", Role::AccountAdmin);
        let mut md = MetadataMap::new();
        c.write(&mut md);
        assert_eq!(Caller::read(&md), Ok(c));
        md.remove(ROLE_HEADER);
        assert_eq!(Caller::read(&md), Err(NoIdentity));
        md.insert(ROLE_HEADER, MetadataValue::from_static("root"));
        assert_eq!(Caller::read(&md), Err(NoIdentity));
    }
}
