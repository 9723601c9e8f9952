//! Scheduled runs of a Procfile's `cron:` lines: a command with the app's environment, or a
//! web-cron (`GET /path`, Paasmaker's kind) that requests a path of one of the app's
//! running web instances, straight rather than through the router: the router's access rules
//! (allow lists, Cloudflare-only, basic auth) are for visitors, and would refuse it. Runs of one line never overlap; each is logged with how it ended.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Local};
use croner::Cron;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::logs::append_line;
use crate::task::{TaskSpec, run_task};

/// How long a web-cron request may take.
const WEB_CRON_TIMEOUT: Duration = Duration::from_secs(60);

/// What a cron line does when its time comes.
#[derive(Debug, Clone)]
pub enum CronAction {
    /// A command, run like a `release:` command.
    Command(TaskSpec),
    /// `GET PATH` of the app, with `Host: host`, at the web instance `instance` gives when
    /// the time comes.
    WebRequest { instance: InstanceLookup, host: String, path: String },
}

/// Where one of an app's web instances listens right now, if one runs; asked at each run,
/// since deploys and restarts move the app to new addresses.
#[derive(Clone)]
pub struct InstanceLookup(Arc<dyn Fn() -> Option<SocketAddr> + Send + Sync>);

impl InstanceLookup {
    pub fn new(lookup: impl Fn() -> Option<SocketAddr> + Send + Sync + 'static) -> InstanceLookup {
        InstanceLookup(Arc::new(lookup))
    }
}

impl std::fmt::Debug for InstanceLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceLookup")
    }
}

/// One cron line of an app's current release.
#[derive(Debug, Clone)]
pub struct CronJob {
    /// The Procfile name (`cron`, `cron-cleanup`).
    pub name: String,
    pub schedule: String,
    pub action: CronAction,
    /// Every run's output and how it ended go here.
    pub log_path: PathBuf,
}

/// Parses a schedule of five fields, or six with seconds first.
pub fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    Cron::from_str(schedule).map_err(|e| format!("invalid cron schedule {schedule:?}: {e}"))
}

/// The web-cron form of a cron command: `GET /path`.
pub fn web_cron_path(command: &str) -> Option<&str> {
    let path = command.trim().strip_prefix("GET ")?.trim();
    (path.starts_with('/') && !path.contains(char::is_whitespace)).then_some(path)
}

/// The next time the schedule fires after `after`.
pub fn next_run(cron: &Cron, after: &DateTime<Local>) -> Option<DateTime<Local>> {
    cron.find_next_occurrence(after, false).ok()
}

/// A running schedule; dropping it does not stop it, [`CronHandle::stop`] does.
#[derive(Debug)]
pub struct CronHandle {
    task: JoinHandle<()>,
    name: String,
    schedule: String,
    what: String,
}

impl CronHandle {
    /// The line's name, schedule and what it runs, for `ps`.
    pub fn describe(&self) -> (&str, &str, &str) {
        (&self.name, &self.schedule, &self.what)
    }

    /// Stops scheduling. A run in progress is not waited for: it ends on its own.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Starts the schedule of `job`.
pub fn spawn_cron(job: CronJob) -> Result<CronHandle, String> {
    let cron = parse_schedule(&job.schedule)?;
    let what = match &job.action {
        CronAction::Command(spec) => spec.command.clone(),
        CronAction::WebRequest { path, .. } => format!("GET {path}"),
    };
    let (name, schedule) = (job.name.clone(), job.schedule.clone());
    Ok(CronHandle { task: tokio::spawn(schedule_loop(job, cron)), name, schedule, what })
}

async fn schedule_loop(job: CronJob, cron: Cron) {
    loop {
        let now = Local::now();
        let Some(next) = next_run(&cron, &now) else {
            append_line(
                &job.log_path,
                &format!("berth: {} has no next run; its schedule is over", job.name),
            );
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        // One run at a time: the next time is computed after this run ends, so a run that
        // takes longer than the interval makes the runs in between be skipped, not piled up.
        let started = Instant::now();
        let outcome = run_once(&job).await;
        let took = started.elapsed().as_secs_f64();
        append_line(
            &job.log_path,
            &format!("berth: {} run {outcome} (took {took:.1} s)", job.name),
        );
        if next_run(&cron, &next).is_some_and(|after| after < Local::now()) {
            append_line(
                &job.log_path,
                &format!("berth: {} ran past its next time; that run is skipped", job.name),
            );
        }
    }
}

async fn run_once(job: &CronJob) -> String {
    match &job.action {
        CronAction::Command(spec) => {
            append_line(
                &job.log_path,
                &format!("berth: {} run started: {}", job.name, spec.command),
            );
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            let log_path = job.log_path.clone();
            let writer = tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    append_line(&log_path, &line);
                }
            });
            let result = run_task(spec, tx).await;
            let _ = writer.await;
            match result {
                Ok(()) => "exited with status 0".to_owned(),
                Err(err) => err,
            }
        }
        CronAction::WebRequest { instance, host, path } => {
            append_line(&job.log_path, &format!("berth: {} run started: GET {path}", job.name));
            let Some(addr) = (instance.0)() else {
                return format!("failed: GET {path}: no web instance of the app is running");
            };
            match tokio::time::timeout(WEB_CRON_TIMEOUT, get_status(addr, host, path)).await {
                Ok(Ok(status)) => format!("answered GET {path} with {status}"),
                Ok(Err(err)) => format!("failed: GET {path}: {err}"),
                Err(_) => {
                    format!("failed: GET {path} took more than {} s", WEB_CRON_TIMEOUT.as_secs())
                }
            }
        }
    }
}

