//! Items from lines of NDJSON objects.

use batchmill_blob::Blob;
use batchmill_core::S3Uri;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::AsyncBufReadExt;

use crate::{CHUNK_BYTES, CHUNK_ITEMS, ListerError};

/// Streams the non-blank lines of `uris` in order, after the first `skip`.
pub fn lines(blob: Blob, uris: Vec<S3Uri>, skip: u64) -> BoxStream<'static, Result<Vec<String>, ListerError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        if let Err(e) = read_all(&blob, &uris, skip, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

async fn read_all(
    blob: &Blob,
    uris: &[S3Uri],
    mut skip: u64,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<String>, ListerError>>,
) -> Result<(), ListerError> {
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    for uri in uris {
        let mut reader = blob.reader(&uri.bucket, &uri.key).await?;
        let mut line = String::new();
        let mut number = 0u64;
        loop {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .await
                .map_err(|e| ListerError::Read { uri: uri.to_string(), message: e.to_string() })?;
            if read == 0 {
                break;
            }
            number += 1;
            let item = line.trim();
            if item.is_empty() {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(item) {
                return Err(ListerError::BadLine { uri: uri.to_string(), line: number, message: e.to_string() });
            }
            chunk_bytes += item.len();
            chunk.push(item.to_owned());
            if chunk.len() >= CHUNK_ITEMS || chunk_bytes >= CHUNK_BYTES {
                if tx.send(Ok(std::mem::take(&mut chunk))).await.is_err() {
                    return Ok(());
                }
                chunk_bytes = 0;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk)).await;
    }
    Ok(())
}
