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
//! in its length, whatever the pattern. They match the key's UTF-8 bytes:
//! `*` and `**` as runs of bytes (a run of bytes without `/` is a run of
//! whole characters in UTF-8), `?` and classes as one whole character. A
//! byte-level `[^/]` is one byte range where a Unicode one is an automaton
//! over every UTF-8 sequence, and every submission compiles its globs.

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
    regex: regex::bytes::Regex,
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
                '?' => out.push_str("(?u:[^/])"),
                '[' => {
                    let negated = chars.next_if_eq(&'!').is_some();
                    let mut members = String::new();
                    loop {
                        match chars.next() {
                            None => return Err(err("has a [ with no closing ]".into())),
                            Some(']') if !members.is_empty() => break,
                            Some(']') => return Err(err("has an empty []".into())),
                            // A range: its upper end is taken as it is, even a `-`.
                            Some('-') if !members.is_empty() && chars.peek().is_some_and(|c| *c != ']') => {
                                let upper = chars.next().map(|c| regex::escape(&c.to_string())).unwrap_or_default();
                                members.push('-');
                                members.push_str(&upper);
                            }
                            // A literal `-` comes escaped too.
                            Some(c) => members.push_str(&regex::escape(&c.to_string())),
                        }
                    }
                    // A class never matches the separator.
                    if negated {
                        out.push_str(&format!("(?u:[^/{members}])"));
                    } else {
                        out.push_str(&format!("(?u:[{members}&&[^/]])"));
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
        let regex = regex::bytes::RegexBuilder::new(&out)
            .unicode(false)
            .build()
            .map_err(|e| err(format!("cannot be compiled: {e}")))?;
        Ok(Glob { pattern: pattern.to_owned(), regex })
    }

    /// Whether `path` (an `s3://bucket/key`) matches.
    pub fn matches(&self, path: &str) -> bool {
        self.regex.is_match(path.as_bytes())
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
    fn dashes_in_classes() {
        assert!(m("s3://b/[-a]", "s3://b/-") && m("s3://b/[-a]", "s3://b/a"), "a leading - is itself");
        assert!(m("s3://b/[a-]", "s3://b/-") && !m("s3://b/[a-]", "s3://b/b"), "a trailing - is itself");
        assert!(m("s3://b/[*--a]", "s3://b/,") && m("s3://b/[*--a]", "s3://b/-"), "a range up to -");
        assert!(m("s3://b/[*--a]", "s3://b/a") && !m("s3://b/[*--a]", "s3://b/."), "then a");
        assert!(m("s3://b/[!-]", "s3://b/a") && !m("s3://b/[!-]", "s3://b/-"));
    }

    #[test]
    fn characters_beyond_ascii_match_whole() {
        assert!(m("s3://b/*.jpg", "s3://b/été.jpg"));
        assert!(m("s3://b/ét?.jpg", "s3://b/été.jpg"), "? is one character of two bytes");
        assert!(!m("s3://b/ét??.jpg", "s3://b/été.jpg"), "not one byte");
        assert!(m("s3://b/[éè]t[é].jpg", "s3://b/été.jpg"));
        assert!(m("s3://b/[а-я]x", "s3://b/жx"));
        assert!(!m("s3://b/[!é]x", "s3://b/éx"));
        assert!(m("s3://b/[!é]x", "s3://b/ëx"));
        assert!(m("s3://b/{été,hiver}/**", "s3://b/hiver/日本/x"));
        assert!(m("s3://b/日本/*", "s3://b/日本/語"));
        assert!(!m("s3://b/日本/*", "s3://b/日本/語/x"));
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

    /// A glob as a sequence: characters, `*`, `**`, `?`, classes, and
    /// alternatives of sequences.
    #[derive(Debug, Clone)]
    enum Part {
        Char(char),
        Star,
        DoubleStar,
        One,
        Class { negated: bool, ranges: Vec<(char, char)> },
        Alternatives(Vec<Vec<Part>>),
    }

    /// The glob's text, as a user would write it.
    fn text(parts: &[Part]) -> String {
        parts
            .iter()
            .map(|part| match part {
                Part::Char(c) if "*?[]{},\\".contains(*c) => format!("\\{c}"),
                Part::Char(c) => c.to_string(),
                // Apart from a `*` before it, which would make a `**`.
                Part::Star => "{*}".into(),
                Part::DoubleStar => "**".into(),
                Part::One => "?".into(),
                Part::Class { negated, ranges } => {
                    let members: String = ranges
                        .iter()
                        .map(|(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
                        .collect();
                    format!("[{}{members}]", if *negated { "!" } else { "" })
                }
                Part::Alternatives(alternatives) => {
                    format!("{{{}}}", alternatives.iter().map(|a| text(a)).collect::<Vec<_>>().join(","))
                }
            })
            .collect()
    }

    /// Whether `parts` match all of `path`, the slow and obvious way:
    /// backtracking over characters.
    fn reference(parts: &[Part], path: &[char]) -> bool {
        let Some((first, rest)) = parts.split_first() else { return path.is_empty() };
        let one = |ok: &dyn Fn(char) -> bool| path.first().is_some_and(|c| ok(*c)) && reference(rest, &path[1..]);
        match first {
            Part::Char(c) => one(&|p| p == *c),
            Part::One => one(&|p| p != '/'),
            Part::Class { negated, ranges } => {
                one(&|p| p != '/' && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&p)) != *negated)
            }
            Part::Star => {
                (0..=path.len()).take_while(|&n| !path[..n].contains(&'/')).any(|n| reference(rest, &path[n..]))
            }
            Part::DoubleStar => (0..=path.len()).any(|n| reference(rest, &path[n..])),
            Part::Alternatives(alternatives) => alternatives.iter().any(|a| {
                let joined: Vec<Part> = a.iter().chain(rest).cloned().collect();
                reference(&joined, path)
            }),
        }
    }

    fn character() -> impl proptest::strategy::Strategy<Value = char> {
        proptest::sample::select(vec!['a', 'b', 'é', '日', '/', '.', '*', '-', '{', ','])
    }

    fn parts() -> impl proptest::strategy::Strategy<Value = Vec<Part>> {
        use proptest::prelude::*;
        // A `-` in a class is tested on its own (`dashes_in_classes`).
        let member = || proptest::sample::select(vec!['a', 'b', 'é', '日', '/', '.', '*', '{', ',']);
        let range = (member(), member()).prop_map(|(a, b)| if a <= b { (a, b) } else { (b, a) });
        let class = (any::<bool>(), proptest::collection::vec(range, 1..3))
            .prop_map(|(negated, ranges)| Part::Class { negated, ranges });
        let part = prop_oneof![
            4 => character().prop_map(Part::Char),
            2 => Just(Part::Star),
            1 => Just(Part::DoubleStar),
            1 => Just(Part::One),
            1 => class,
        ];
        let leaf = proptest::collection::vec(part, 0..6);
        leaf.prop_recursive(2, 24, 3, |inner| {
            let alternatives = proptest::collection::vec(inner.clone(), 1..4).prop_map(Part::Alternatives);
            proptest::collection::vec(
                prop_oneof![inner.prop_map(|p| p.into_iter().next()), alternatives.prop_map(Some)],
                0..4,
            )
            .prop_map(|parts| parts.into_iter().flatten().collect())
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The compiled glob matches exactly what a backtracking matcher of
        /// the same glob matches.
        #[test]
        fn compiled_globs_match_as_backtracking_does(
            parts in parts(),
            paths in proptest::collection::vec(proptest::collection::vec(character(), 0..8), 1..8),
        ) {
            let pattern = text(&parts);
            if pattern.is_empty() {
                // Refused (`bad_globs_say_what_is_wrong`).
                return Ok(());
            }
            let glob = Glob::new(&pattern).unwrap();
            for path in paths {
                let text: String = path.iter().collect();
                proptest::prop_assert_eq!(glob.matches(&text), reference(&parts, &path), "{:?} on {:?}", pattern, text);
            }
        }
    }
}
