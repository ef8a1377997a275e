//! `google.api.http` path templates: `/v1/jobs/{job_id}:cancel`.
//!
//! Supported: literal segments, `{field}` and `{field=*}` (one segment),
//! `{field=**}` (the rest of the path, last only), `*` and `**` wildcards,
//! and a trailing `:verb`.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A variable bound to one segment.
    Var(String),
    /// A variable bound to the rest of the path.
    Rest(String),
    /// `*`: any one segment, not bound.
    Any,
    /// `**`: any rest of the path, not bound.
    AnyRest,
}

/// Why a path template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {template:?}: {why}")]
pub struct TemplateError {
    pub template: String,
    pub why: String,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    verb: Option<String>,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<PathTemplate, TemplateError> {
        let bad = |why: String| TemplateError { template: template.to_owned(), why };
        let path = template.strip_prefix('/').ok_or_else(|| bad("must start with /".into()))?;
        // A verb is a ':' after the last '/' and outside braces.
        let (path, verb) = match path.rfind(':') {
            Some(i) if !path[i..].contains('/') && !path[i..].contains('}') => {
                (&path[..i], Some(path[i + 1..].to_owned()))
            }
            _ => (path, None),
        };
        let mut segments = Vec::new();
        for raw in path.split('/') {
            let seg = if let Some(inner) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                match inner.split_once('=') {
                    None | Some((_, "*")) => Segment::Var(inner.split('=').next().unwrap_or(inner).to_owned()),
                    Some((name, "**")) => Segment::Rest(name.to_owned()),
                    Some((_, pattern)) => {
                        return Err(bad(format!("pattern {pattern:?} is not supported")));
                    }
                }
            } else if raw == "*" {
                Segment::Any
            } else if raw == "**" {
                Segment::AnyRest
            } else if raw.is_empty() || raw.contains(['{', '}']) {
                return Err(bad(format!("bad segment {raw:?}")));
            } else {
                Segment::Literal(raw.to_owned())
            };
            segments.push(seg);
        }
        if let Some(i) = segments.iter().position(|s| matches!(s, Segment::Rest(_) | Segment::AnyRest))
            && i + 1 != segments.len()
        {
            return Err(bad("** must be last".into()));
        }
        Ok(PathTemplate { segments, verb })
    }

    /// How specific the template is: a verb counts most, then literals.
    pub fn specificity(&self) -> (bool, usize) {
        (self.verb.is_some(), self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count())
    }

    /// The template as an OpenAPI path, `/v1/jobs/{job_id}:cancel`, and the
    /// names of its parameters in order: each variable's field path, and
    /// `wildcard1`, `wildcard2`… for unbound `*` and `**`.
    pub fn openapi(&self) -> (String, Vec<String>) {
        let (mut path, mut params) = (String::new(), Vec::new());
        for seg in &self.segments {
            path.push('/');
            let name = match seg {
                Segment::Literal(lit) => {
                    path.push_str(lit);
                    continue;
                }
                Segment::Var(name) | Segment::Rest(name) => name.clone(),
                Segment::Any | Segment::AnyRest => format!("wildcard{}", params.len() + 1),
            };
            path.push_str(&format!("{{{name}}}"));
            params.push(name);
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        (path, params)
    }

    /// Whether the variable `name` takes the rest of the path, slashes and
    /// all (`{name=**}`).
    pub fn spans_segments(&self, name: &str) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Rest(n) if n == name))
    }

    /// The variables bound by `path` (percent-decoded), if it matches.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => {
                let (rest, v) = path.rsplit_once(':')?;
                if v != verb || v.contains('/') {
                    return None;
                }
                rest
            }
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        let mut vars = Vec::new();
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Rest(name) => {
                    let rest = parts.get(i..)?.join("/");
                    if rest.is_empty() {
                        return None;
                    }
                    vars.push((name.clone(), decode(&rest)?));
                    return Some(vars);
                }
                Segment::AnyRest => return (i < parts.len()).then_some(vars),
                Segment::Literal(lit) => {
                    if next(&parts, &mut i)? != lit {
                        return None;
                    }
                }
                Segment::Var(name) => vars.push((name.clone(), decode(next(&parts, &mut i)?)?)),
                Segment::Any => {
                    next(&parts, &mut i)?;
                }
            }
        }
        (i == parts.len()).then_some(vars)
    }
}

/// The next non-empty path segment.
fn next<'a>(parts: &[&'a str], i: &mut usize) -> Option<&'a str> {
    let part = *parts.get(*i)?;
    *i += 1;
    (!part.is_empty()).then_some(part)
}

/// Percent-decodes a path segment; `None` if it is malformed.
pub(crate) fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(t: &str, p: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(t).unwrap().matches(p)
    }

    #[test]
    fn matches_literals_variables_and_verbs() {
        assert_eq!(vars("/v1/jobs", "/v1/jobs"), Some(vec![]));
        assert_eq!(vars("/v1/jobs/{job_id}", "/v1/jobs/abc"), Some(vec![("job_id".into(), "abc".into())]));
        assert_eq!(
            vars("/v1/jobs/{job_id}:cancel", "/v1/jobs/abc:cancel"),
            Some(vec![("job_id".into(), "abc".into())])
        );
        assert_eq!(vars("/v1/jobs/{job_id}:cancel", "/v1/jobs/abc"), None);
        assert_eq!(
            vars("/v1/jobs/{job_id}", "/v1/jobs/abc:cancel"),
            Some(vec![("job_id".into(), "abc:cancel".into())])
        );
        assert_eq!(vars("/v1/jobs/{job_id}", "/v1/jobs/"), None);
        assert_eq!(vars("/v1/jobs/{job_id}", "/v1/jobs/a/b"), None);
        assert_eq!(vars("/v1/files/{path=**}", "/v1/files/a/b%20c"), Some(vec![("path".into(), "a/b c".into())]));
        assert_eq!(vars("/v1/*/x", "/v1/any/x"), Some(vec![]));
    }

    #[test]
    fn writes_openapi_paths() {
        let openapi = |t: &str| PathTemplate::parse(t).unwrap().openapi();
        assert_eq!(openapi("/v1/jobs/{job_id}:cancel"), ("/v1/jobs/{job_id}:cancel".into(), vec!["job_id".into()]));
        assert_eq!(openapi("/v1/files/{path=**}"), ("/v1/files/{path}".into(), vec!["path".into()]));
        assert_eq!(openapi("/v1/*/x/{a}"), ("/v1/{wildcard1}/x/{a}".into(), vec!["wildcard1".into(), "a".into()]));
        assert!(PathTemplate::parse("/v1/files/{path=**}").unwrap().spans_segments("path"));
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(PathTemplate::parse("v1/jobs").is_err());
        assert!(PathTemplate::parse("/v1/{a=**}/x").is_err());
        assert!(PathTemplate::parse("/v1/{a=b/*}").is_err());
        assert!(PathTemplate::parse("/v1//x").is_err());
    }
}
