//! Items from S3: lines of NDJSON objects, or objects selected by prefixes
//! and globs (as their paths, or line by line). Listing goes a page at a time
//! and objects are read a line at a time, so memory stays flat however many
//! keys or lines there are. Items go out in chunks, after skipping the first
//! `skip` (the enqueuer's resume cursor).

use std::sync::Arc;

use batchmill_blob::ObjectStore;
use batchmill_core::glob::Filter;
use batchmill_core::job::Folder;
use batchmill_core::{S3Selection, S3Uri};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::lines::{LineError, Lines};
use crate::sql::{Database, Query};
use crate::{CHUNK_BYTES, CHUNK_ITEMS, ListerError, Source};

type Chunks = mpsc::Sender<Result<Vec<String>, ListerError>>;

/// Streams the items of `source` after the first `skip`.
pub fn stream(
    blob: Arc<dyn ObjectStore>,
    db: Arc<dyn Database>,
    source: Source,
    skip: u64,
) -> BoxStream<'static, Result<Vec<String>, ListerError>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        // The database skips a query's rows itself.
        let emitter_skip = if matches!(source, Source::Sql(_)) { 0 } else { skip };
        let mut out = Emitter { tx: tx.clone(), chunk: Vec::new(), bytes: 0, skip: emitter_skip };
        let result = match source {
            Source::NdjsonObjects(uris) => ndjson(blob.as_ref(), &uris, &mut out).await,
            Source::FilePaths(selection) => selected(blob.as_ref(), &selection, Mode::Paths, &mut out).await,
            Source::DelimitedFiles(selection) => selected(blob.as_ref(), &selection, Mode::Lines, &mut out).await,
            Source::Folders(folders) => named_folders(blob.as_ref(), &folders, &mut out).await,
            Source::Sql(query) => rows(db.as_ref(), &query, skip, &mut out).await,
        };
        match result {
            Ok(()) => out.finish().await,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// Cuts items into chunks and sends them; `push` is false once nobody listens.
struct Emitter {
    tx: Chunks,
    chunk: Vec<String>,
    bytes: usize,
    skip: u64,
}

impl Emitter {
    async fn push(&mut self, item: String) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return true;
        }
        self.bytes += item.len();
        self.chunk.push(item);
        if self.chunk.len() >= CHUNK_ITEMS || self.bytes >= CHUNK_BYTES {
            self.bytes = 0;
            return self.tx.send(Ok(std::mem::take(&mut self.chunk))).await.is_ok();
        }
        true
    }

    async fn finish(self) {
        if !self.chunk.is_empty() {
            let _ = self.tx.send(Ok(self.chunk)).await;
        }
    }
}

