//! What a test does to a running sandbox and learns from it: outages,
//! signals and injected S3 faults; logs, memory, and files holding secrets.

use std::time::Duration;

use anyhow::Context;

use crate::{Process, Sandbox};

impl Sandbox {
    /// Every file the sandbox's processes wrote that holds one of `secrets`
    /// in clear: their logs, etcd's data, NATS's streams (events, logs,
    /// dead letters, records) and the S3 server's objects.
    pub fn files_holding(&self, secrets: &[&str]) -> anyhow::Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        let mut dirs = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                // A file may go (a rotated WAL) between listing and reading.
                let Ok(bytes) = std::fs::read(&path) else { continue };
                for secret in secrets {
                    if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                        found.push((path.display().to_string(), (*secret).to_owned()));
                    }
                }
            }
        }
        Ok(found)
    }

    /// Makes the S3 server fail `rate` (0 to 1) of the PUTs it gets with a
    /// 500 from now on; returns how many faults it has injected so far.
    pub async fn s3_put_error_rate(&self, rate: f64) -> anyhow::Result<u64> {
        let url = format!("{}/faults?put_error_rate={rate}", self.s3_control);
        let text = reqwest::Client::new().post(url).send().await?.error_for_status()?.text().await?;
        let injected = text.lines().find_map(|l| l.strip_prefix("injected ")).context("no injected count")?;
        Ok(injected.trim().parse()?)
    }

    /// Takes process `name` (such as "s3" or "etcd") down for `outage`, as a
    /// crash and a restart would: killed with SIGKILL, then started again
    /// as it was, on the same port and data.
    pub async fn outage(&mut self, name: &str, outage: Duration) -> anyhow::Result<()> {
        self.process_mut(name)?.kill();
        tokio::time::sleep(outage).await;
        self.process_mut(name)?.restart()?;
        // Back only once it listens again (a port taken meanwhile would
        // fail here, by name, not as a job that never ends).
        match self.dependency_port(name) {
            Some(port) => self.wait_port(name, port).await,
            None => Ok(()),
        }
    }

    /// The port of dependency `name` (etcd, nats or s3), from its URL.
    fn dependency_port(&self, name: &str) -> Option<u16> {
        let url = match name {
            "etcd" => &self.etcd_url,
            "nats" => &self.nats_url,
            "s3" => &self.s3_url,
            _ => return None,
        };
        url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
    }

    /// The peak resident memory of process `name` so far, in bytes
    /// (`VmHWM` of `/proc/<pid>/status`).
    pub fn peak_rss(&self, name: &str) -> anyhow::Result<u64> {
        let pid = self.process(name)?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
        let kib: u64 = line.split_whitespace().nth(1).context("VmHWM value")?.parse()?;
        Ok(kib * 1024)
    }

    /// Sends `signal` (such as "KILL" or "TERM") to process `name`.
    pub fn signal(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        self.process(name)?.signal(signal)
    }

    /// Everything process `name` has logged.
    pub fn log(&self, name: &str) -> String {
        self.process(name).map(Process::log).unwrap_or_default()
    }

    /// The last lines of a process's log, for failure messages.
    pub fn log_tail(&self, name: &str) -> String {
        self.process(name).map(Process::log_tail).unwrap_or_default()
    }

    /// The last lines of the scheduler's and every worker's logs, for the
    /// message of a job that did not end.
    /// A process that has exited is named first.
    pub fn job_logs_tail(&self) -> String {
        let dead = self.check_all_alive().err().map(|e| format!("\n{e:#}")).unwrap_or_default();
        let logs: String = self
            .processes
            .iter()
            .filter(|p| p.name == "scheduler" || p.name.starts_with("worker-"))
            .map(|p| format!("\n{}:\n{}", p.name, p.log_tail()))
            .collect();
        dead + &logs
    }

    /// Stops every process with SIGTERM, services before what they use, and
    /// returns each one's exit: (name, exited cleanly).
    pub async fn stop_all(&mut self) -> Vec<(String, bool)> {
        let mut exits = Vec::new();
        for process in self.processes.iter_mut().rev() {
            let clean = process.terminate(Duration::from_secs(20)).await;
            exits.push((process.name.clone(), clean));
        }
        exits
    }
}
