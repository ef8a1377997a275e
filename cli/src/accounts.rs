//! `batchmill accounts`, `batchmill keys` and `batchmill whoami`: the
//! account API.

use batchmill_proto::accounts::v1::{self as pb, account_service_client::AccountServiceClient};
use clap::Subcommand;

use crate::connect::Api;
use crate::show;

#[derive(Debug, Subcommand)]
pub enum Accounts {
    /// Creates an account (cluster admin).
    Create {
        account_id: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Shows an account.
    Get { account_id: String },
    /// Lists the accounts (cluster admin).
    List,
    /// Replaces an account's limits (cluster admin).
    SetLimits {
        account_id: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Revokes an account and all of its keys (cluster admin).
    Revoke { account_id: String },
}

#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// Most unended jobs at once; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    max_concurrent_jobs: i32,
    /// Most workers over all unended jobs; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    max_workers: i32,
    /// The highest priority its jobs may ask for.
    #[arg(long, default_value_t = 0)]
    max_priority: u32,
    /// A quota on an admission queue, QUEUE=UNITS (workers, or GPUs for a GPU queue); repeatable.
    #[arg(long = "queue-quota", value_parser = parse_quota)]
    queue_quotas: Vec<(String, u32)>,
}

fn parse_quota(text: &str) -> anyhow::Result<(String, u32)> {
    let (queue, units) = text.split_once('=').ok_or_else(|| anyhow::anyhow!("{text:?} is not QUEUE=UNITS"))?;
    let units = units.parse().map_err(|_| anyhow::anyhow!("{units:?} is not a whole number"))?;
    Ok((queue.to_owned(), units))
}

impl LimitArgs {
    fn to_pb(&self) -> pb::Limits {
        pb::Limits {
            max_concurrent_jobs: self.max_concurrent_jobs,
            max_workers: self.max_workers,
            max_priority: self.max_priority,
            queue_quotas: self.queue_quotas.iter().cloned().collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Member,
    AccountAdmin,
    ClusterAdmin,
}

#[derive(Debug, Subcommand)]
pub enum Keys {
    /// Creates a key and prints it; it is shown this once.
    Create {
        account_id: String,
        #[arg(long, value_enum, default_value = "member")]
        role: RoleArg,
        /// What the key is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Lists an account's keys (never the keys themselves).
    List { account_id: String },
    /// Revokes a key, by its id (the part before the '.').
    Revoke { key_id: String },
}

pub async fn accounts(api: Api, command: Accounts) -> anyhow::Result<()> {
    let mut client = AccountServiceClient::new(api);
    let account = match command {
        Accounts::Create { account_id, limits } => {
            let request = pb::CreateAccountRequest { account_id, limits: Some(limits.to_pb()) };
            client.create_account(request).await?.into_inner().account
        }
        Accounts::Get { account_id } => {
            client.get_account(pb::GetAccountRequest { account_id }).await?.into_inner().account
        }
        Accounts::List => {
            let all = client.list_accounts(pb::ListAccountsRequest {}).await?.into_inner();
            println!("{}", show(&all, "batchmill.accounts.v1.ListAccountsResponse")?);
            return Ok(());
        }
        Accounts::SetLimits { account_id, limits } => {
            let request = pb::SetAccountLimitsRequest { account_id, limits: Some(limits.to_pb()) };
            client.set_account_limits(request).await?.into_inner().account
        }
        Accounts::Revoke { account_id } => {
            client.revoke_account(pb::RevokeAccountRequest { account_id }).await?.into_inner().account
        }
    };
    println!("{}", show(&account.unwrap_or_default(), "batchmill.accounts.v1.Account")?);
    Ok(())
}

pub async fn keys(api: Api, command: Keys) -> anyhow::Result<()> {
    let mut client = AccountServiceClient::new(api);
    match command {
        Keys::Create { account_id, role, description } => {
            let role = match role {
                RoleArg::Member => pb::Role::Member,
                RoleArg::AccountAdmin => pb::Role::AccountAdmin,
                RoleArg::ClusterAdmin => pb::Role::ClusterAdmin,
            };
            let request = pb::CreateKeyRequest { account_id, role: role as i32, description };
            let created = client.create_key(request).await?.into_inner();
            println!("{}", show(&created, "batchmill.accounts.v1.CreateKeyResponse")?);
        }
        Keys::List { account_id } => {
            let keys = client.list_keys(pb::ListKeysRequest { account_id }).await?.into_inner();
            println!("{}", show(&keys, "batchmill.accounts.v1.ListKeysResponse")?);
        }
        Keys::Revoke { key_id } => {
            let key = client.revoke_key(pb::RevokeKeyRequest { key_id }).await?.into_inner().key.unwrap_or_default();
            println!("{}", show(&key, "batchmill.accounts.v1.ApiKey")?);
        }
    }
    Ok(())
}

pub async fn whoami(api: Api) -> anyhow::Result<()> {
    let key = AccountServiceClient::new(api).get_caller(pb::GetCallerRequest {}).await?.into_inner().key;
    println!("{}", show(&key.unwrap_or_default(), "batchmill.accounts.v1.ApiKey")?);
    Ok(())
}
