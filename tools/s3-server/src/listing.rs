//! Listing by prefix the way S3 does it: in key order, starting at the
//! prefix's own directory and descending only into directories whose keys can
//! match. s3s-fs walks and sorts the whole bucket for every page, so listing
//! one job's results took a second once a bucket held a million objects.

use std::io;
use std::path::Path;
use std::time::SystemTime;

/// One entry of a listing page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Object {
        key: String,
        size: u64,
        modified: SystemTime,
    },
    /// A common prefix: a directory rolled up at the delimiter `/`.
    Prefix(String),
}

impl Entry {
    pub fn key(&self) -> &str {
        match self {
            Entry::Object { key, .. } | Entry::Prefix(key) => key,
        }
    }
}

/// What to list.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub prefix: &'a str,
    /// Only keys strictly after this one (a continuation token or start-after).
    pub after: Option<&'a str>,
    /// Roll directories below the prefix's level up into common prefixes
    /// (delimiter `/`).
    pub rolled: bool,
    /// The most entries to return; one more is looked for to tell whether the
    /// listing is truncated.
    pub limit: usize,
}

/// The entries of `bucket` (a directory) matching `query`, in key order: at
/// most `query.limit + 1`, so a caller sees whether there are more.
pub fn list(bucket: &Path, query: Query<'_>) -> io::Result<Vec<Entry>> {
    let start = query.prefix.rfind('/').map_or("", |i| &query.prefix[..=i]);
    let mut out = Vec::new();
    match visit(&bucket.join(start), start, query, &mut out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => Ok(out),
        Err(e) => Err(e),
        Ok(()) => Ok(out),
    }
}

fn visit(dir: &Path, dir_key: &str, query: Query<'_>, out: &mut Vec<Entry>) -> io::Result<()> {
    // Sorted as keys: a directory `a` holds keys `a/…`, which sort after `a-b`.
    let mut children = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        let is_dir = entry.file_type()?.is_dir();
        let key = if is_dir { format!("{dir_key}{name}/") } else { format!("{dir_key}{name}") };
        children.push((key, is_dir));
    }
    children.sort_unstable();
    for (key, is_dir) in children {
        if out.len() > query.limit {
            break;
        }
        if !is_dir {
            if key.starts_with(query.prefix) && query.after.is_none_or(|after| key.as_str() > after) {
                let meta = std::fs::metadata(dir.join(&key[dir_key.len()..]))?;
                out.push(Entry::Object { key, size: meta.len(), modified: meta.modified()? });
            }
            continue;
        }
        // Every key below `key` starts with it: skip the subtree when none can match.
        let can_match = key.starts_with(query.prefix) || query.prefix.starts_with(&key);
        let all_before = query.after.is_some_and(|after| key.as_str() < after && !after.starts_with(&key));
        if !can_match || all_before {
            continue;
        }
        if query.rolled && key.len() > query.prefix.len() {
            if query.after.is_none_or(|after| key.as_str() > after) {
                out.push(Entry::Prefix(key));
            }
            continue;
        }
        let sub = dir.join(&key[dir_key.len()..key.len() - 1]);
        visit(&sub, &key, query, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, f.as_bytes()).unwrap();
        }
        dir
    }

    fn keys(bucket: &Path, prefix: &str, after: Option<&str>, rolled: bool, limit: usize) -> Vec<String> {
        list(bucket, Query { prefix, after, rolled, limit }).unwrap().iter().map(|e| e.key().to_owned()).collect()
    }

    const FILES: &[&str] =
        &["a-b", "a/x", "a/y/z", "ab", "results/j1/j1-0.jsonl", "results/j1/j1-1.jsonl", "results/j2/m"];

    #[test]
    fn lists_every_key_in_byte_order() {
        let b = tree(FILES);
        let mut sorted: Vec<String> = FILES.iter().map(|s| (*s).to_owned()).collect();
        sorted.sort();
        assert_eq!(keys(b.path(), "", None, false, 1000), sorted);
    }

    #[test]
    fn a_prefix_lists_only_its_keys_whether_or_not_it_ends_at_a_directory() {
        let b = tree(FILES);
        assert_eq!(
            keys(b.path(), "results/j1/", None, false, 1000),
            ["results/j1/j1-0.jsonl", "results/j1/j1-1.jsonl"]
        );
        assert_eq!(
            keys(b.path(), "results/j", None, false, 1000),
            ["results/j1/j1-0.jsonl", "results/j1/j1-1.jsonl", "results/j2/m"]
        );
        assert_eq!(keys(b.path(), "a", None, false, 1000), ["a-b", "a/x", "a/y/z", "ab"]);
        assert!(keys(b.path(), "nothing/here/", None, false, 1000).is_empty());
        assert!(keys(b.path(), "ab/", None, false, 1000).is_empty(), "a file is not a directory");
    }

    #[test]
    fn the_delimiter_rolls_up_directories_below_the_prefix() {
        let b = tree(FILES);
        assert_eq!(keys(b.path(), "", None, true, 1000), ["a-b", "a/", "ab", "results/"]);
        assert_eq!(keys(b.path(), "results/", None, true, 1000), ["results/j1/", "results/j2/"]);
        assert_eq!(keys(b.path(), "a/", None, true, 1000), ["a/x", "a/y/"]);
    }

    #[test]
    fn pages_resume_after_the_last_key_and_look_one_past_the_limit() {
        let b = tree(FILES);
        assert_eq!(keys(b.path(), "", None, false, 2), ["a-b", "a/x", "a/y/z"]);
        assert_eq!(keys(b.path(), "", Some("a/x"), false, 2), ["a/y/z", "ab", "results/j1/j1-0.jsonl"]);
        assert_eq!(keys(b.path(), "", Some("results/j1/j1-1.jsonl"), false, 2), ["results/j2/m"]);
        assert_eq!(keys(b.path(), "", Some("a/"), true, 1000), ["ab", "results/"]);
    }

    #[test]
    fn objects_carry_their_size() {
        let b = tree(&["k/v"]);
        let found = list(b.path(), Query { prefix: "k/", after: None, rolled: false, limit: 10 }).unwrap();
        assert!(matches!(&found[..], [Entry::Object { key, size: 3, .. }] if key == "k/v"));
    }
}
