//! The cluster sandbox: real etcd, NATS with JetStream and an S3 server on
//! free loopback ports, and the real service binaries, as a user would run
//! them. Tests drive it through the public gRPC and REST API and check what
//! a user would see.
//!
//! Tools are found on `PATH` or in `$BATCHMILL_TOOLS_DIR/venv/bin` (default
//! `.batchmill/tools`, filled by `deploy/local/install-deps`); service
//! binaries in `$BATCHMILL_BIN_DIR` (default `target/debug`).

pub mod chaos;
mod clients;
mod clock;
pub mod collector;
mod control;
mod echo;
mod jobs;
mod ports;
pub mod postgres;
mod process;
mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use batchmill_blob::{Blob, S3Config};

pub use clients::{Authed, Bearer, http_anonymous, http_as, member_key};
pub use echo::{assert_echo_results, assert_echo_results_but, echo_job};
pub use ports::free_port;
pub use process::Process;
pub use tls::{Certs, GatewayTls, install_provider};

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    /// Seconds before an unacked batch is redelivered.
    pub ack_wait_secs: u64,
    /// Deliveries of a batch before it fails for good.
    pub max_deliver: u32,
    /// Start batchmill's services; false starts only etcd, NATS and S3.
    pub services: bool,
    /// Start a standby scheduler too ("scheduler-standby"), which waits in
    /// the election and serves only once it leads.
    pub standby_scheduler: bool,
    /// Environment variables the workers get on top of the sandbox's.
    pub worker_env: Vec<(String, String)>,
    /// Start a PostgreSQL too (Debian's), for SQL sources.
    pub postgres: bool,
    /// The schedulers' admission queues (`BATCHMILL_QUEUES`).
    pub queues: String,
    /// Environment variables every service gets on top of the sandbox's.
    pub service_env: Vec<(String, String)>,
    /// Run worker-0 on a clock that can be made to jump
    /// ([`Sandbox::jump_clock`]): libfaketime, preloaded.
    pub jumping_clock: bool,
    /// TLS on the gateway.
    pub tls: GatewayTls,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 2,
            ack_wait_secs: 30,
            max_deliver: 3,
            services: true,
            standby_scheduler: false,
            worker_env: Vec::new(),
            postgres: false,
            queues: String::new(),
            service_env: Vec::new(),
            jumping_clock: false,
            tls: GatewayTls::from_env(),
        }
    }
}

pub const ACCESS_KEY: &str = "sandbox";
pub const SECRET_KEY: &str = "sandbox-secret";
/// A second identity of the S3 server: a tenant's own keys, which jobs
/// bring as their credentials. Its secret is one no service is given.
pub const TENANT_ACCESS_KEY: &str = "tenant";
pub const TENANT_SECRET_KEY: &str = "tenant-own-secret-7f3a9c";
pub const BUCKET: &str = "batchmill";

/// A running cluster; everything it started is stopped when dropped.
pub struct Sandbox {
    /// The PostgreSQL started with `Options::postgres`; stopped first.
    pub postgres: Option<postgres::Postgres>,
    // Processes drop (and die) before their directories are removed.
    processes: Vec<Process>,
    dir: tempfile::TempDir,
    pub gateway: String,
    pub grpc_ports: Vec<(String, u16)>,
    pub etcd_url: String,
    pub nats_url: String,
    pub s3_url: String,
    /// The S3 server's metrics and fault control (`/faults`).
    pub s3_control: String,
    pub blob: Blob,
    /// A cluster admin key (account "admin"), as `deploy/local/up` makes.
    pub api_key: String,
    /// The gateway's certificates, when it speaks TLS.
    pub certs: Option<Certs>,
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Where install-deps puts its tools (venvs, models).
pub fn tools_dir() -> PathBuf {
    std::env::var_os("BATCHMILL_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".batchmill/tools"))
}

/// The reference embed model (all-MiniLM-L6-v2) that install-deps fetches.
pub fn embed_model() -> PathBuf {
    tools_dir().join("models/all-MiniLM-L6-v2")
}

/// A tool on PATH or in the project's tools venv.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let venv = tools_dir().join("venv/bin").join(name);
    if venv.exists() {
        return Ok(venv);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} not found: run deploy/local/install-deps"))
}

pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("BATCHMILL_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"))
            .join("debug")
    });
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} not built: run `cargo build --bins` first", path.display());
    }
    Ok(path)
}

