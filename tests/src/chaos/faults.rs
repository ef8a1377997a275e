//! The faults the chaos suite injects, and how each is made: a process
//! killed (and started again a second later, as a supervisor would), paused
//! and resumed, a dependency down for a while, S3 failing a share of its
//! writes, a worker's wall clock stepped away and back.

use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::Sandbox;

/// A service of the cluster, as a fault picks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Gateway,
    Lister,
    Enqueuer,
    /// Whichever scheduler leads when the fault strikes.
    SchedulerLeader,
    /// One of the workers, picked at random.
    Worker,
}

/// A kind of fault; the figures are given per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// SIGKILL, then started again after [`RESTART_DELAY`].
    Kill(Service),
    /// SIGSTOP, then SIGCONT after a while.
    Pause(Service),
    /// NATS killed and started again after 5 to 30 s.
    NatsRestart,
    /// etcd killed and started again after 5 to 30 s.
    EtcdRestart,
    /// The S3 server killed and started again after 5 to 30 s.
    S3Outage,
    /// One S3 PUT in ten answered with a 500 for a while.
    S3PutErrors,
    /// worker-0's wall clock stepped minutes away, then back.
    ClockJump,
}

const SERVICES: [Service; 5] =
    [Service::Gateway, Service::Lister, Service::Enqueuer, Service::SchedulerLeader, Service::Worker];

/// How long a killed process stays dead before its supervisor starts it.
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The share of PUTs that fail during [`Kind::S3PutErrors`].
pub const PUT_ERROR_RATE: f64 = 0.1;

impl Kind {
    /// Every kind, in the order the figures list them.
    pub fn all() -> Vec<Kind> {
        let mut all: Vec<Kind> = SERVICES.iter().map(|s| Kind::Kill(*s)).collect();
        all.extend(SERVICES.iter().map(|s| Kind::Pause(*s)));
        all.extend([Kind::NatsRestart, Kind::EtcdRestart, Kind::S3Outage, Kind::S3PutErrors, Kind::ClockJump]);
        all
    }

    pub fn name(self) -> String {
        match self {
            Kind::Kill(s) => format!("SIGKILL {}", s.name()),
            Kind::Pause(s) => format!("SIGSTOP {}", s.name()),
            Kind::NatsRestart => "NATS restart".into(),
            Kind::EtcdRestart => "etcd restart".into(),
            Kind::S3Outage => "S3 outage".into(),
            Kind::S3PutErrors => "S3 PUT 500s (1 in 10)".into(),
            Kind::ClockJump => "worker clock jump".into(),
        }
    }
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Lister => "lister",
            Service::Enqueuer => "enqueuer",
            Service::SchedulerLeader => "scheduler leader",
            Service::Worker => "worker",
        }
    }
}

/// How long the faults that last a while last, in seconds.
#[derive(Debug, Clone)]
pub struct Durations {
    /// NATS, etcd and S3 down; S3 failing PUTs; a clock away.
    pub outage: (u64, u64),
    /// A process paused.
    pub pause: (u64, u64),
}

/// A fault as it was made.
#[derive(Debug, Clone)]
pub struct Injected {
    /// Which process, for how long, by how much.
    pub detail: String,
    /// From the fault's start to its end (the process started again or
    /// resumed, the dependency back, the clock back).
    pub lasted: Duration,
    /// When it ended; recovery is timed from here.
    pub ended: Instant,
}

fn secs(rng: &mut fastrand::Rng, (low, high): (u64, u64)) -> Duration {
    Duration::from_millis(rng.u64(low * 1000..=high * 1000))
}

/// Makes a fault of `kind` and waits for it to end.
pub async fn inject(
    sandbox: &mut Sandbox,
    kind: Kind,
    rng: &mut fastrand::Rng,
    durations: &Durations,
) -> anyhow::Result<Injected> {
    let started = Instant::now();
    let detail = match kind {
        Kind::Kill(service) => {
            let name = process_of(sandbox, service, rng).await?;
            sandbox.process_mut(&name)?.kill();
            tokio::time::sleep(RESTART_DELAY).await;
            sandbox.process_mut(&name)?.restart()?;
            name
        }
        Kind::Pause(service) => {
            let name = process_of(sandbox, service, rng).await?;
            let pause = secs(rng, durations.pause);
            sandbox.signal(&name, "STOP")?;
            tokio::time::sleep(pause).await;
            sandbox.signal(&name, "CONT")?;
            format!("{name} for {:.1} s", pause.as_secs_f64())
        }
        Kind::NatsRestart | Kind::EtcdRestart | Kind::S3Outage => {
            let name = match kind {
                Kind::NatsRestart => "nats",
                Kind::EtcdRestart => "etcd",
                _ => "s3",
            };
            let down = secs(rng, durations.outage);
            sandbox.outage(name, down).await?;
            format!("down {:.1} s", down.as_secs_f64())
        }
        Kind::S3PutErrors => {
            let window = secs(rng, durations.outage);
            let before = sandbox.s3_put_error_rate(PUT_ERROR_RATE).await?;
            tokio::time::sleep(window).await;
            let injected = sandbox.s3_put_error_rate(0.0).await? - before;
            format!("{injected} PUTs failed in {:.1} s", window.as_secs_f64())
        }
        Kind::ClockJump => {
            let minutes = rng.i64(1..=10) * if rng.bool() { 1 } else { -1 };
            let away = secs(rng, durations.outage);
            sandbox.jump_clock(minutes * 60)?;
            tokio::time::sleep(away).await;
            sandbox.jump_clock(0)?;
            format!("worker-0 {minutes:+} min for {:.1} s", away.as_secs_f64())
        }
    };
    let ended = Instant::now();
    Ok(Injected { detail, lasted: ended - started, ended })
}

/// The process a fault on `service` strikes.
async fn process_of(sandbox: &Sandbox, service: Service, rng: &mut fastrand::Rng) -> anyhow::Result<String> {
    Ok(match service {
        Service::Gateway => "gateway".into(),
        Service::Lister => "lister".into(),
        Service::Enqueuer => "enqueuer".into(),
        Service::SchedulerLeader => sandbox.scheduler_leader().await?.context("no scheduler leads")?,
        Service::Worker => {
            let workers = sandbox.grpc_ports.iter().filter(|(n, _)| n.starts_with("worker-")).count();
            format!("worker-{}", rng.usize(0..workers.max(1)))
        }
    })
}
