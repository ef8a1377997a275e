//! A worker clock that can be made to jump, as an NTP step or a bad RTC
//! would: worker-0 runs with libfaketime preloaded, reading its offset from
//! a file in the sandbox. Only the wall clock moves; the monotonic clock
//! (timers, timeouts) goes on as the kernel's does, as on a real machine.

use std::path::PathBuf;

use anyhow::Context;

use crate::Sandbox;

/// Where Debian's libfaketime puts its thread-safe library.
fn libfaketime() -> anyhow::Result<PathBuf> {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"]
        .iter()
        .map(|dir| PathBuf::from(dir).join("faketime/libfaketimeMT.so.1"))
        .find(|path| path.exists())
        .context("libfaketime not found: run deploy/local/install-deps")
}

impl Sandbox {
    fn clock_file(&self) -> PathBuf {
        self.dir().join("worker-0.clock")
    }

    /// `env` plus what runs a process on the jumping clock, starting at the
    /// true time.
    pub(crate) fn clock_env(&self, env: &[(String, String)]) -> anyhow::Result<Vec<(String, String)>> {
        std::fs::write(self.clock_file(), "+0\n")?;
        let mut env = env.to_vec();
        env.extend([
            ("LD_PRELOAD".to_owned(), libfaketime()?.to_string_lossy().into_owned()),
            ("FAKETIME_TIMESTAMP_FILE".to_owned(), self.clock_file().to_string_lossy().into_owned()),
            // The file is read again at most a second after it changes.
            ("FAKETIME_CACHE_DURATION".to_owned(), "1".to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
            // No shared memory segment per process, which a killed worker
            // would leave behind in /dev/shm.
            ("FAKETIME_DISABLE_SHM".to_owned(), "1".to_owned()),
        ]);
        Ok(env)
    }

    /// Sets worker-0's wall clock `offset_secs` from the true time (0 puts
    /// it back); the sandbox must have been started with `jumping_clock`.
    pub fn jump_clock(&self, offset_secs: i64) -> anyhow::Result<()> {
        std::fs::write(self.clock_file(), format!("{offset_secs:+}\n"))
            .context("the sandbox has no jumping clock (Options::jumping_clock)")
    }
}
