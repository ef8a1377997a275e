//! Cortex's glob semantics for selecting S3 objects (gobwas/glob with `/` as
//! the separator), matched against the full `s3://bucket/key`:
//!
//! - `*` matches any run of characters within one path segment;
//! - `**` matches any run of characters, `/` included;
//! - `?` matches one character other than `/`;
//! - `[abc]`, `[a-z]`, `[!abc]` match one character (never `/`) of a class;
//! - `{a,b,c}` matches any of its alternatives, which may hold globs too;
//! - `\` makes the next character literal.
//!
//! A [`Filter`] ORs its includes (none means everything) and its excludes win.
//! Globs compile to anchored regular expressions, so matching a key is linear
//! in its length, whatever the pattern.

use std::fmt;

/// A glob that failed to compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobError {
    pub pattern: String,
    pub message: String,
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "glob {:?}: {}", self.pattern, self.message)
    }
}

impl std::error::Error for GlobError {}

/// A compiled glob.
#[derive(Debug, Clone)]
pub struct Glob {
    pattern: String,
    regex: regex::Regex,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let err = |message: String| GlobError { pattern: pattern.to_owned(), message };
        if pattern.is_empty() {
            return Err(err("is empty".into()));
        }
        let mut chars = pattern.chars().peekable();
        let mut out = String::from("^");
        let mut depth = 0usize; // open `{`
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    let next = chars.next().ok_or_else(|| err("ends with a lone \\".into()))?;
                    out.push_str(&regex::escape(&next.to_string()));
                }
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    out.push_str(".*");
                }
                '*' => out.push_str("[^/]*"),
                '?' => out.push_str("[^/]"),
                '[' => {
                    let negated = chars.next_if_eq(&'!').is_some();
                    let mut members = String::new();
                    loop {
                        match chars.next() {
                            None => return Err(err("has a [ with no closing ]".into())),
                            Some(']') if !members.is_empty() => break,
                            Some(']') => return Err(err("has an empty []".into())),
                            Some('-') if !members.is_empty() && chars.peek().is_some_and(|c| *c != ']') => {
                                members.push('-');
                            }
                            Some(c) => members.push_str(&regex::escape(&c.to_string()).replace('-', "\\-")),
                        }
                    }
                    // A class never matches the separator.
                    if negated {
                        out.push_str(&format!("[^/{members}]"));
                    } else {
                        out.push_str(&format!("[{members}&&[^/]]"));
                    }
                }
                '{' => {
                    depth += 1;
                    out.push_str("(?:");
                }
                ',' if depth > 0 => out.push('|'),
                '}' if depth > 0 => {
                    depth -= 1;
                    out.push(')');
                }
                '}' => return Err(err("has a } with no opening {".into())),
                c => out.push_str(&regex::escape(&c.to_string())),
            }
        }
        if depth > 0 {
            return Err(err("has a { with no closing }".into()));
        }
        out.push('$');
        let regex = regex::Regex::new(&out).map_err(|e| err(format!("cannot be compiled: {e}")))?;
        Ok(Glob { pattern: pattern.to_owned(), regex })
    }

    /// Whether `path` (an `s3://bucket/key`) matches.
    pub fn matches(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

/// Includes OR-ed (none: everything), then excludes win.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    includes: Vec<Glob>,
    excludes: Vec<Glob>,
}

/// Which list a bad glob is in, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// "includes" or "excludes".
    pub list: &'static str,
    pub index: usize,
    pub error: GlobError,
}

impl Filter {
    pub fn new(includes: &[String], excludes: &[String]) -> Result<Filter, FilterError> {
        let compile = |list: &'static str, globs: &[String]| {
            globs
                .iter()
                .enumerate()
                .map(|(index, g)| Glob::new(g).map_err(|error| FilterError { list, index, error }))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Filter { includes: compile("includes", includes)?, excludes: compile("excludes", excludes)? })
    }

    pub fn accepts(&self, path: &str) -> bool {
        (self.includes.is_empty() || self.includes.iter().any(|g| g.matches(path)))
            && !self.excludes.iter().any(|g| g.matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        Glob::new(pattern).unwrap().matches(path)
    }

    #[test]
    fn star_stays_in_one_segment_and_double_star_crosses() {
        assert!(m("s3://bucket/images/*.jpg", "s3://bucket/images/cat.jpg"));
        assert!(!m("s3://bucket/images/*.jpg", "s3://bucket/images/2020/cat.jpg"));
        assert!(m("s3://bucket/images/**.jpg", "s3://bucket/images/2020/cat.jpg"));
        assert!(m("**.jpg", "s3://bucket/a/b/c.jpg"));
        assert!(!m("*.jpg", "s3://bucket/a.jpg"), "* never crosses a /");
        assert!(m("s3://bucket/**", "s3://bucket/a/b"));
    }

    #[test]
    fn question_marks_classes_and_alternatives() {
        assert!(m("s3://b/img?.png", "s3://b/img1.png"));
        assert!(!m("s3://b/img?.png", "s3://b/img/.png"));
        assert!(m("s3://b/[abc]*.txt", "s3://b/apple.txt"));
        assert!(!m("s3://b/[abc]*.txt", "s3://b/dog.txt"));
        assert!(m("s3://b/[a-c]x", "s3://b/bx"));
        assert!(m("s3://b/[!a-c]x", "s3://b/dx"));
        assert!(!m("s3://b/[!a-c]x", "s3://b/ax"));
        assert!(!m("s3://b/x[!a]y", "s3://b/x/y"), "a class never matches /");
        assert!(m("s3://b/*.{jpg,png}", "s3://b/a.png"));
        assert!(m("s3://b/{img/**,raw/*}.jpg", "s3://b/img/1/2.jpg"));
        assert!(!m("s3://b/{img/**,raw/*}.jpg", "s3://b/raw/1/2.jpg"));
        assert!(m("s3://b/a\\*b", "s3://b/a*b"));
        assert!(!m("s3://b/a\\*b", "s3://b/axb"));
        assert!(m("s3://b/c++/x.(1)", "s3://b/c++/x.(1)"), "regex characters are literal");
    }

    #[test]
    fn bad_globs_say_what_is_wrong() {
        for (pattern, says) in [
            ("s3://b/[abc", "no closing ]"),
            ("s3://b/[]", "empty []"),
            ("s3://b/{a,b", "no closing }"),
            ("s3://b/a}", "no opening {"),
            ("s3://b/a\\", "lone \\"),
            ("", "empty"),
        ] {
            let err = Glob::new(pattern).unwrap_err();
            assert!(err.to_string().contains(says), "{pattern:?}: {err}");
        }
    }

    #[test]
    fn includes_are_ored_and_excludes_win() {
        let f = Filter::new(&["**.jpg".into(), "**.png".into()], &["**/thumbs/**".into()]).unwrap();
        assert!(f.accepts("s3://b/a/x.jpg"));
        assert!(f.accepts("s3://b/a/x.png"));
        assert!(!f.accepts("s3://b/a/x.gif"));
        assert!(!f.accepts("s3://b/a/thumbs/x.jpg"));
        assert!(Filter::new(&[], &[]).unwrap().accepts("s3://b/anything"));
        let err = Filter::new(&["ok*".into()], &["fine".into(), "[bad".into()]).unwrap_err();
        assert_eq!((err.list, err.index), ("excludes", 1));
    }
}
