//! Profiles: where a gateway is and the key to it, kept in a YAML file so
//! that commands need no flags. The file is `$BATCHMILL_CONFIG`, else
//! `$XDG_CONFIG_HOME/batchmill/config.yaml`, else
//! `~/.config/batchmill/config.yaml`:
//!
//! ```yaml
//! default: local
//! profiles:
//!   local:
//!     endpoint: 127.0.0.1:7410
//!     api_key: <key_id>.<secret>
//!   prod:
//!     endpoint: batchmill.example.com:443
//!     api_key_file: /home/me/.batchmill-prod-key
//! ```
//!
//! `--profile` (or `BATCHMILL_PROFILE`) picks one, else `default`; `--addr`
//! and `--api-key` (or their environment variables) override it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// The gateway when nothing names one: the local cluster's.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7410";

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    endpoint: Option<String>,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    /// TLS to the gateway; refused until the client has TLS.
    #[serde(default)]
    tls: bool,
}

/// Where to connect and with which key.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub endpoint: String,
    pub api_key: Option<String>,
}

/// The config file's path.
pub fn path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BATCHMILL_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("batchmill/config.yaml"))
}

/// The target from the flags (`addr`, `api_key`), the `profile` asked for,
/// and the config file at `path`.
pub fn resolve(
    path: Option<PathBuf>,
    profile: Option<&str>,
    addr: Option<String>,
    api_key: Option<String>,
) -> anyhow::Result<Target> {
    let file = match &path {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_yaml::from_str::<File>(&text).with_context(|| format!("{}", path.display()))?
        }
        _ => File::default(),
    };
    let shown = path.as_ref().map_or_else(|| "(no config file)".to_owned(), |p| p.display().to_string());
    let chosen = match profile.map(str::to_owned).or(file.default.clone()) {
        Some(name) => file.profiles.get(&name).cloned().with_context(|| {
            let known: Vec<&str> = file.profiles.keys().map(String::as_str).collect();
            format!("no profile {name:?} in {shown} (it has: {})", known.join(", "))
        })?,
        None => Profile::default(),
    };
    if chosen.tls {
        bail!("{shown}: tls: true is not supported yet (the client speaks plain HTTP/2 only)");
    }
    let key = match (api_key, chosen.api_key, chosen.api_key_file) {
        (Some(key), _, _) | (None, Some(key), _) => Some(key),
        (None, None, Some(file)) => Some(
            std::fs::read_to_string(&file)
                .with_context(|| format!("reading the API key file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None, None) => None,
    };
    Ok(Target { endpoint: addr.or(chosen.endpoint).unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()), api_key: key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn flags_beat_the_profile_which_beats_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "kb\n").unwrap();
        let path = dir.path().join("config.yaml");
        let text = format!(
            "default: a\nprofiles:\n  a: {{endpoint: 'a:1', api_key: ka}}\n  b: {{endpoint: 'b:2', api_key_file: {}}}\n",
            key_file.display()
        );
        std::fs::write(&path, text).unwrap();
        let target = |profile: Option<&str>, addr: Option<&str>, key: Option<&str>| {
            resolve(Some(path.clone()), profile, addr.map(Into::into), key.map(Into::into)).unwrap()
        };
        assert_eq!(target(None, None, None), Target { endpoint: "a:1".into(), api_key: Some("ka".into()) });
        assert_eq!(target(Some("b"), None, None), Target { endpoint: "b:2".into(), api_key: Some("kb".into()) });
        assert_eq!(
            target(Some("b"), Some("c:3"), Some("kc")),
            Target { endpoint: "c:3".into(), api_key: Some("kc".into()) }
        );
        let none = resolve(Some(dir.path().join("absent.yaml")), None, None, None).unwrap();
        assert_eq!(none, Target { endpoint: DEFAULT_ENDPOINT.into(), api_key: None });
    }

    #[test]
    fn a_missing_profile_or_a_bad_file_is_named() {
        let (_dir, path) = file("profiles:\n  a: {endpoint: 'a:1'}\n");
        let e = resolve(Some(path.clone()), Some("prod"), None, None).unwrap_err().to_string();
        assert!(e.contains("no profile \"prod\"") && e.contains("it has: a"), "{e}");
        let (_dir, path) = file("profiles:\n  a: {endpoint: 'a:1', colour: red}\n");
        let e = format!("{:#}", resolve(Some(path), None, None, None).unwrap_err());
        assert!(e.contains("colour"), "{e}");
        let (_dir, path) = file("default: a\nprofiles:\n  a: {endpoint: 'a:1', tls: true}\n");
        let e = resolve(Some(path), None, None, None).unwrap_err().to_string();
        assert!(e.contains("tls"), "{e}");
    }
}
