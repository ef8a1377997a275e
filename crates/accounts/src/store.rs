//! The account store: every operation checks the caller's role, then reads
//! or writes the records in etcd. Nothing is cached, so a revoked key is
//! refused on its next call.

use std::sync::Arc;

use batchmill_coord::Kv;
use batchmill_core::time::now_ms;
use batchmill_core::{Caller, FieldViolation, Role};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::AccountError;
use crate::key::{SecretKey, from_authorization};
use crate::records::{ACCOUNTS_PREFIX, AccountRecord, KEYS_PREFIX, KeyRecord, Limits, account_key, key_key};

/// Most characters of a key's description.
const MAX_DESCRIPTION: usize = 200;

/// Accounts and keys in a [`Kv`].
#[derive(Clone)]
pub struct Accounts {
    kv: Arc<dyn Kv>,
}

/// An account id: lowercase letters, digits and '-', 1 to 63 characters,
/// starting with a letter or digit.
pub fn check_account_id(field: &str, id: &str) -> Result<(), FieldViolation> {
    let ok = (1..=63).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!("{id:?} is not an account id: use 1 to 63 lowercase letters, digits and '-'"),
        ))
    }
}

fn not_found(what: impl Into<String>) -> AccountError {
    AccountError::NotFound { what: what.into() }
}

fn cluster_admin(caller: &Caller, what: &str) -> Result<(), AccountError> {
    if caller.role == Role::ClusterAdmin {
        Ok(())
    } else {
        Err(AccountError::PermissionDenied(format!("{what} takes a cluster admin key")))
    }
}

impl Accounts {
    pub fn new(kv: Arc<dyn Kv>) -> Accounts {
        Accounts { kv }
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, AccountError> {
        let Some(bytes) = self.kv.get(key).await? else { return Ok(None) };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AccountError::Corrupt { key: key.to_owned(), message: e.to_string() })
    }