impl Sandbox {
    pub async fn start(options: Options) -> anyhow::Result<Sandbox> {
        install_provider();
        // Sandboxes start one at a time across test processes: ports are
        // picked free, then bound by the processes a moment later, and a
        // sandbox starting in between could be handed the same ports.
        let lock = std::fs::File::create(std::env::temp_dir().join("batchmill-sandbox-start.lock"))?;
        lock.lock()?;
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_path_buf();
        let mut sandbox = Sandbox {
            processes: Vec::new(),
            postgres: None,
            dir,
            gateway: String::new(),
            grpc_ports: Vec::new(),
            etcd_url: String::new(),
            nats_url: String::new(),
            s3_url: String::new(),
            s3_control: String::new(),
            blob: Blob::new(&S3Config::default()).await,
            api_key: String::new(),
            certs: None,
        };
        if options.tls != GatewayTls::Off {
            let certs = Certs::make(&root.join("tls"), options.tls)?;
            tls::remember(&certs);
            sandbox.certs = Some(certs);
        }
        let env = sandbox.start_dependencies(&root, &options).await?;
        if options.postgres {
            let (postgres, process) = postgres::start(&root.join("postgres.log")).await?;
            sandbox.processes.push(process);
            sandbox.postgres = Some(postgres);
        }
        if options.services {
            sandbox.start_services(&root, &options, &env).await?;
        }
        sandbox.check_all_alive()?;
        Ok(sandbox)
    }