async fn ndjson(blob: &dyn ObjectStore, uris: &[S3Uri], out: &mut Emitter) -> Result<(), ListerError> {
    for uri in uris {
        if !lines(blob, uri, out).await? {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends the items of one NDJSON object ([`crate::lines`]); false once
/// nobody listens.
async fn lines(blob: &dyn ObjectStore, uri: &S3Uri, out: &mut Emitter) -> Result<bool, ListerError> {
    let mut lines = Lines::new(blob.reader(&uri.bucket, &uri.key).await?);
    loop {
        let item = match lines.next_item().await {
            Ok(Some(item)) => item,
            Ok(None) => return Ok(true),
            Err(LineError::Read(e)) => return Err(ListerError::Read { uri: uri.to_string(), message: e.to_string() }),
            Err(source) => return Err(ListerError::BadLine { uri: uri.to_string(), source }),
        };
        if !out.push(item).await {
            return Ok(false);
        }
    }
}

enum Mode<'a> {
    /// Each selected object is an item: its path.
    Paths,
    /// Each line of each selected object is an item.
    Lines,
    /// Each selected object is a named item of the folder.
    Named(&'a Folder),
}

/// Every row of a query after the first `skip`, as the named item `<index>`
/// whose inputs are its columns.
async fn rows(db: &dyn Database, query: &Query, skip: u64, out: &mut Emitter) -> Result<(), ListerError> {
    let mut pages = db.rows(query, skip).await?;
    let mut index = skip;
    while let Some(page) = pages.next().await {
        for row in page? {
            let item = batchmill_core::named::item(&index.to_string(), row, serde_json::Map::new());
            if !out.push(item.to_string()).await {
                return Ok(());
            }
            index += 1;
        }
    }
    Ok(())
}

/// Every object of each folder, as a named item whose input is the object.
async fn named_folders(blob: &dyn ObjectStore, folders: &[Folder], out: &mut Emitter) -> Result<(), ListerError> {
    for folder in folders {
        let selection = S3Selection { s3_paths: vec![folder.s3_path.clone()], includes: vec![], excludes: vec![] };
        selected(blob, &selection, Mode::Named(folder), out).await?;
    }
    Ok(())
}

/// The item of `uri` in `folder`: named `<folder name>/<key after the prefix>`.
fn folder_item(folder: &Folder, uri: &S3Uri) -> String {
    let rest = uri.key.strip_prefix(&folder.s3_path.key).unwrap_or(&uri.key).trim_start_matches('/');
    let name = if rest.is_empty() { folder.name.clone() } else { format!("{}/{rest}", folder.name) };
    let mut objects = serde_json::Map::new();
    objects.insert(folder.input.clone(), serde_json::Value::String(uri.to_string()));
    batchmill_core::named::item(&name, serde_json::Map::new(), objects).to_string()
}

/// Lists the selection a page at a time and emits what it selects.
async fn selected(
    blob: &dyn ObjectStore,
    selection: &S3Selection,
    mode: Mode<'_>,
    out: &mut Emitter,
) -> Result<(), ListerError> {
    let filter = Filter::new(&selection.includes, &selection.excludes)
        .map_err(|e| ListerError::BadSource(format!("{}[{}]: {}", e.list, e.index, e.error)))?;
    let mut matched = 0u64;
    for prefix in disjoint(&selection.s3_paths) {
        let mut page = None;
        loop {
            let listed = blob
                .list_page(&prefix.bucket, &prefix.key, page)
                .await
                .map_err(|source| ListerError::List { uri: prefix.to_string(), source })?;
            for key in &listed.keys {
                let uri = S3Uri { bucket: prefix.bucket.clone(), key: key.clone() };
                let path = uri.to_string();
                if !filter.accepts(&path) {
                    continue;
                }
                matched += 1;
                let more = match mode {
                    Mode::Paths => out.push(serde_json::Value::String(path).to_string()).await,
                    Mode::Lines => lines(blob, &uri, out).await?,
                    Mode::Named(folder) => out.push(folder_item(folder, &uri)).await,
                };
                if !more {
                    return Ok(());
                }
            }
            match listed.next {
                Some(next) => page = Some(next),
                None => break,
            }
        }
    }
    if matched == 0 {
        return Err(ListerError::NoMatch {
            paths: selection.s3_paths.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        });
    }
    Ok(())
}

/// The prefixes to list, sorted, without any that another one already
/// covers, so no object is listed twice.
fn disjoint(paths: &[S3Uri]) -> Vec<S3Uri> {
    let mut sorted = paths.to_vec();
    sorted.sort_by(|a, b| (&a.bucket, &a.key).cmp(&(&b.bucket, &b.key)));
    let mut out: Vec<S3Uri> = Vec::new();
    for path in sorted {
        if !out.last().is_some_and(|kept| kept.bucket == path.bucket && path.key.starts_with(&kept.key)) {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_paths_are_listed_once() {
        let uri = |s: &str| S3Uri::parse(s).unwrap();
        let paths = [
            uri("s3://bkt/data/images/sub/"),
            uri("s3://bkt/data/images/"),
            uri("s3://cat/x"),
            uri("s3://bkt/data/imagesX"),
        ];
        let listed: Vec<String> = disjoint(&paths).iter().map(ToString::to_string).collect();
        assert_eq!(listed, vec!["s3://bkt/data/images/", "s3://bkt/data/imagesX", "s3://cat/x"]);
    }
}
