//! Loopback ports for the sandbox's processes, picked free and claimed
//! across the test processes that nextest runs side by side.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A port nothing listens on, for a process to bind a moment later, and
/// that no other live test process has been given (see [`claim`]).
///
/// It is picked from 10000 to 19999, below the kernel's ephemeral range: a
/// port from that range can be taken meanwhile as the local end of an
/// outgoing connection (this sandbox's processes connect to each other
/// while the others start), and the process meant to listen on it then
/// fails with "address in use". The deploy_local test's clusters take 20000
/// to 31999.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    if low > 11_000 {
        for _ in 0..1_000 {
            let port = fastrand::u16(10_000..low.min(20_000));
            // Not one this process gave out already, nobody has bound, and
            // no other test process holds.
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() && claim(port) {
                given.push(port);
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Claims `port` for this test process until it exits: a file named for the
/// port, holding this process's pid, in a directory all test processes
/// share. A port is free to bind while its process is down (an outage a
/// test makes, a restart), and without the claim another test's sandbox
/// could be given it then and take it from the process that comes back.
/// False if a live process holds it.
fn claim(port: u16) -> bool {
    let dir = claims_dir();
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let path = dir.join(port.to_string());
    let ours = std::process::id().to_string();
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => return std::io::Write::write_all(&mut file, ours.as_bytes()).is_ok(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if holder_alive(&path) {
                    return false;
                }
                // Its holder has exited; the first to remove it claims it next.
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => return true,
        }
    }
    false
}

/// Whether the process named in claim file `path` still runs (a file not yet
/// written, just created by another, counts as held).
fn holder_alive(path: &Path) -> bool {
    match std::fs::read_to_string(path) {
        Ok(pid) if pid.trim().is_empty() => true,
        Ok(pid) => Path::new(&format!("/proc/{}", pid.trim())).exists(),
        Err(_) => true,
    }
}

fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("batchmill-ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_given_once_and_a_dead_holders_claim_is_taken_over() {
        let port = free_port().unwrap();
        let path = claims_dir().join(port.to_string());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), std::process::id().to_string());
        assert!(!claim(port), "a live process's claim holds");
        // A pid no process has (beyond the kernel's pid_max).
        std::fs::write(&path, "4194305").unwrap();
        assert!(claim(port), "an exited process's claim is taken over");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), std::process::id().to_string());
    }
}
