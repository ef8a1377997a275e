//! Rows of a SQL query, the lister's one database adapter: the
//! [`Database`] trait, PostgreSQL through tokio-postgres, an in-memory fake
//! for unit tests and one conformance suite both pass (feature `testing`).
//!
//! PostgreSQL rows are read through a cursor (a portal in a read-only
//! transaction), [`PAGE`] rows at a time, each as the JSON object of its
//! columns (`row_to_json`), so memory stays flat however many rows there
//! are. Resuming skips rows with `OFFSET`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// Rows fetched from the cursor at a time.
pub const PAGE: i32 = 500;

/// Where and what to read.
#[derive(Clone, PartialEq, Eq)]
pub struct Query {
    /// postgresql://host:port/database.
    pub url: String,
    pub username: String,
    pub password: String,
    pub query: String,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

/// Why rows could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// The database refused: a bad query, unknown relation, wrong
    /// password. The database's own message.
    #[error("the database refused: {0}")]
    Refused(String),
    /// The database could not be reached, or the connection broke.
    #[error("the database is unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    BadUrl(String),
}

/// A page of rows, each the object of its columns.
pub type Rows = BoxStream<'static, Result<Vec<Map<String, Value>>, SqlError>>;

/// A database the lister reads rows from.
#[async_trait]
pub trait Database: Send + Sync + 'static {
    /// The rows of `query` after the first `skip`, in pages.
    async fn rows(&self, query: &Query, skip: u64) -> Result<Rows, SqlError>;
}

/// PostgreSQL.
pub struct Postgres;

fn classify(e: &tokio_postgres::Error) -> SqlError {
    match e.as_db_error() {
        Some(db) => SqlError::Refused(format!("{}: {}", db.code().code(), db.message())),
        None => SqlError::Unreachable(e.to_string()),
    }
}

/// The query wrapped so each row comes back as one JSON text.
fn wrapped(query: &str, skip: u64) -> String {
    let query = query.trim().trim_end_matches(';').trim_end();
    format!("SELECT row_to_json(q)::text FROM ({query}) AS q OFFSET {skip}")
}

