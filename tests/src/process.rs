//! A child process of the sandbox, logging to a file; killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

pub struct Process {
    pub name: String,
    child: Child,
    log: PathBuf,
    exited: Option<bool>,
    /// How it was started, to start it again.
    command: (PathBuf, Vec<String>, Vec<(String, String)>),
}

impl Process {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<Process> {
        let out = std::fs::File::create(log)?;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let child = start(name, program, &args, env, out)?;
        let command = (program.to_path_buf(), args, env.to_vec());
        Ok(Process { name: name.to_owned(), child, log: log.to_path_buf(), exited: None, command })
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL and waits for it to die, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again as it was started first (after [`Process::kill`]),
    /// appending to its log.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let out = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        let (program, args, env) = &self.command;
        self.child = start(&self.name, program, args, env, out)?;
        self.exited = None;
        Ok(())
    }

    pub fn check_alive(&self) -> anyhow::Result<()> {
        let pid = self.child.id();
        if Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            return Ok(());
        }
        bail!("{} exited: {}", self.name, self.log_tail())
    }

    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.name);
        Ok(())
    }

    /// Everything it has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, then waits up to `patience`; true if it exited with status 0.
    pub async fn terminate(&mut self, patience: Duration) -> bool {
        if let Some(clean) = self.exited {
            return clean;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            self.exited = Some(status.success());
            return status.success();
        }
        let _ = self.signal("TERM");
        let deadline = tokio::time::Instant::now() + patience;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status.success());
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = Some(false);
        false
    }
}

fn start(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    out: std::fs::File,
) -> anyhow::Result<Child> {
    Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