    async fn write<T: Serialize>(&self, key: &str, value: &T) -> Result<(), AccountError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| AccountError::Corrupt { key: key.to_owned(), message: e.to_string() })?;
        Ok(self.kv.put(key, bytes).await?)
    }

    async fn all<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, AccountError> {
        let mut out = Vec::new();
        for (key, bytes) in self.kv.list(prefix).await? {
            out.push(
                serde_json::from_slice(&bytes).map_err(|e| AccountError::Corrupt { key, message: e.to_string() })?,
            );
        }
        Ok(out)
    }

    /// The caller whose key is in `authorization` (`Bearer <key>` or
    /// `ApiKey <key>`). An unknown, wrong or revoked key is refused alike.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AccountError> {
        let Some(text) = authorization.and_then(from_authorization) else {
            return Err(AccountError::Unauthenticated(
                "no API key: send it as `Authorization: Bearer <key>` (or `ApiKey <key>`)",
            ));
        };
        let refused = AccountError::Unauthenticated("the API key is not valid: unknown, mistyped or revoked");
        let Some(key) = SecretKey::parse(text) else { return Err(refused) };
        let Some(record) = self.read::<KeyRecord>(&key_key(key.key_id())).await? else { return Err(refused) };
        if record.revoke_ms.is_some() || !key.matches(&record.hash) {
            return Err(refused);
        }
        Ok(Caller { account: record.account_id, key_id: record.key_id, role: record.role })
    }

    /// The record of the calling key.
    pub async fn caller_key(&self, caller: &Caller) -> Result<KeyRecord, AccountError> {
        self.read(&key_key(&caller.key_id)).await?.ok_or_else(|| not_found(format!("key {}", caller.key_id)))
    }

    /// Creates the first cluster admin: an account and a key, with no
    /// caller. For the deployment's own setup, not the API.
    pub async fn bootstrap(&self, account_id: &str, description: &str) -> Result<SecretKey, AccountError> {
        check_account_id("account_id", account_id)?;
        if self.read::<AccountRecord>(&account_key(account_id)).await?.is_none() {
            let record = AccountRecord {
                account_id: account_id.into(),
                limits: Limits::default(),
                create_ms: now_ms(),
                revoke_ms: None,
            };
            self.write(&account_key(account_id), &record).await?;
        }
        self.new_key(account_id, Role::ClusterAdmin, description).await.map(|(key, _)| key)
    }

    pub async fn create_account(
        &self,
        caller: &Caller,
        account_id: &str,
        limits: Limits,
    ) -> Result<AccountRecord, AccountError> {
        cluster_admin(caller, "creating an account")?;
        check_account_id("account_id", account_id)?;
        if self.read::<AccountRecord>(&account_key(account_id)).await?.is_some() {
            return Err(AccountError::AlreadyExists(account_id.into()));
        }
        let record = AccountRecord { account_id: account_id.into(), limits, create_ms: now_ms(), revoke_ms: None };
        self.write(&account_key(account_id), &record).await?;
        Ok(record)
    }

    /// An account the caller belongs to or administers.
    pub async fn account(&self, caller: &Caller, account_id: &str) -> Result<AccountRecord, AccountError> {
        if caller.role != Role::ClusterAdmin && caller.account != account_id {
            return Err(not_found(format!("account {account_id}")));
        }
        self.limits_of(account_id).await
    }

    /// An account's record, for the services that enforce its limits.
    pub async fn limits_of(&self, account_id: &str) -> Result<AccountRecord, AccountError> {
        self.read(&account_key(account_id)).await?.ok_or_else(|| not_found(format!("account {account_id}")))
    }

    pub async fn list_accounts(&self, caller: &Caller) -> Result<Vec<AccountRecord>, AccountError> {
        cluster_admin(caller, "listing accounts")?;
        self.all(ACCOUNTS_PREFIX).await
    }

    pub async fn set_limits(
        &self,
        caller: &Caller,
        account_id: &str,
        limits: Limits,
    ) -> Result<AccountRecord, AccountError> {
        let mut record = self.account(caller, account_id).await?;
        cluster_admin(caller, "setting an account's limits")?;
        record.limits = limits;
        self.write(&account_key(account_id), &record).await?;
        Ok(record)
    }

    /// Revokes an account and every key of it.
    pub async fn revoke_account(&self, caller: &Caller, account_id: &str) -> Result<AccountRecord, AccountError> {
        let mut record = self.account(caller, account_id).await?;
        cluster_admin(caller, "revoking an account")?;
        if caller.account == account_id {
            return Err(AccountError::PermissionDenied("a cluster admin cannot revoke its own account".into()));
        }
        let now = now_ms();
        record.revoke_ms.get_or_insert(now);
        // Keys first: once the account reads revoked, no key of it works.
        for mut key in self.keys_of(account_id).await? {
            if key.revoke_ms.is_none() {
                key.revoke_ms = Some(now);
                self.write(&key_key(&key.key_id), &key).await?;
            }
        }
        self.write(&account_key(account_id), &record).await?;
        Ok(record)
    }

    async fn keys_of(&self, account_id: &str) -> Result<Vec<KeyRecord>, AccountError> {
        let mut keys: Vec<KeyRecord> = self.all(KEYS_PREFIX).await?;
        keys.retain(|k| k.account_id == account_id);
        Ok(keys)
    }

    /// Checks that `caller` may manage `account_id`'s keys.
    async fn manage(&self, caller: &Caller, account_id: &str) -> Result<AccountRecord, AccountError> {
        let record = self.account(caller, account_id).await?;
        if !caller.administers(account_id) {
            return Err(AccountError::PermissionDenied("managing an account's keys takes an admin key".into()));
        }
        Ok(record)
    }

    /// A new key in `account_id`; the key is returned this once.
    pub async fn create_key(
        &self,
        caller: &Caller,
        account_id: &str,
        role: Role,
        description: &str,
    ) -> Result<(SecretKey, KeyRecord), AccountError> {
        let account = self.manage(caller, account_id).await?;
        if account.revoke_ms.is_some() {
            return Err(AccountError::PermissionDenied(format!("account {account_id} is revoked")));
        }
        if role > caller.role {
            return Err(AccountError::PermissionDenied(format!(
                "a {} key cannot create a {} key",
                caller.role.as_str(),
                role.as_str()
            )));
        }
        if description.chars().count() > MAX_DESCRIPTION {
            return Err(FieldViolation::new("description", format!("is over {MAX_DESCRIPTION} characters")).into());
        }
        self.new_key(account_id, role, description).await
    }

    async fn new_key(
        &self,
        account_id: &str,
        role: Role,
        description: &str,
    ) -> Result<(SecretKey, KeyRecord), AccountError> {
        let key = SecretKey::generate()?;
        let record = KeyRecord {
            key_id: key.key_id().to_owned(),
            account_id: account_id.to_owned(),
            role,
            description: description.to_owned(),
            hash: key.hash(),
            create_ms: now_ms(),
            revoke_ms: None,
        };
        self.write(&key_key(key.key_id()), &record).await?;
        Ok((key, record))
    }

    pub async fn list_keys(&self, caller: &Caller, account_id: &str) -> Result<Vec<KeyRecord>, AccountError> {
        self.manage(caller, account_id).await?;
        self.keys_of(account_id).await
    }

    /// Revokes a key: an admin of its account may, and so may its holder.
    pub async fn revoke_key(&self, caller: &Caller, key_id: &str) -> Result<KeyRecord, AccountError> {
        let missing = || not_found(format!("key {key_id}"));
        let mut record: KeyRecord = self.read(&key_key(key_id)).await?.ok_or_else(missing)?;
        if !caller.administers(&record.account_id) && caller.key_id != key_id {
            return Err(if caller.account == record.account_id {
                AccountError::PermissionDenied("revoking another key takes an admin key".into())
            } else {
                missing()
            });
        }
        if record.revoke_ms.is_none() {
            record.revoke_ms = Some(now_ms());
            self.write(&key_key(key_id), &record).await?;
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchmill_coord::MemKv;

    fn bearer(key: &SecretKey) -> String {
        format!("Bearer {}", key.reveal())
    }

    async fn setup() -> (Accounts, Caller, SecretKey) {
        let accounts = Accounts::new(Arc::new(MemKv::default()));
        let key = accounts.bootstrap("admin", "first").await.expect("bootstrap");
        let root = accounts.authenticate(Some(&bearer(&key))).await.expect("root authenticates");
        assert_eq!(root.role, Role::ClusterAdmin);
        (accounts, root, key)
    }

    #[tokio::test]
    async fn a_created_key_authenticates_in_both_forms_and_only_its_hash_is_stored() {
        let kv = Arc::new(MemKv::default());
        let accounts = Accounts::new(kv.clone());
        let root_key = accounts.bootstrap("admin", "first").await.expect("bootstrap");
        let root = accounts.authenticate(Some(&format!("ApiKey {}", root_key.reveal()))).await.expect("ApiKey form");
        accounts.create_account(&root, "acme", Limits::default()).await.expect("account");
        let (key, record) = accounts.create_key(&root, "acme", Role::Member, "ci").await.expect("key");
        let caller = accounts.authenticate(Some(&bearer(&key))).await.expect("authenticates");
        assert_eq!(
            (caller.account.as_str(), caller.key_id.as_str(), caller.role),
            ("acme", record.key_id.as_str(), Role::Member)
        );
        let secret = key.reveal();
        let secret_part = &secret[secret.find('.').expect("dot") + 1..];
        for (k, v) in kv.list("/batchmill/").await.expect("list") {
            let v = String::from_utf8_lossy(&v);
            assert!(!v.contains(secret_part) && !k.contains(secret_part), "{k} holds the secret");
        }
    }

    #[tokio::test]
    async fn a_missing_wrong_or_revoked_key_is_refused() {
        let (accounts, root, _) = setup().await;
        accounts.create_account(&root, "acme", Limits::default()).await.expect("account");
        let (key, record) = accounts.create_key(&root, "acme", Role::AccountAdmin, "").await.expect("key");
        assert!(matches!(accounts.authenticate(None).await, Err(AccountError::Unauthenticated(_))));
        assert!(matches!(accounts.authenticate(Some("Bearer nonsense")).await, Err(AccountError::Unauthenticated(_))));
        let forged = format!("Bearer {}.{}", record.key_id, "x".repeat(32));
        assert!(matches!(accounts.authenticate(Some(&forged)).await, Err(AccountError::Unauthenticated(_))));
        let caller = accounts.authenticate(Some(&bearer(&key))).await.expect("works");
        accounts.revoke_key(&caller, &record.key_id).await.expect("its holder revokes it");
        assert!(matches!(accounts.authenticate(Some(&bearer(&key))).await, Err(AccountError::Unauthenticated(_))));
    }

    #[tokio::test]
    async fn roles_bound_what_a_key_may_manage_and_other_accounts_are_not_found() {
        let (accounts, root, _) = setup().await;
        for id in ["acme", "globex"] {
            accounts.create_account(&root, id, Limits::default()).await.expect("account");
        }
        let (admin_key, _) = accounts.create_key(&root, "acme", Role::AccountAdmin, "").await.expect("admin");
        let admin = accounts.authenticate(Some(&bearer(&admin_key))).await.expect("admin");
        let (member_key, member_record) = accounts.create_key(&admin, "acme", Role::Member, "").await.expect("member");
        let member = accounts.authenticate(Some(&bearer(&member_key))).await.expect("member");
        let (_, globex_key) = accounts.create_key(&root, "globex", Role::Member, "").await.expect("globex");

        // An account admin: its own account's keys, nothing higher, nothing elsewhere.
        assert_eq!(accounts.list_keys(&admin, "acme").await.expect("own keys").len(), 2);
        assert!(matches!(
            accounts.create_key(&admin, "acme", Role::ClusterAdmin, "").await,
            Err(AccountError::PermissionDenied(_))
        ));
        assert!(matches!(accounts.list_keys(&admin, "globex").await, Err(AccountError::NotFound { .. })));
        assert!(matches!(accounts.revoke_key(&admin, &globex_key.key_id).await, Err(AccountError::NotFound { .. })));
        assert!(matches!(accounts.account(&admin, "globex").await, Err(AccountError::NotFound { .. })));
        assert!(matches!(
            accounts.create_account(&admin, "new", Limits::default()).await,
            Err(AccountError::PermissionDenied(_))
        ));
        // A member: sees its account, manages nothing.
        accounts.account(&member, "acme").await.expect("own account");
        assert!(matches!(accounts.list_keys(&member, "acme").await, Err(AccountError::PermissionDenied(_))));
        assert!(matches!(
            accounts.create_key(&member, "acme", Role::Member, "").await,
            Err(AccountError::PermissionDenied(_))
        ));
        assert!(matches!(
            accounts.set_limits(&member, "acme", Limits::default()).await,
            Err(AccountError::PermissionDenied(_))
        ));
        // The admin revokes the member's key.
        accounts.revoke_key(&admin, &member_record.key_id).await.expect("revoked");
        assert!(accounts.authenticate(Some(&bearer(&member_key))).await.is_err());
    }

    #[tokio::test]
    async fn revoking_an_account_revokes_its_keys_and_refuses_new_ones() {
        let (accounts, root, _) = setup().await;
        accounts
            .create_account(&root, "acme", Limits { max_concurrent_jobs: 2, max_workers: 4, ..Limits::default() })
            .await
            .expect("account");
        let (key, _) = accounts.create_key(&root, "acme", Role::AccountAdmin, "").await.expect("key");
        assert!(matches!(
            accounts.create_account(&root, "acme", Limits::default()).await,
            Err(AccountError::AlreadyExists(_))
        ));
        let revoked = accounts.revoke_account(&root, "acme").await.expect("revoked");
        assert!(revoked.revoke_ms.is_some());
        assert_eq!(revoked.limits.max_workers, 4);
        assert!(accounts.authenticate(Some(&bearer(&key))).await.is_err());
        assert!(matches!(
            accounts.create_key(&root, "acme", Role::Member, "").await,
            Err(AccountError::PermissionDenied(_))
        ));
        assert!(matches!(accounts.revoke_account(&root, "admin").await, Err(AccountError::PermissionDenied(_))));
    }

    #[tokio::test]
    async fn an_account_id_is_checked_and_named() {
        let (accounts, root, _) = setup().await;
        for bad in ["", "Acme", "-x", "a b", &"a".repeat(64)] {
            match accounts.create_account(&root, bad, Limits::default()).await {
                Err(AccountError::Invalid(v)) => assert_eq!(v.field, "account_id"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
