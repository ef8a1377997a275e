//! The public `AccountService`, served by the gateway itself over the
//! account store in etcd: the caller is the request's checked key.

use batchmill_accounts::{AccountRecord, Accounts, KeyRecord, Limits};
use batchmill_core::time::timestamp;
use batchmill_core::{FieldViolation, Role, ServiceError};
use batchmill_proto::accounts::v1::{self as pb, account_service_server::AccountService};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::auth::caller;

#[derive(Clone)]
pub struct AccountsGrpc {
    accounts: Accounts,
}

impl AccountsGrpc {
    pub fn new(accounts: Accounts) -> AccountsGrpc {
        AccountsGrpc { accounts }
    }

    pub fn into_service(self) -> pb::account_service_server::AccountServiceServer<AccountsGrpc> {
        pb::account_service_server::AccountServiceServer::new(self)
    }
}

pub fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Member => pb::Role::Member,
        Role::AccountAdmin => pb::Role::AccountAdmin,
        Role::ClusterAdmin => pb::Role::ClusterAdmin,
    }
}

fn role_from_pb(role: i32) -> Result<Role, FieldViolation> {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Unspecified | pb::Role::Member) => Ok(Role::Member),
        Ok(pb::Role::AccountAdmin) => Ok(Role::AccountAdmin),
        Ok(pb::Role::ClusterAdmin) => Ok(Role::ClusterAdmin),
        Err(_) => Err(FieldViolation::new("role", format!("{role} is not a role"))),
    }
}

fn limits_from_pb(limits: Option<pb::Limits>) -> Result<Limits, FieldViolation> {
    let limits = limits.unwrap_or_default();
    let count = |field: &str, n: i32| {
        u32::try_from(n).map_err(|_| FieldViolation::new(format!("limits.{field}"), "must be 0 (no limit) or more"))
    };
    for name in limits.queue_quotas.keys() {
        batchmill_core::queues::check_name(&format!("limits.queue_quotas[{name:?}]"), name)?;
    }
    Ok(Limits {
        max_concurrent_jobs: count("max_concurrent_jobs", limits.max_concurrent_jobs)?,
        max_workers: count("max_workers", limits.max_workers)?,
        max_priority: limits.max_priority,
        queue_quotas: limits.queue_quotas.into_iter().collect(),
    })
}

fn account_to_pb(a: AccountRecord) -> pb::Account {
    let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    pb::Account {
        account_id: a.account_id,
        limits: Some(pb::Limits {
            max_concurrent_jobs: clamp(a.limits.max_concurrent_jobs),
            max_workers: clamp(a.limits.max_workers),
            max_priority: a.limits.max_priority,
            queue_quotas: a.limits.queue_quotas.into_iter().collect(),
        }),
        create_time: Some(timestamp(a.create_ms)),
        revoke_time: a.revoke_ms.map(timestamp),
    }
}

pub fn key_to_pb(k: KeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        key_id: k.key_id,
        account_id: k.account_id,
        role: role_to_pb(k.role) as i32,
        description: k.description,
        create_time: Some(timestamp(k.create_ms)),
        revoke_time: k.revoke_ms.map(timestamp),
    }
}

fn status(e: &batchmill_accounts::AccountError) -> Status {
    e.to_status()
}

#[tonic::async_trait]
impl AccountService for AccountsGrpc {
    #[instrument(skip_all)]
    async fn get_caller(
        &self,
        request: Request<pb::GetCallerRequest>,
    ) -> Result<Response<pb::GetCallerResponse>, Status> {
        let caller = caller(&request)?;
        let key = self.accounts.caller_key(&caller).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::GetCallerResponse { key: Some(key_to_pb(key)) }))
    }

    #[instrument(skip_all)]
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limits = limits_from_pb(req.limits)?;
        let account = self.accounts.create_account(&caller, &req.account_id, limits).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::CreateAccountResponse { account: Some(account_to_pb(account)) }))
    }

    #[instrument(skip_all)]
    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let caller = caller(&request)?;
        let account = self.accounts.account(&caller, &request.get_ref().account_id).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::GetAccountResponse { account: Some(account_to_pb(account)) }))
    }

    #[instrument(skip_all)]
    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let caller = caller(&request)?;
        let accounts = self.accounts.list_accounts(&caller).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::ListAccountsResponse { accounts: accounts.into_iter().map(account_to_pb).collect() }))
    }

    #[instrument(skip_all)]
    async fn set_account_limits(
        &self,
        request: Request<pb::SetAccountLimitsRequest>,
    ) -> Result<Response<pb::SetAccountLimitsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limits = limits_from_pb(req.limits)?;
        let account = self.accounts.set_limits(&caller, &req.account_id, limits).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::SetAccountLimitsResponse { account: Some(account_to_pb(account)) }))
    }

    #[instrument(skip_all)]
    async fn revoke_account(
        &self,
        request: Request<pb::RevokeAccountRequest>,
    ) -> Result<Response<pb::RevokeAccountResponse>, Status> {
        let caller = caller(&request)?;
        let account =
            self.accounts.revoke_account(&caller, &request.get_ref().account_id).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::RevokeAccountResponse { account: Some(account_to_pb(account)) }))
    }

    #[instrument(skip_all)]
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let role = role_from_pb(req.role)?;
        let (secret, key) =
            self.accounts.create_key(&caller, &req.account_id, role, &req.description).await.map_err(|e| status(&e))?;
        tracing::info!(key_id = %key.key_id, account = %key.account_id, role = key.role.as_str(), "key created");
        Ok(Response::new(pb::CreateKeyResponse { secret_key: secret.reveal(), key: Some(key_to_pb(key)) }))
    }

    #[instrument(skip_all)]
    async fn list_keys(&self, request: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = caller(&request)?;
        let keys = self.accounts.list_keys(&caller, &request.get_ref().account_id).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::ListKeysResponse { keys: keys.into_iter().map(key_to_pb).collect() }))
    }

    #[instrument(skip_all)]
    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let caller = caller(&request)?;
        let key = self.accounts.revoke_key(&caller, &request.get_ref().key_id).await.map_err(|e| status(&e))?;
        tracing::info!(key_id = %key.key_id, account = %key.account_id, "key revoked");
        Ok(Response::new(pb::RevokeKeyResponse { key: Some(key_to_pb(key)) }))
    }
}