#[async_trait]
impl Database for Postgres {
    async fn rows(&self, query: &Query, skip: u64) -> Result<Rows, SqlError> {
        let mut config = tokio_postgres::Config::from_str(&query.url)
            .map_err(|e| SqlError::BadUrl(format!("{}: {e}", query.url)))?;
        config
            .user(&query.username)
            .password(&query.password)
            .connect_timeout(Duration::from_secs(10))
            .application_name("batchmill-lister");
        let (mut client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| classify(&e))?;
        let (tx, rx) = mpsc::channel(2);
        let sql = wrapped(&query.query, skip);
        tokio::spawn(async move {
            let connection = tokio::spawn(connection);
            let read = async {
                let transaction = client.build_transaction().read_only(true).start().await.map_err(|e| classify(&e))?;
                let statement = transaction.prepare(&sql).await.map_err(|e| classify(&e))?;
                let portal = transaction.bind(&statement, &[]).await.map_err(|e| classify(&e))?;
                loop {
                    let page = transaction.query_portal(&portal, PAGE).await.map_err(|e| classify(&e))?;
                    if page.is_empty() {
                        return Ok(());
                    }
                    let mut rows = Vec::with_capacity(page.len());
                    for row in &page {
                        let text: &str = row.try_get(0).map_err(|e| classify(&e))?;
                        match serde_json::from_str::<Value>(text) {
                            Ok(Value::Object(object)) => rows.push(object),
                            _ => return Err(SqlError::Refused(format!("a row did not read as an object: {text}"))),
                        }
                    }
                    if tx.send(Ok(rows)).await.is_err() {
                        return Ok(());
                    }
                }
            };
            if let Err(e) = read.await {
                let _ = tx.send(Err(e)).await;
            }
            drop(client);
            let _ = connection.await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// An in-memory database for unit tests: each query text has its rows (or
/// the database's refusal), and one user and password are accepted.
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Default)]
pub struct MemDatabase {
    pub username: String,
    pub password: String,
    pub tables: std::collections::HashMap<String, Result<Vec<Map<String, Value>>, String>>,
}

#[cfg(any(test, feature = "testing"))]
#[async_trait]
impl Database for MemDatabase {
    async fn rows(&self, query: &Query, skip: u64) -> Result<Rows, SqlError> {
        if query.username != self.username || query.password != self.password {
            return Err(SqlError::Refused(format!(
                "28P01: password authentication failed for user \"{}\"",
                query.username
            )));
        }
        let rows = match self.tables.get(query.query.trim().trim_end_matches(';').trim_end()) {
            Some(Ok(rows)) => rows.iter().skip(skip as usize).cloned().collect::<Vec<_>>(),
            Some(Err(message)) => return Err(SqlError::Refused(message.clone())),
            None => return Err(SqlError::Refused("42P01: relation does not exist".into())),
        };
        let pages: Vec<Result<Vec<Map<String, Value>>, SqlError>> =
            rows.chunks(PAGE as usize).map(|c| Ok(c.to_vec())).collect();
        Ok(Box::pin(futures::stream::iter(pages)))
    }
}

/// What every [`Database`] must do, given one that holds the table
/// `batchmill_conformance (n int, word text)` with rows n = 1..=1200 and
/// word = 'w<n>', which [`conformance::QUERY`] selects in order.
#[cfg(any(test, feature = "testing"))]
pub mod conformance {
    use super::*;
    use futures::StreamExt;

    pub const QUERY: &str = "SELECT n, word AS \"input.txt\" FROM batchmill_conformance ORDER BY n";

    /// The rows the suite expects.
    pub fn rows() -> Vec<Map<String, Value>> {
        (1..=1200)
            .map(|n| {
                let mut row = Map::new();
                row.insert("n".into(), Value::from(n));
                row.insert("input.txt".into(), Value::String(format!("w{n}")));
                row
            })
            .collect()
    }

    async fn all(db: &dyn Database, query: &Query, skip: u64) -> Result<Vec<Map<String, Value>>, SqlError> {
        let mut pages = db.rows(query, skip).await?;
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page?;
            assert!(page.len() <= PAGE as usize, "pages hold at most {PAGE} rows");
            out.extend(page);
        }
        Ok(out)
    }

    /// Runs the suite against `db` as `query` (its URL and credentials,
    /// with [`QUERY`]).
    pub async fn run(db: &dyn Database, query: Query) {
        let got = all(db, &query, 0).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, rows(), "every row, in order, with its columns by name");
        let rest = all(db, &query, 1150).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rest, rows()[1150..], "a resume skips what was read");
        let semicolon = Query { query: format!("{QUERY};"), ..query.clone() };
        assert_eq!(all(db, &semicolon, 1199).await.map(|r| r.len()), Ok(1));
        let wrong = Query { password: "not-the-password".into(), ..query.clone() };
        assert!(
            matches!(all(db, &wrong, 0).await, Err(SqlError::Refused(m)) if m.contains("28P01")),
            "a wrong password is refused"
        );
        let missing = Query { query: "SELECT * FROM no_such_table".into(), ..query.clone() };
        assert!(
            matches!(all(db, &missing, 0).await, Err(SqlError::Refused(m)) if m.contains("42P01")),
            "the database's error is told"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_in_memory_database_passes_the_conformance_suite() {
        let mut tables = std::collections::HashMap::new();
        tables.insert(conformance::QUERY.to_owned(), Ok(conformance::rows()));
        let db = MemDatabase { username: "u".into(), password: "pw".into(), tables };
        let query = Query {
            url: "postgresql://mem/db".into(),
            username: "u".into(),
            password: "pw".into(),
            query: conformance::QUERY.into(),
        };
        conformance::run(&db, query).await;
        assert_eq!(wrapped("select 1 ;  ", 3), "SELECT row_to_json(q)::text FROM (select 1) AS q OFFSET 3");
    }
}