    /// Starts etcd, NATS and the S3 server; the environment the services get.
    async fn start_dependencies(&mut self, root: &Path, options: &Options) -> anyhow::Result<Vec<(String, String)>> {
        let sandbox = self;
        let (etcd, etcd_peer, nats, s3) = (free_port()?, free_port()?, free_port()?, free_port()?);
        let s3_control = free_port()?;
        let internal = sandbox.certs.clone().filter(|c| c.internal);
        let scheme = if internal.is_some() { "https" } else { "http" };
        let etcd_url = format!("{scheme}://127.0.0.1:{etcd}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_tls = internal.as_ref().map(Certs::etcd_server_args).unwrap_or_default();
        let nats_tls = internal.as_ref().map(Certs::nats_server_args).unwrap_or_default();
        if let Some(certs) = &internal {
            certs.use_for_this_process()?;
        }
        let mut args = etcd_args(&root.join("etcd"), &etcd_url, &peer_url);
        args.extend(etcd_tls);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sandbox.spawn("etcd", &tool("etcd")?, &args, &[])?;
        let nats_dir = root.join("nats").to_string_lossy().into_owned();
        let nats_port = nats.to_string();
        let args = ["-a", "127.0.0.1", "-p", &nats_port, "-js", "-sd", &nats_dir];
        let args: Vec<&str> = args.into_iter().chain(nats_tls.iter().map(String::as_str)).collect();
        sandbox.spawn("nats", &tool("nats-server")?, &args, &[])?;
        sandbox.spawn(
            "s3",
            &binary("batchmill-s3-server")?,
            &[
                "--listen",
                &format!("127.0.0.1:{s3}"),
                "--root",
                &root.join("s3").to_string_lossy(),
                "--buckets",
                BUCKET,
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
                "--extra-key",
                &format!("{TENANT_ACCESS_KEY}:{TENANT_SECRET_KEY}"),
                "--metrics-listen",
                &format!("127.0.0.1:{s3_control}"),
            ],
            &[],
        )?;
        for (name, port) in [("etcd", etcd), ("nats", nats), ("s3", s3)] {
            sandbox.wait_port(name, port).await?;
        }
        sandbox.api_key = admin_key(&etcd_url).await?;
        sandbox.etcd_url = etcd_url;
        sandbox.nats_url = format!("nats://127.0.0.1:{nats}");
        let s3_url = format!("http://127.0.0.1:{s3}");
        sandbox.s3_url = s3_url.clone();
        sandbox.s3_control = format!("http://127.0.0.1:{s3_control}");
        let mut env = sandbox.service_env(options)?;
        env.extend(internal.iter().flat_map(Certs::dependency_env));
        sandbox.blob = Blob::new(&S3Config {
            endpoint: Some(s3_url),
            region: "us-east-1".into(),
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        })
        .await;
        Ok(env)
    }

    /// The environment every service gets: where etcd, NATS and S3 are, and
    /// the cluster's settings.
    fn service_env(&self, options: &Options) -> anyhow::Result<Vec<(String, String)>> {
        Ok(vec![
            ("BATCHMILL_ETCD_ENDPOINTS".into(), self.etcd_url.clone()),
            ("BATCHMILL_NATS_URL".into(), self.nats_url.clone()),
            ("AWS_ENDPOINT_URL".into(), self.s3_url.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("BATCHMILL_OUTPUT_URI".into(), format!("s3://{BUCKET}/results")),
            ("BATCHMILL_STAGING_URI".into(), format!("s3://{BUCKET}/staging")),
            ("BATCHMILL_ACK_WAIT_SECS".into(), options.ack_wait_secs.to_string()),
            ("BATCHMILL_MAX_DELIVER".into(), options.max_deliver.to_string()),
            ("BATCHMILL_LEASE_TTL_SECS".into(), "3".into()),
            ("RUST_LOG".into(), "info".into()),
            // Python predictors run on the tools venv's interpreter, which has boto3.
            ("BATCHMILL_PYTHON".into(), tool("python3")?.to_string_lossy().into_owned()),
            // The embed pipeline's model, as deploy/local/install-deps fetches it.
            ("BATCHMILL_EMBED_MODEL".into(), embed_model().to_string_lossy().into_owned()),
            // Errors, not backtraces, in the logs tests show on failure.
            ("RUST_BACKTRACE".into(), "0".into()),
            // Seals jobs' own credentials (deploy/local/up makes one the same way).
            ("BATCHMILL_SECRET_KEY".into(), batchmill_core::sealed::ClusterKey::generate()?),
        ])
    }

    /// Starts batchmill's services and workers, and waits until each is healthy.
    async fn start_services(&mut self, root: &Path, options: &Options, env: &[(String, String)]) -> anyhow::Result<()> {
        let sandbox = self;
        let (lister, enqueuer, scheduler, gateway) = (free_port()?, free_port()?, free_port()?, free_port()?);
        let env: Vec<(String, String)> = env.iter().chain(&options.service_env).cloned().collect();
        let env = &env;
        let gateway_env: Vec<(String, String)> =
            env.iter().cloned().chain(sandbox.certs.iter().flat_map(Certs::gateway_env)).collect();
        let internal = sandbox.certs.iter().flat_map(Certs::service_env);
        let env: Vec<(String, String)> = env.iter().cloned().chain(internal).collect();
        let env = &env;
        let worker_env: Vec<(String, String)> = env.iter().chain(&options.worker_env).cloned().collect();
        let clock_env = if options.jumping_clock { sandbox.clock_env(&worker_env)? } else { worker_env.clone() };
        let mut services = vec![
            ("lister".to_owned(), "batchmill-lister", lister, vec![], env),
            (
                "enqueuer".to_owned(),
                "batchmill-enqueuer",
                enqueuer,
                vec![format!("--lister-url=http://127.0.0.1:{lister}")],
                env,
            ),
            (
                "scheduler".to_owned(),
                "batchmill-scheduler",
                scheduler,
                vec![
                    format!("--enqueuer-url=http://127.0.0.1:{enqueuer}"),
                    format!("--lister-url=http://127.0.0.1:{lister}"),
                    format!("--queues={}", options.queues),
                ],
                env,
            ),
            ("gateway".to_owned(), "batchmill-gateway", gateway, vec![], &gateway_env),
        ];
        for i in 0..options.workers {
            services.push((
                format!("worker-{i}"),
                "batchmill-worker",
                free_port()?,
                vec![
                    format!("--worker-id=sandbox-{i}"),
                    format!("--work-dir={}", root.join(format!("worker-{i}")).display()),
                ],
                if i == 0 { &clock_env } else { &worker_env },
            ));
        }
        for (name, bin, port, extra, env) in &services {
            let mut args = vec![format!("--listen=127.0.0.1:{port}")];
            args.extend(extra.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sandbox.spawn(name, &binary(bin)?, &args, env)?;
            sandbox.grpc_ports.push((name.clone(), *port));
        }
        sandbox.gateway = format!("127.0.0.1:{gateway}");
        for (name, _, port, _, _) in &services {
            if name == "gateway" && sandbox.certs.is_some() {
                sandbox.wait_gateway_tls().await?;
            } else {
                sandbox.wait_healthy(name, *port).await?;
            }
        }
        if options.standby_scheduler {
            let port = free_port()?;
            let args = [
                format!("--listen=127.0.0.1:{port}"),
                format!("--enqueuer-url=http://127.0.0.1:{enqueuer}"),
                format!("--lister-url=http://127.0.0.1:{lister}"),
                format!("--queues={}", options.queues),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sandbox.spawn("scheduler-standby", &binary("batchmill-scheduler")?, &args, env)?;
            sandbox.grpc_ports.push(("scheduler-standby".into(), port));
        }
        Ok(())
    }

    /// Every process is still running (none lost its port, and none exited
    /// when something it depends on went away).
    pub fn check_all_alive(&self) -> anyhow::Result<()> {
        self.processes.iter().try_for_each(Process::check_alive)
    }

    fn spawn(&mut self, name: &str, program: &Path, args: &[&str], env: &[(String, String)]) -> anyhow::Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        self.processes.push(Process::spawn(name, program, args, env, &log)?);
        Ok(())
    }

    fn process(&self, name: &str) -> anyhow::Result<&Process> {
        self.processes.iter().find(|p| p.name == name).with_context(|| format!("no process {name}"))
    }

    async fn wait_port(&self, name: &str, port: u16) -> anyhow::Result<()> {
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(());
            }
            self.process(name)?.check_alive()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{name} did not listen on {port}: {}", self.process(name)?.log_tail())
    }

    async fn wait_healthy(&self, name: &str, port: u16) -> anyhow::Result<()> {
        let tls = self.internal_tls()?;
        for _ in 0..600 {
            if serving_over(port, tls.clone()).await {
                return Ok(());
            }
            self.process(name)?.check_alive()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{name} not healthy on {port}: {}", self.process(name)?.log_tail())
    }

    /// The sandbox's own directory, removed with it: a place for files a
    /// test's predictor leaves behind.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Leaves the sandbox's directory (logs, data) in place when it is
    /// dropped, to look into after a failure; returns where it is.
    pub fn keep_dir(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// The gateway's REST base URL.
    pub fn rest_url(&self) -> String {
        let scheme = if self.certs.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.gateway)
    }

    fn process_mut(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.processes.iter_mut().find(|p| p.name == name).with_context(|| format!("no process {name}"))
    }
}

pub use batchmill_core::job::is_terminal;

/// Whether the gRPC server on `port` answers its health check SERVING
/// (within a second).
pub async fn serving(port: u16) -> bool {
    serving_over(port, None).await
}

/// [`serving`], over TLS with `tls` if given.
pub async fn serving_over(port: u16, tls: Option<tonic::transport::ClientTlsConfig>) -> bool {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let check = async {
        let endpoint = match tls {
            None => tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).ok()?,
            Some(tls) => tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                .ok()?
                .tls_config(tls)
                .ok()?,
        };
        let channel = endpoint.connect().await.ok()?;
        let answer = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.ok()?;
        Some(answer.get_ref().status == ServingStatus::Serving as i32)
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), check).await, Ok(Some(true)))
}