/// Requests `path` and returns the response's status line after the version (`200 OK`).
async fn get_status(router: SocketAddr, host: &str, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(router).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-cron\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buffer = [0; 1024];
    while !head.contains(&b'\n') {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status =
        line.lines().next().and_then(|l| l.split_once(' ')).map(|(_, rest)| rest.trim().to_owned());
    status.ok_or_else(|| std::io::Error::other("no HTTP response"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn schedules_parse_with_five_or_six_fields() {
        let at = Local.with_ymd_and_hms(2026, 11, 22, 10, 3, 0).unwrap();
        let every_five = parse_schedule("*/5 * * * *").unwrap();
        assert_eq!(
            next_run(&every_five, &at).unwrap(),
            Local.with_ymd_and_hms(2026, 11, 22, 10, 5, 0).unwrap()
        );
        let every_two_seconds = parse_schedule("*/2 * * * * *").unwrap();
        assert_eq!(
            next_run(&every_two_seconds, &at).unwrap(),
            Local.with_ymd_and_hms(2026, 11, 22, 10, 3, 2).unwrap()
        );
        let mondays = parse_schedule("0 9 * * mon").unwrap();
        assert_eq!(
            next_run(&mondays, &at).unwrap(),
            Local.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
        );
        assert!(parse_schedule("61 * * * *").unwrap_err().contains("invalid cron schedule"));
    }

    #[test]
    fn web_crons_are_get_and_a_path() {
        assert_eq!(web_cron_path("GET /tasks/cleanup?token=x"), Some("/tasks/cleanup?token=x"));
        assert_eq!(web_cron_path("./cleanup.sh"), None);
        assert_eq!(web_cron_path("GET http://example.com/"), None);
        assert_eq!(web_cron_path("GET /a b"), None);
    }

    /// Removed when dropped.
    fn temp(name: &str) -> berth_testkit::TempDir {
        berth_testkit::TempDir::new(&format!("cron-{name}"))
    }

    #[tokio::test]
    async fn a_command_runs_on_schedule_without_overlapping() {
        let dir = temp("runs");
        let log_path = dir.join("cron.1.log");
        // Every second, a run that takes 1.5 s: runs must never overlap.
        let spec = TaskSpec {
            command: "echo start $$ >> runs; sleep 1.5; echo end $$ >> runs; echo ran".into(),
            cwd: dir.to_path_buf(),
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            run_as: None,
            timeout: Duration::from_secs(30),
        };
        let handle = spawn_cron(CronJob {
            name: "cron".into(),
            schedule: "* * * * * *".into(),
            action: CronAction::Command(spec),
            log_path: log_path.clone(),
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(dir.join("runs")).unwrap_or_default().matches("end").count()
            < 2
        {
            assert!(Instant::now() < deadline, "two runs did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        handle.stop();
        let runs = std::fs::read_to_string(dir.join("runs")).unwrap();
        let events: Vec<&str> = runs.lines().map(|l| l.split(' ').next().unwrap()).collect();
        for pair in events.chunks(2) {
            assert_eq!(pair.first(), Some(&"start"), "{runs}");
            if pair.len() == 2 {
                assert_eq!(pair[1], "end", "runs overlapped:\n{runs}");
            }
        }
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(log.contains("berth: cron run started: echo start"), "{log}");
        assert!(log.contains(" ran\n"), "{log}");
        assert!(log.contains("berth: cron run exited with status 0 (took 1."), "{log}");
    }
}
