//! A real PostgreSQL (Debian's) for the sandbox: a fresh cluster in a
//! temporary directory, listening on a free loopback port, with a user
//! `batchmill` whose password is random. PostgreSQL refuses to run as root,
//! so as root it runs as the `postgres` user (through `setpriv`, which
//! execs, so the sandbox's pid is PostgreSQL's own).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{Process, free_port};

/// The user the sandbox's PostgreSQL makes.
pub const USER: &str = "batchmill";
/// Its database.
pub const DATABASE: &str = "batchmill";

/// A running PostgreSQL.
pub struct Postgres {
    pub port: u16,
    /// The postmaster's pid, to stop it so that it reaps its backends.
    pid: u32,
    pub password: String,
    /// Its data; removed when dropped, after the process is gone.
    dir: tempfile::TempDir,
}

impl Postgres {
    /// `postgresql://127.0.0.1:<port>/batchmill`, with no credentials in it.
    pub fn url(&self) -> String {
        format!("postgresql://127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The same as a JDBC URL, as Modzy's jobs give it.
    pub fn jdbc_url(&self) -> String {
        format!("jdbc:{}", self.url())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client connected as the sandbox's user.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(USER)
            .password(&self.password)
            .dbname(DATABASE)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

impl Drop for Postgres {
    /// An immediate shutdown (SIGQUIT): the postmaster stops its backends
    /// and reaps them, rather than leaving them to whoever adopts orphans.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-QUIT").arg(self.pid.to_string()).status();
        let stat = format!("/proc/{}/stat", self.pid);
        for _ in 0..100 {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            // Gone, or a zombie its parent (the sandbox) reaps.
            if state.split(") ").nth(1).is_none_or(|rest| rest.starts_with('Z')) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Where Debian keeps PostgreSQL's programs (the newest version).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed: run deploy/local/install-deps")?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().context("no PostgreSQL server in /usr/lib/postgresql: run deploy/local/install-deps")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `program args` as the `postgres` user when this process is root.
fn as_owner(program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    if is_root() {
        let mut all = vec!["--reuid=postgres".to_owned(), "--regid=postgres".into(), "--init-groups".into()];
        all.push(program.to_string_lossy().into_owned());
        all.extend(args.iter().cloned());
        (PathBuf::from("setpriv"), all)
    } else {
        (program.to_path_buf(), args.to_vec())
    }
}

fn chown_to_postgres(path: &Path) -> anyhow::Result<()> {
    if is_root() {
        let status = Command::new("chown").arg("-R").arg("postgres:postgres").arg(path).status()?;
        anyhow::ensure!(status.success(), "chown {} failed", path.display());
    }
    Ok(())
}

/// Starts a fresh PostgreSQL; `log` is where its output goes.
pub async fn start(log: &Path) -> anyhow::Result<(Postgres, Process)> {
    let bin = bin_dir()?;
    let dir = tempfile::Builder::new().prefix("batchmill-pg-").tempdir()?;
    let (data, socket) = (dir.path().join("data"), dir.path().join("socket"));
    std::fs::create_dir_all(&socket)?;
    let password = format!("pg-{:016x}", fastrand::u64(..));
    let pwfile = dir.path().join("pwfile");
    std::fs::write(&pwfile, &password)?;
    chown_to_postgres(dir.path())?;
    let initdb = [
        "-D".to_owned(),
        data.to_string_lossy().into_owned(),
        "-U".into(),
        USER.into(),
        "--auth=scram-sha-256".into(),
        format!("--pwfile={}", pwfile.display()),
        "-E".into(),
        "UTF8".into(),
        "--no-sync".into(),
    ];
    let (program, args) = as_owner(&bin.join("initdb"), &initdb);
    let out = Command::new(&program).args(&args).output().with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::remove_file(&pwfile)?;
    let port = free_port()?;
    let server = [
        "-D".to_owned(),
        data.to_string_lossy().into_owned(),
        "-p".into(),
        port.to_string(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-k".into(),
        socket.to_string_lossy().into_owned(),
        "-c".into(),
        "fsync=off".into(),
    ];
    let (program, args) = as_owner(&bin.join("postgres"), &server);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = Process::spawn("postgres", &program, &args, &[], log)?;
    let postgres = Postgres { port, pid: process.id(), password, dir };
    // Ready once it answers as the sandbox's user; then the database.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let admin = loop {
        let connected = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user(USER)
            .password(&postgres.password)
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await;
        match connected {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                break client;
            }
            Err(e) if tokio::time::Instant::now() > deadline => bail!("PostgreSQL did not start: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    admin.batch_execute(&format!("CREATE DATABASE {DATABASE}")).await?;
    Ok((postgres, process))
}
