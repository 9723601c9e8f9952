//! A long-running process (web, worker) that is restarted when it exits.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::RunAs;
use crate::adopt::{Adopted, InstanceRecord};
use crate::cgroup::Cgroups;
use crate::limits::Limits;
use crate::logs::{LogWriter, append_line};

/// Restart delays start here and double on each quick crash, up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran at least this long before exiting is treated as healthy, so its next
/// restart waits only `MIN_BACKOFF`.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// Everything needed to start one instance of a process type.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub app: String,
    pub process_type: String,
    /// 1-based instance number, as in `web.1`.
    pub index: u32,
    /// Run by `/bin/sh -c`, like a Procfile line under foreman or piku.
    pub command: String,
    pub cwd: PathBuf,
    /// The complete environment of the process (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// stdout and stderr are appended here.
    pub log_path: PathBuf,
    /// Whether the output goes through a log writer process (timestamps, rotation), or
    /// straight into the file.
    pub log_writer: Option<LogWriter>,
    pub port: Option<u16>,
    pub run_as: Option<RunAs>,
    /// How long a process gets between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Resource limits, applied through a cgroup of the instance's own.
    pub cgroup: Option<CgroupRequest>,
    /// Where the running process is recorded, so that a restarted daemon finds it again.
    pub record_path: Option<PathBuf>,
}

/// The cgroups to limit an instance with, and its limits.
#[derive(Debug, Clone)]
pub struct CgroupRequest {
    pub cgroups: Arc<Cgroups>,
    pub limits: Limits,
}

impl ProcessSpec {
    /// The instance's name, which is also its cgroup's: `web.1`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.process_type, self.index)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// The process is being started.
    Starting,
    /// The process is running.
    Running,
    /// The process exited and waits for its restart.
    Backoff,
    /// The process keeps exiting soon after it starts; restarts are spaced out more and more.
    CrashLoop,
    /// The instance was stopped on request.
    Stopped,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Backoff => "crashed",
            InstanceState::CrashLoop => "crash-loop",
            InstanceState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct InstanceStatus {
    pub state: InstanceState,
    pub pid: Option<u32>,
    pub started_at: Option<SystemTime>,
    pub restarts: u32,
    /// How the last run ended, e.g. "exit status 1" or "killed by SIGSEGV".
    pub last_exit: Option<String>,
}

/// A supervised instance. Dropping the handle does not stop the process; call [`Instance::stop`].
#[derive(Debug)]
pub struct Instance {
    spec: Arc<ProcessSpec>,
    status: Arc<Mutex<InstanceStatus>>,
    stop_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Instance {
    /// Starts the process and the task that restarts it when it exits.
    pub fn spawn(spec: ProcessSpec) -> Instance {
        Instance::start(spec, None)
    }

    /// Supervises the recorded process of an earlier daemon instead of starting a new one:
    /// it is watched, stopped and (once it exits) restarted like any other. Gives the spec
    /// back when that process is gone.
    pub fn adopt(spec: ProcessSpec, record: &InstanceRecord) -> Result<Instance, Box<ProcessSpec>> {
        match Adopted::open(record) {
            Some(adopted) => Ok(Instance::start(spec, Some(adopted))),
            None => Err(Box::new(spec)),
        }
    }

    fn start(spec: ProcessSpec, adopted: Option<Adopted>) -> Instance {
        let spec = Arc::new(spec);
        let status = Arc::new(Mutex::new(InstanceStatus {
            state: InstanceState::Starting,
            pid: None,
            started_at: None,
            restarts: 0,
            last_exit: None,
        }));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(spec.clone(), status.clone(), stop_rx, adopted));
        Instance { spec, status, stop_tx, task }
    }

    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    pub fn status(&self) -> InstanceStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Resident memory of every process in the instance's process group, from /proc.
    pub fn memory_bytes(&self) -> Option<u64> {
        let pid = self.status().pid?;
        Some(group_rss_bytes(pid))
    }

