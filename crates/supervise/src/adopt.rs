//! Finding an instance's process again after the daemon restarted: each running instance
//! leaves a record (pid, port, the process's start time) in a file, and a new daemon watches a
//! recorded process through a pidfd instead of starting a second copy.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

/// What a running instance leaves behind for the next daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub pid: u32,
    pub port: Option<u16>,
    /// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22): a pid
    /// used again by another process after a reboot or a wrap does not match.
    pub start_ticks: u64,
}

impl InstanceRecord {
    pub fn read(path: &Path) -> Option<InstanceRecord> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// Written to a temporary file and renamed, so a reader never sees half a record.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(temp, path)
    }

    /// The record of a live process, or `None` when `pid` is gone.
    pub fn of(pid: u32, port: Option<u16>) -> Option<InstanceRecord> {
        Some(InstanceRecord { pid, port, start_ticks: start_ticks(pid)? })
    }

    /// Whether the recorded process still runs (the same process, not a reused pid).
    pub fn is_alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }

    /// Stops a recorded process that is not wanted any more: SIGTERM to its group, SIGKILL
    /// after `timeout`.
    pub async fn stop(&self, timeout: Duration) {
        if !self.is_alive() {
            return;
        }
        let group = Pid::from_raw(self.pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.is_alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// `/proc/PID/stat` field 22, or `None` when the process does not exist (or is a zombie,
/// which counts as gone).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// A process the supervisor did not start, watched through a pidfd: readable once it exits.
#[derive(Debug)]
pub struct Adopted {
    pub pid: u32,
    pidfd: AsyncFd<OwnedFd>,
}

impl Adopted {
    /// Opens a pidfd on the recorded process, when it still runs.
    #[allow(unsafe_code, reason = "AsyncFd::register is unsafe; the fd is an OwnedFd it owns")]
    pub fn open(record: &InstanceRecord) -> Option<Adopted> {
        if !record.is_alive() {
            return None;
        }
        let pid = rustix::process::Pid::from_raw(record.pid as i32)?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
        // The pid could have been reused between the check and the open: check again.
        if !record.is_alive() {
            return None;
        }
        // SAFETY: the AsyncFd takes the OwnedFd, so the descriptor stays open (and is not
        // reused for anything else) for as long as it is registered, and is closed on drop.
        let pidfd = unsafe { AsyncFd::register(fd) }.ok()?;
        Some(Adopted { pid: record.pid, pidfd })
    }

    /// Resolves when the process has exited.
    pub async fn exited(&self) {
        let _ = self.pidfd.readable().await;
    }

    /// SIGTERM to the process group, then SIGKILL when it has not exited after `timeout`.
    pub async fn terminate(&self, timeout: Duration) {
        let group = Pid::from_raw(self.pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(timeout, self.exited()).await.is_err() {
            let _ = killpg(group, Signal::SIGKILL);
            self.exited().await;
        }
        let _ = killpg(group, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[tokio::test]
    async fn a_recorded_process_is_watched_and_stopped() {
        let dir = std::env::temp_dir().join(format!("berth-adopt-{}", std::process::id()));
        let mut child =
            std::process::Command::new("sleep").arg("60").process_group(0).spawn().unwrap();
        let record = InstanceRecord::of(child.id(), Some(8080)).unwrap();
        let path = dir.join("web.1.json");
        record.write(&path).unwrap();
        let read = InstanceRecord::read(&path).unwrap();
        assert_eq!(read, record);
        assert!(read.is_alive());
        let adopted = Adopted::open(&read).unwrap();
        // Reaped by its parent (this test) in the background, as init would reap an orphan.
        let reaper = std::thread::spawn(move || child.wait());
        tokio::time::timeout(Duration::from_secs(10), adopted.terminate(Duration::from_secs(5)))
            .await
            .unwrap();
        reaper.join().unwrap().unwrap();
        assert!(!read.is_alive());
        assert!(Adopted::open(&read).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reused_pid_does_not_match() {
        let me = InstanceRecord::of(std::process::id(), None).unwrap();
        assert!(me.is_alive());
        let other = InstanceRecord { start_ticks: me.start_ticks + 1, ..me };
        assert!(!other.is_alive());
        assert!(start_ticks(u32::MAX - 1).is_none());
    }
}
