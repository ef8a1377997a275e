//! The items of an NDJSON object: its non-blank lines, each checked to be
//! JSON and at most [`MAX_LINE_BYTES`] long. A longer line is refused once
//! that many bytes have been read, so a file without newlines is never held
//! whole in memory.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest line: one item, which must fit in a batch.
pub const MAX_LINE_BYTES: usize = batchmill_core::job::MAX_BATCH_BYTES;

/// Why a line is not an item.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line {line}: not JSON: {message}")]
    NotJson { line: u64, message: String },
    #[error("line {line} is over the {MAX_LINE_BYTES}-byte (256 KiB) limit of one item")]
    TooLong { line: u64 },
    #[error("line {line} is not UTF-8")]
    NotUtf8 { line: u64 },
    #[error("{0}")]
    Read(#[from] std::io::Error),
}

/// Reads items from an NDJSON object.
pub struct Lines<R> {
    reader: R,
    line: Vec<u8>,
    number: u64,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    pub fn new(reader: R) -> Lines<R> {
        Lines { reader, line: Vec::new(), number: 0 }
    }

    /// The next item (its line, trimmed), or None at the end.
    pub async fn next_item(&mut self) -> Result<Option<String>, LineError> {
        loop {
            if !self.read_line().await? {
                return Ok(None);
            }
            let line = self.number;
            let text = std::str::from_utf8(&self.line).map_err(|_| LineError::NotUtf8 { line })?.trim();
            if text.is_empty() {
                continue;
            }
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
                return Err(LineError::NotJson { line, message: e.to_string() });
            }
            return Ok(Some(text.to_owned()));
        }
    }

    /// Reads the next line (without its newline) into `self.line`; false at
    /// the end of the object.
    async fn read_line(&mut self) -> Result<bool, LineError> {
        self.line.clear();
        let mut any = false;
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                if any {
                    self.number += 1;
                }
                return Ok(any);
            }
            any = true;
            let (taken, ended) = match buf.iter().position(|&b| b == b'\n') {
                Some(at) => (at, true),
                None => (buf.len(), false),
            };
            if self.line.len() + taken > MAX_LINE_BYTES {
                return Err(LineError::TooLong { line: self.number + 1 });
            }
            self.line.extend_from_slice(&buf[..taken]);
            self.reader.consume(taken + usize::from(ended));
            if ended {
                self.number += 1;
                return Ok(true);
            }
        }
    }
}

/// Every item of `data` as [`Lines`] reads them, or the first error: the
/// fuzz targets' entry point.
pub fn items_of(data: &[u8]) -> Result<Vec<String>, LineError> {
    futures::executor::block_on(async {
        let mut lines = Lines::new(data);
        let mut items = Vec::new();
        while let Some(item) = lines.next_item().await? {
            items.push(item);
        }
        Ok(items)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_blank_lines_are_items_and_errors_name_the_line() {
        let items = items_of(b"{\"a\":1}\n\n  \r\n2\r\n\"x\"").expect("items");
        assert_eq!(items, ["{\"a\":1}", "2", "\"x\""]);
        match items_of(b"1\n\n{oops\n") {
            Err(e @ LineError::NotJson { line: 3, .. }) => assert!(e.to_string().starts_with("line 3: not JSON")),
            other => panic!("line 3 is not JSON: {other:?}"),
        }
        assert!(matches!(items_of(b"1\n\xff\xfe\n"), Err(LineError::NotUtf8 { line: 2 })));
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_reading_it_whole() {
        let mut data = b"1\n\"".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES));
        data.extend_from_slice(b"\"\n2\n");
        let err = items_of(&data).expect_err("too long");
        assert!(matches!(err, LineError::TooLong { line: 2 }), "{err:?}");
        assert_eq!(err.to_string(), "line 2 is over the 262144-byte (256 KiB) limit of one item");
        // A line exactly at the limit is an item.
        let mut data = b"\"".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES - 2));
        data.extend_from_slice(b"\"\n");
        assert_eq!(items_of(&data).expect("at the limit")[0].len(), MAX_LINE_BYTES);
    }
}