    /// Stops the process group: SIGTERM, then SIGKILL after the spec's timeout.
    pub async fn stop(self) {
        // The receiver lives as long as the task; a send error means it already ended.
        let _ = self.stop_tx.send(true);
        if let Err(err) = self.task.await {
            tracing::warn!(%err, "supervisor task of {}.{} failed", self.spec.process_type, self.spec.index);
        }
    }
}

async fn supervise(
    spec: Arc<ProcessSpec>,
    status: Arc<Mutex<InstanceStatus>>,
    mut stop_rx: watch::Receiver<bool>,
    mut adopted: Option<Adopted>,
) {
    let set =
        |f: &dyn Fn(&mut InstanceStatus)| f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
    let mut backoff = MIN_BACKOFF;
    let mut writer = WriterSlot::default();
    loop {
        let started = Instant::now();
        if let Some(process) = adopted.take() {
            set(&|s| {
                s.state = InstanceState::Running;
                s.pid = Some(process.pid);
                s.started_at = Some(SystemTime::now());
            });
            tokio::select! {
                () = process.exited() => {}
                _ = stop_rx.changed() => {
                    process.terminate(spec.stop_timeout).await;
                    finish(&spec, &mut writer).await;
                    set(&|s| {
                        s.state = InstanceState::Stopped;
                        s.pid = None;
                    });
                    return;
                }
            }
            // Its parent is gone, so its exit status went to init; only the kernel's OOM
            // counter can still say why.
            let outcome =
                format!("exited (started by an earlier daemon, status unknown){}", oom_note(&spec));
            append_note(&spec, &format!("{outcome}; restarting"));
            set(&|s| {
                s.state = InstanceState::Backoff;
                s.pid = None;
                s.restarts += 1;
                s.last_exit = Some(outcome.clone());
            });
            continue;
        }
        let outcome = match spawn_child(&spec, &mut writer) {
            Ok(mut child) => {
                let pid = child.id();
                if let (Some(path), Some(record)) =
                    (&spec.record_path, pid.and_then(|pid| InstanceRecord::of(pid, spec.port)))
                    && let Err(err) = record.write(path)
                {
                    tracing::warn!(%err, "cannot record {}", path.display());
                }
                set(&|s| {
                    s.state = InstanceState::Running;
                    s.pid = pid;
                    s.started_at = Some(SystemTime::now());
                });
                tokio::select! {
                    exit = child.wait() => match exit {
                        Ok(exit) => describe_exit(exit) + &oom_note(&spec),
                        Err(err) => format!("could not wait for the process: {err}"),
                    },
                    _ = stop_rx.changed() => {
                        terminate(&mut child, pid, spec.stop_timeout).await;
                        finish(&spec, &mut writer).await;
                        set(&|s| {
                            s.state = InstanceState::Stopped;
                            s.pid = None;
                        });
                        return;
                    }
                }
            }
            Err(err) => format!("could not start `{}`: {err}", spec.command),
        };
        // A process that ran a while and then died is restarted at once (its next quick
        // failure waits 1 s); quick failures wait twice as long each time, up to a cap, so a
        // crash loop cannot eat the CPU.
        let delay = if started.elapsed() >= HEALTHY_RUN {
            backoff = MIN_BACKOFF;
            Duration::ZERO
        } else {
            let delay = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            delay
        };
        // Three quick exits in a row make a crash loop: said so, in `ps` and the log.
        let crash_loop = delay >= MIN_BACKOFF * 4;
        let note = if crash_loop {
            format!(
                "{outcome}; restarting in {} s (crash loop: it keeps exiting within {} s of starting)",
                delay.as_secs(),
                HEALTHY_RUN.as_secs()
            )
        } else if delay.is_zero() {
            format!("{outcome}; restarting now")
        } else {
            format!("{outcome}; restarting in {} s", delay.as_secs())
        };
        append_note(&spec, &note);
        set(&|s| {
            s.state = if crash_loop { InstanceState::CrashLoop } else { InstanceState::Backoff };
            s.pid = None;
            s.restarts += 1;
            s.last_exit = Some(outcome.clone());
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_rx.changed() => {
                finish(&spec, &mut writer).await;
                set(&|s| s.state = InstanceState::Stopped);
                return;
            }
        }
    }
}

/// The log writer process of an instance and the write end of its pipe, which every run of
/// the instance's command gets as stdout and stderr.
#[derive(Default)]
struct WriterSlot {
    writer: Option<(std::process::Child, std::os::fd::OwnedFd)>,
}

impl WriterSlot {
    /// The pipe to the writer, starting a writer when there is none (or it died).
    fn pipe(
        &mut self,
        spec: &ProcessSpec,
        config: &LogWriter,
    ) -> std::io::Result<std::os::fd::OwnedFd> {
        let alive = match &mut self.writer {
            Some((child, _)) => matches!(child.try_wait(), Ok(None)),
            None => false,
        };
        if !alive {
            let mut child = std::process::Command::new(&config.exe)
                .arg("log-writer")
                .arg("--file")
                .arg(&spec.log_path)
                .arg("--max-bytes")
                .arg(config.max_bytes.to_string())
                .arg("--keep")
                .arg(config.keep.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own group: stopping the instance's group must not cut its log short.
                .process_group(0)
                .spawn()?;
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| std::io::Error::other("no pipe to the log writer"))?;
            self.writer = Some((child, std::os::fd::OwnedFd::from(stdin)));
        }
        let (_, fd) = self.writer.as_ref().ok_or_else(|| std::io::Error::other("no log writer"))?;
        fd.try_clone()
    }

    /// Closes the supervisor's end of the pipe; the writer ends once the instance's processes
    /// have closed theirs too, after writing what they printed last.
    async fn close(&mut self) {
        if let Some((mut child, fd)) = self.writer.take() {
            drop(fd);
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
}

fn spawn_child(
    spec: &ProcessSpec,
    writer: &mut WriterSlot,
) -> std::io::Result<tokio::process::Child> {
    if let Some(dir) = spec.log_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let (stdout, stderr) = match &spec.log_writer {
        Some(config) => {
            let pipe = writer.pipe(spec, config)?;
            (Stdio::from(pipe.try_clone()?), Stdio::from(pipe))
        }
        None => {
            let log = OpenOptions::new().create(true).append(true).open(&spec.log_path)?;
            (Stdio::from(log.try_clone()?), Stdio::from(log))
        }
    };
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(exec_form(&spec.command))
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    if let Some(run_as) = spec.run_as {
        cmd.uid(run_as.uid).gid(run_as.gid);
    }
    if let Some(request) = spec.cgroup.as_ref().filter(|r| !r.limits.is_empty())
        && let Some(placement) =
            request.cgroups.prepare(&spec.app, &spec.name(), &request.limits)?
    {
        placement.apply(&mut cmd);
    }
    cmd.spawn()
}

/// A simple command (words and `$VAR`s, nothing the shell must stay around for) runs as
/// `exec COMMAND`, so the instance's pid is the app's own and its exit status is the app's.
fn exec_form(command: &str) -> String {
    /// Shell builtins and keywords, which `exec` cannot run.
    const BUILTINS: &[&str] = &[
        ".", "alias", "break", "case", "cd", "continue", "eval", "exec", "exit", "export", "for",
        "if", "read", "readonly", "return", "set", "shift", "source", "trap", "ulimit", "umask",
        "unset", "until", "wait", "while", "{", "!",
    ];
    let first = command.split_whitespace().next().unwrap_or("");
    let simple = !first.is_empty()
        && !first.contains('=')
        && !BUILTINS.contains(&first)
        && !command.contains(|c: char| ";&|<>()`\\\"'\n*?[]#~".contains(c));
    if simple { format!("exec {command}") } else { command.to_owned() }
}

/// Why the kernel killed the process, when it was for going over its memory limit.
fn oom_note(spec: &ProcessSpec) -> String {
    match &spec.cgroup {
        Some(request) if request.cgroups.oom_killed(&spec.app, &spec.name()) => {
            let limit = request.limits.memory_bytes.map(|b| format!("{} MiB", b >> 20));
            format!(
                " (out of memory: over its limit of {}; raise BERTH_MEMORY_LIMIT or use less)",
                limit.unwrap_or_else(|| "memory".to_owned())
            )
        }
        _ => String::new(),
    }
}

/// What is left to do once an instance is stopped: its log writer, cgroup and record.
async fn finish(spec: &ProcessSpec, writer: &mut WriterSlot) {
    writer.close().await;
    if let Some(request) = &spec.cgroup {
        request.cgroups.remove(&spec.app, &spec.name());
    }
    if let Some(path) = &spec.record_path {
        let _ = std::fs::remove_file(path);
    }
}

/// Sends SIGTERM to the process group, then SIGKILL when it has not exited in time.
pub(crate) async fn terminate(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
    timeout: Duration,
) {
    let Some(pid) = pid else { return };
    let group = Pid::from_raw(pid as i32);
    // The group may already be gone (the process exited as we were asked to stop it).
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(timeout, child.wait()).await.is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Children that ignored SIGTERM while the leader exited are still in the group.
    let _ = killpg(group, Signal::SIGKILL);
}

/// Sums the resident set size of the processes whose process group is `pgid`.
fn group_rss_bytes(pgid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The fields after the command name, which is in parentheses and may hold spaces:
            // state, ppid, pgrp, ...
            let group: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()?;
            if group != pgid {
                return None;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(kib * 1024)
        })
        .sum()
}

pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(signal) = status.signal() {
        let name = Signal::try_from(signal).map(|s| s.as_str().to_owned());
        format!("killed by {}", name.unwrap_or_else(|_| format!("signal {signal}")))
    } else {
        "exited".to_owned()
    }
}

/// Berth's own notes go into the instance's log, so that `berth logs` shows why a process
/// restarted next to what the process printed before it died.
fn append_note(spec: &ProcessSpec, message: &str) {
    append_line(&spec.log_path, &format!("berth: {}.{} {message}", spec.process_type, spec.index));
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`, polling until `timeout`.
/// Fails early when the instance's process exits, with how it exited.
pub async fn wait_for_port(
    instance: &Instance,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let restarts_before = instance.status().restarts;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        let status = instance.status();
        let alive = matches!(status.state, InstanceState::Starting | InstanceState::Running);
        if status.restarts > restarts_before || !alive {
            let how = status.last_exit.unwrap_or_else(|| "stopped".to_owned());
            return Err(format!("the process {how} before it listened on port {port}"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nothing listened on port {port} within {} s; the web process must listen on $PORT",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removed when dropped.
    fn temp_dir(name: &str) -> berth_testkit::TempDir {
        berth_testkit::TempDir::new(&format!("supervise-{name}"))
    }

    fn spec(dir: &std::path::Path, command: &str) -> ProcessSpec {
        ProcessSpec {
            app: "t".into(),
            process_type: "worker".into(),
            index: 1,
            command: command.into(),
            cwd: dir.to_owned(),
            env: vec![
                ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
                ("GREETING".into(), "hi there".into()),
            ],
            log_path: dir.join("logs/worker.1.log"),
            log_writer: None,
            cgroup: None,
            record_path: None,
            port: None,
            run_as: None,
            stop_timeout: Duration::from_secs(2),
        }
    }

    async fn poll(mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "condition not reached within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid_alive(pid: u32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    #[tokio::test]
    async fn output_and_environment_go_to_the_log() {
        let dir = temp_dir("log");
        let instance =
            Instance::spawn(spec(&dir, "echo \"$GREETING\"; echo oops >&2; exec sleep 30"));
        let log = dir.join("logs/worker.1.log");
        poll(|| std::fs::read_to_string(&log).is_ok_and(|s| s.contains("oops"))).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("hi there"), "{text}");
        assert_eq!(instance.status().state, InstanceState::Running);
        // sleep's resident memory is a few hundred KiB at least, and well under a GiB.
        let memory = instance.memory_bytes().unwrap();
        assert!(memory > 100 * 1024 && memory < 1 << 30, "{memory}");
        instance.stop().await;
    }

    #[tokio::test]
    async fn a_crashed_process_is_restarted_and_the_exit_is_logged() {
        let dir = temp_dir("crash");
        let instance = Instance::spawn(spec(&dir, "echo started; exit 3"));
        poll(|| instance.status().restarts >= 2).await;
        let status = instance.status();
        assert_eq!(status.last_exit.as_deref(), Some("exited with status 3"));
        let log = std::fs::read_to_string(dir.join("logs/worker.1.log")).unwrap();
        assert!(log.matches("started").count() >= 2, "{log}");
        assert!(log.contains("berth: worker.1 exited with status 3; restarting in 1 s"), "{log}");
        // The second restart waits longer than the first (backoff doubles).
        assert!(log.contains("restarting in 2 s"), "{log}");
        instance.stop().await;
    }

    #[tokio::test]
    async fn stop_reaches_the_whole_group_and_escalates_to_sigkill() {
        let dir = temp_dir("stop");
        // The shell ignores SIGTERM and has a child; both must be gone after stop.
        let mut s = spec(&dir, "trap '' TERM; sleep 60 & echo $! > child.pid; wait");
        s.stop_timeout = Duration::from_millis(300);
        let instance = Instance::spawn(s);
        let pid_file = dir.join("child.pid");
        poll(|| std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))).await;
        let child: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let leader = instance.status().pid.unwrap();
        assert!(pid_alive(child) && pid_alive(leader));
        instance.stop().await;
        poll(|| !pid_alive(child) && !pid_alive(leader)).await;
    }

    #[test]
    fn simple_commands_are_execed() {
        assert_eq!(exec_form("python3 app.py --port $PORT"), "exec python3 app.py --port $PORT");
        assert_eq!(exec_form("exec gunicorn app:app"), "exec gunicorn app:app");
        let shell = [
            "a && b",
            "echo hi; sleep 1",
            "x | y",
            "echo 'q'",
            "run > out",
            "ls *.py",
            "exit 7",
            "A=1 env",
        ];
        for shell in shell {
            assert_eq!(exec_form(shell), shell);
        }
    }

    #[tokio::test]
    async fn wait_for_port_reports_an_early_exit() {
        let dir = temp_dir("port");
        let instance = Instance::spawn(spec(&dir, "exit 7"));
        let err = wait_for_port(&instance, 1, Duration::from_secs(10)).await.unwrap_err();
        assert!(err.contains("exited with status 7"), "{err}");
        instance.stop().await;
    }

    #[tokio::test]
    async fn wait_for_port_succeeds_once_something_listens() {
        let dir = temp_dir("listen");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let instance = Instance::spawn(spec(&dir, "exec sleep 30"));
        poll(|| instance.status().state == InstanceState::Running).await;
        wait_for_port(&instance, port, Duration::from_secs(5)).await.unwrap();
        instance.stop().await;
    }
}