/// Asserts that a test script (`what`) ran to its end: it exited 0 and
/// printed "all checks passed"; else shows its output and the gateway's log.
pub fn assert_script_passed(sandbox: &Sandbox, what: &str, out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{what} failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sandbox.log_tail("gateway")
    );
}

/// etcd's flags: one member on loopback, its data in `dir`.
fn etcd_args(dir: &Path, client_url: &str, peer_url: &str) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let flags = [
        ("--name", "sandbox"),
        ("--logger", "zap"),
        ("--log-outputs", "stderr"),
        ("--data-dir", &dir),
        ("--listen-client-urls", client_url),
        ("--advertise-client-urls", client_url),
        ("--listen-peer-urls", peer_url),
        ("--initial-advertise-peer-urls", peer_url),
        ("--initial-cluster", &format!("sandbox={peer_url}")),
    ];
    flags.iter().flat_map(|(flag, value)| [(*flag).to_owned(), (*value).to_owned()]).collect()
}

/// Creates the first cluster admin key in the sandbox's etcd, as
/// `deploy/local/up` does with `batchmill-gateway admin-key`.
async fn admin_key(etcd_url: &str) -> anyhow::Result<String> {
    let etcd = batchmill_coord::Etcd::connect(&[etcd_url.to_owned()], Duration::from_secs(30)).await?;
    let accounts = batchmill_accounts::Accounts::new(std::sync::Arc::new(etcd));
    // A just-started etcd may take a moment to accept writes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match accounts.bootstrap("admin", "sandbox").await {
            Ok(key) => return Ok(key.reveal()),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
