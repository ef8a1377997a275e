//! A deployed project's special files, as Cortex defines them: `.env` (the
//! predictor's environment), `dependencies.sh` (run with bash before the
//! Python packages are installed), `requirements.txt` (installed with pip)
//! and `conda-packages.txt` (refused: batchmill installs no conda packages).

/// Variables exported into the predictor's environment, `VARIABLE=value` a line.
pub const DOTENV: &str = ".env";
/// A bash script run once per pipeline version on each worker, first.
pub const DEPENDENCIES: &str = "dependencies.sh";
/// Python packages, installed with pip.
pub const REQUIREMENTS: &str = "requirements.txt";
/// Conda packages, which batchmill does not install.
pub const CONDA_PACKAGES: &str = "conda-packages.txt";

/// A `.env` line that is not `VARIABLE=value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".env line {line}: {why}")]
pub struct DotEnvError {
    pub line: usize,
    pub why: String,
}

/// The variables of a `.env` file, in order: `VARIABLE=value` lines, with
/// blank lines and `#` comments skipped, an optional `export ` before the
/// name, and the value optionally in single quotes (taken as is) or double
/// quotes (`\n`, `\"` and `\\` unescaped).
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, DotEnvError> {
    let mut vars = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| DotEnvError { line: i + 1, why: why.to_owned() };
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (name, value) = line.split_once('=').ok_or_else(|| bad("expected VARIABLE=value"))?;
        let name = name.trim_end();
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad("a variable name is letters, digits and '_', not starting with a digit"));
        }
        vars.push((name.to_owned(), unquote(value.trim()).ok_or_else(|| bad("unterminated quote"))?));
    }
    Ok(vars)
}

/// A value without its quotes; None if a quote is left open.
fn unquote(value: &str) -> Option<String> {
    let quoted = |q: char| value.len() >= 2 && value.starts_with(q) && value.ends_with(q);
    if quoted('\'') {
        return Some(value[1..value.len() - 1].to_owned());
    }
    if quoted('"') {
        let inner = &value[1..value.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match (c, c == '\\') {
                (_, true) => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                },
                (c, false) => out.push(c),
            }
        }
        return Some(out);
    }
    if value.starts_with(['"', '\'']) { None } else { Some(value.to_owned()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_variables_as_cortex_projects_write_them() {
        let text = "# settings\nMODEL_BUCKET=models\n\nexport REGION = us-west-2\nGREETING=\"hello \\\"you\\\"\\nthere\"\nRAW='a \\n b'\nEMPTY=\n";
        let vars = parse_dotenv(text).unwrap();
        let expected = [
            ("MODEL_BUCKET", "models"),
            ("REGION", "us-west-2"),
            ("GREETING", "hello \"you\"\nthere"),
            ("RAW", "a \\n b"),
            ("EMPTY", ""),
        ];
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(vars, expected);
    }

    #[test]
    fn a_bad_line_is_named() {
        assert_eq!(parse_dotenv("A=1\nnot a variable\n").unwrap_err().line, 2);
        assert_eq!(parse_dotenv("1A=1").unwrap_err().line, 1);
        let err = parse_dotenv("A=1\n\nB=\"open").unwrap_err();
        assert_eq!(err.to_string(), ".env line 3: unterminated quote");
    }
}
