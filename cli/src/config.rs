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
//!     tls: true                    # the system's roots
//!   dev-tls:
//!     endpoint: 127.0.0.1:7410
//!     ca_cert: /path/to/ca.pem     # trust this CA (TLS implied)
//!     client_cert: /path/to/client.pem   # for a gateway that asks (mTLS)
//!     client_key: /path/to/client.key
//! ```
//!
//! `--profile` (or `BATCHMILL_PROFILE`) picks one, else `default`; `--addr`,
//! `--api-key`, `--tls`, `--ca-cert`, `--client-cert` and `--client-key` (or
//! their environment variables) override it. An `https://` endpoint means
//! TLS.

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
    /// TLS to the gateway, trusting the system's roots (or `ca_cert`).
    #[serde(default)]
    tls: bool,
    ca_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

/// What the command line says (each also from its environment variable).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub addr: Option<String>,
    pub api_key: Option<String>,
    pub tls: bool,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// TLS to the gateway.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Trust this CA; None: the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// A client certificate and its key, for a gateway that asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Where to connect and with which key.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// host:port.
    pub endpoint: String,
    pub api_key: Option<String>,
    /// None: in the clear.
    pub tls: Option<Tls>,
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

/// The target from the `flags`, the `profile` asked for, and the config
/// file at `path`.
pub fn resolve(path: Option<PathBuf>, profile: Option<&str>, flags: Flags) -> anyhow::Result<Target> {
    let Flags { addr, api_key, .. } = flags.clone();
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
    let key = match (api_key, chosen.api_key.clone(), chosen.api_key_file.clone()) {
        (Some(key), _, _) | (None, Some(key), _) => Some(key),
        (None, None, Some(file)) => Some(
            std::fs::read_to_string(&file)
                .with_context(|| format!("reading the API key file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None, None) => None,
    };
    let endpoint = addr.or(chosen.endpoint.clone()).unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let (endpoint, https) = match endpoint.split_once("://") {
        Some(("https", rest)) => (rest.to_owned(), true),
        Some(("http", rest)) => (rest.to_owned(), false),
        Some((scheme, _)) => bail!("endpoint {endpoint}: {scheme}:// is not http:// or https://"),
        None => (endpoint, false),
    };
    let tls = tls(&flags, &chosen, https, &shown)?;
    Ok(Target { endpoint: endpoint.trim_end_matches('/').to_owned(), api_key: key, tls })
}

/// TLS as the flags, then the profile, ask for it.
fn tls(flags: &Flags, profile: &Profile, https: bool, shown: &str) -> anyhow::Result<Option<Tls>> {
    let ca_cert = flags.ca_cert.clone().or_else(|| profile.ca_cert.clone());
    let cert = flags.client_cert.clone().or_else(|| profile.client_cert.clone());
    let key = flags.client_key.clone().or_else(|| profile.client_key.clone());
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("{shown}: a client certificate needs its key, and a key its certificate (client_cert, client_key)"),
    };
    if !(flags.tls || profile.tls || https || ca_cert.is_some() || client.is_some()) {
        return Ok(None);
    }
    Ok(Some(Tls { ca_cert, client }))
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
            let flags = Flags { addr: addr.map(Into::into), api_key: key.map(Into::into), ..Flags::default() };
            resolve(Some(path.clone()), profile, flags).unwrap()
        };
        let plain =
            |endpoint: &str, key: &str| Target { endpoint: endpoint.into(), api_key: Some(key.into()), tls: None };
        assert_eq!(target(None, None, None), plain("a:1", "ka"));
        assert_eq!(target(Some("b"), None, None), plain("b:2", "kb"));
        assert_eq!(target(Some("b"), Some("c:3"), Some("kc")), plain("c:3", "kc"));
        let none = resolve(Some(dir.path().join("absent.yaml")), None, Flags::default()).unwrap();
        assert_eq!(none, Target { endpoint: DEFAULT_ENDPOINT.into(), api_key: None, tls: None });
    }

    #[test]
    fn a_missing_profile_or_a_bad_file_is_named() {
        let (_dir, path) = file("profiles:\n  a: {endpoint: 'a:1'}\n");
        let e = resolve(Some(path.clone()), Some("prod"), Flags::default()).unwrap_err().to_string();
        assert!(e.contains("no profile \"prod\"") && e.contains("it has: a"), "{e}");
        let (_dir, path) = file("profiles:\n  a: {endpoint: 'a:1', colour: red}\n");
        let e = format!("{:#}", resolve(Some(path), None, Flags::default()).unwrap_err());
        assert!(e.contains("colour"), "{e}");
        let (_dir, path) = file("default: a\nprofiles:\n  a: {endpoint: 'a:1', client_cert: c.pem}\n");
        let e = resolve(Some(path), None, Flags::default()).unwrap_err().to_string();
        assert!(e.contains("client_key"), "{e}");
    }

    #[test]
    fn tls_comes_from_the_profile_a_flag_or_an_https_endpoint() {
        let (_dir, path) = file(
            "default: a\nprofiles:\n  a: {endpoint: 'a:1', ca_cert: ca.pem}\n  b: {endpoint: 'b:2'}\n  c: {endpoint: 'https://c:3/', tls: true}\n",
        );
        let with = |profile: &str, flags: Flags| resolve(Some(path.clone()), Some(profile), flags).unwrap();
        let a = with("a", Flags::default());
        assert_eq!(a.tls, Some(Tls { ca_cert: Some("ca.pem".into()), client: None }));
        assert_eq!(with("b", Flags::default()).tls, None);
        assert_eq!(with("b", Flags { tls: true, ..Flags::default() }).tls, Some(Tls::default()));
        let c = with("c", Flags::default());
        assert_eq!((c.endpoint.as_str(), c.tls), ("c:3", Some(Tls::default())));
        let client = Flags { client_cert: Some("c.pem".into()), client_key: Some("c.key".into()), ..Flags::default() };
        assert_eq!(with("b", client).tls, Some(Tls { ca_cert: None, client: Some(("c.pem".into(), "c.key".into())) }));
    }
}
