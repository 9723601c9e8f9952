//! Per-app access logs in nginx's combined format, plus the request time and id:
//!
//! ```text
//! 192.0.2.7 - - [22/Nov/2026:13:05:01 +0000] "GET /path HTTP/1.1" 200 512 "referer" "agent" 0.003 req-id
//! ```
//!
//! A request never waits for the disk: it hands its entry to a bounded channel with
//! `try_send`, and a writer task formats the entries and appends them to the file. When the
//! channel is full (the disk is slower than the traffic) the entry is dropped and counted,
//! as a log is worth less than a visitor's latency.

use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderValue;
use http::{Method, Uri, Version};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Entries waiting for the writer; beyond this they are dropped.
const CHANNEL_CAPACITY: usize = 4096;

/// The writer gathers entries up to about this many bytes into one write.
const BATCH_BYTES: usize = 64 * 1024;

/// The same mode nginx's logs usually get: the operator's group may read them, nobody else.
const LOG_FILE_MODE: u32 = 0o640;

/// A handle on one app's access log: cheap to clone, shared by the app's backends across
/// route tables (keep one per app and pass clones to [`crate::Backend::with_access_log`]).
///
/// The writer task ends when the last handle is dropped, after writing what it was sent.
#[derive(Debug, Clone)]
pub struct AccessLog {
    sender: mpsc::Sender<AccessEntry>,
    dropped: Arc<AtomicU64>,
    path: Arc<Path>,
}

impl AccessLog {
    /// Opens (creating it and its directory if needed) the file at `path` for appending, and
    /// starts its writer on the current Tokio runtime.
    ///
    /// Fails if the directory or file cannot be created or opened, or if called outside a
    /// Tokio runtime.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<AccessLog> {
        AccessLog::open_with_capacity(path.into(), CHANNEL_CAPACITY)
    }

    pub(crate) fn open_with_capacity(path: PathBuf, capacity: usize) -> io::Result<AccessLog> {
        use std::os::unix::fs::OpenOptionsExt;

        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(LOG_FILE_MODE)
            .open(&path)?;
        let (sender, entries) = mpsc::channel(capacity);
        let path: Arc<Path> = Arc::from(path);
        runtime.spawn(write_entries(tokio::fs::File::from_std(file), entries, Arc::clone(&path)));
        Ok(AccessLog { sender, dropped: Arc::new(AtomicU64::new(0)), path })
    }

    /// The file the entries go to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many entries were dropped because the writer could not keep up (or had
    /// stopped), since the log was opened.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Hands `entry` to the writer without waiting; counts it as dropped if it cannot.
    pub(crate) fn record(&self, entry: AccessEntry) {
        match self.sender.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One request as its log line tells it.
#[derive(Debug)]
pub(crate) struct AccessEntry {
    pub(crate) client: IpAddr,
    /// When the response head was ready.
    pub(crate) time: SystemTime,
    pub(crate) method: Method,
    /// The request target as the visitor sent it.
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) status: u16,
    /// The body's length, when it is known up front.
    pub(crate) bytes: Option<u64>,
    pub(crate) referer: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    /// From the request's arrival to its response head.
    pub(crate) elapsed: Duration,
    pub(crate) request_id: HeaderValue,
}

async fn write_entries(
    mut file: tokio::fs::File,
    mut entries: mpsc::Receiver<AccessEntry>,
    path: Arc<Path>,
) {
    let mut batch = String::new();
    let mut failing = false;
    while let Some(entry) = entries.recv().await {
        batch.clear();
        format_entry(&entry, &mut batch);
        while batch.len() < BATCH_BYTES
            && let Ok(entry) = entries.try_recv()
        {
            format_entry(&entry, &mut batch);
        }
        let written = async {
            file.write_all(batch.as_bytes()).await?;
            file.flush().await
        };
        match written.await {
            Ok(()) => failing = false,
            // Warned once per run of failures: a full disk must not flood the daemon's log.
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(path = %path.display(), "cannot write the access log: {error}");
            }
            Err(_) => {}
        }
    }
}

/// Appends the line for `entry`, with its newline, to `out`.
pub(crate) fn format_entry(entry: &AccessEntry, out: &mut String) {
    let client = entry.client.to_canonical();
    let _ = write!(out, "{client} - - [{}] \"", format_time(entry.time));
    push_escaped(out, entry.method.as_str().as_bytes());
    out.push(' ');
    // The request target as the visitor's HTTP/1.1 request line has it: an HTTP/2 request's
    // URI is absolute (scheme and authority), which log tools do not expect there.
    let target =
        entry.uri.path_and_query().map_or_else(|| entry.uri.to_string(), |p| p.to_string());
    push_escaped(out, target.as_bytes());
    let _ = write!(out, " {:?}\" {} ", entry.version, entry.status);
    match entry.bytes {
        Some(bytes) => {
            let _ = write!(out, "{bytes}");
        }
        None => out.push('-'),
    }
    for header in [&entry.referer, &entry.user_agent] {
        out.push_str(" \"");
        match header {
            Some(value) => push_escaped(out, value.as_bytes()),
            None => out.push('-'),
        }
        out.push('"');
    }
    let _ = write!(out, " {:.3} ", entry.elapsed.as_secs_f64());
    push_escaped(out, entry.request_id.as_bytes());
    out.push('\n');
}

/// Copies `bytes`, escaping what could end a field or forge a line as nginx does: `"`,
/// `\`, and bytes outside visible ASCII and space become `\xHH`.
fn push_escaped(out: &mut String, bytes: &[u8]) {
    for &byte in bytes {
        if byte == b'"' || byte == b'\\' || !(b' '..=b'~').contains(&byte) {
            let _ = write!(out, "\\x{byte:02X}");
        } else {
            out.push(char::from(byte));
        }
    }
}

const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `22/Nov/2026:13:05:01 +0000`: nginx's `$time_local`, in UTC, so lines from servers in
/// different zones compare as they are.
fn format_time(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    let month = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    format!("{day:02}/{month}/{year}:{hour:02}:{minute:02}:{second:02} +0000")
}

/// The (year, month, day) of the day `days` after 1970-01-01, by Howard Hinnant's
/// `civil_from_days` for the proleptic Gregorian calendar (times before 1970 never occur).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AccessEntry {
        AccessEntry {
            client: "::ffff:192.0.2.7".parse().unwrap(),
            time: UNIX_EPOCH + Duration::from_secs(1_795_352_701),
            method: Method::GET,
            uri: "/path?q=1".parse().unwrap(),
            version: Version::HTTP_11,
            status: 200,
            bytes: Some(512),
            referer: Some(HeaderValue::from_static("https://example.com/")),
            user_agent: Some(HeaderValue::from_static("curl/8.0")),
            elapsed: Duration::from_micros(3_200),
            request_id: HeaderValue::from_static("req-1"),
        }
    }

    #[test]
    fn lines_are_in_combined_format_with_time_and_id() {
        let mut line = String::new();
        format_entry(&entry(), &mut line);
        assert_eq!(
            line,
            "192.0.2.7 - - [22/Nov/2026:13:05:01 +0000] \"GET /path?q=1 HTTP/1.1\" 200 512 \
             \"https://example.com/\" \"curl/8.0\" 0.003 req-1\n"
        );

        let entry = AccessEntry {
            bytes: None,
            referer: None,
            user_agent: Some(HeaderValue::from_bytes(b"evil\" \\ \xff").unwrap()),
            version: Version::HTTP_2,
            status: 404,
            ..entry()
        };
        let mut line = String::new();
        format_entry(&entry, &mut line);
        assert!(
            line.ends_with(
                "\"GET /path?q=1 HTTP/2.0\" 404 - \"-\" \"evil\\x22 \\x5C \\xFF\" 0.003 req-1\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn times_are_formatted_in_utc_across_leap_days_and_years() {
        let cases = [
            (0, "01/Jan/1970:00:00:00 +0000"),
            (951_782_400, "29/Feb/2000:00:00:00 +0000"),
            (1_795_352_701, "22/Nov/2026:13:05:01 +0000"),
            (4_102_444_799, "31/Dec/2099:23:59:59 +0000"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(format_time(UNIX_EPOCH + Duration::from_secs(seconds)), expected);
        }
    }

    #[tokio::test]
    async fn each_request_of_the_app_gets_a_line_when_its_answer_is_ready() {
        use std::sync::Arc;

        use crate::table::{Backend, RouteTable, shared_routes};
        use crate::test_support::{echo_upstream, send, start_proxy, wait_for};

        let dir = berth_testkit::TempDir::new("router-access-log");
        let path = dir.path().join("logs/myapp/access.log");
        let log = AccessLog::open(&path).unwrap();
        let upstream = echo_upstream("web.1").await;
        let mut table = RouteTable::new();
        let backend = Backend::new("myapp", vec![upstream]).with_access_log(log.clone());
        table.insert("myapp.example.com", Arc::new(backend));
        let stopped = Backend::new("stopped", vec![]).with_access_log(log.clone());
        table.insert("stopped.example.com", Arc::new(stopped));
        table.insert("other.example.com", Arc::new(Backend::new("other", vec![upstream])));
        let routes = shared_routes();
        routes.store(Arc::new(table));
        let proxy = start_proxy(routes).await;

        let request = "GET /path?q=1 HTTP/1.1\r\nHost: myapp.example.com\r\n\
                       Referer: http://ref.example/\r\nUser-Agent: test-agent/1.0\r\n\
                       X-Request-Id: trace-7\r\nConnection: close\r\n\r\n";
        let reply = send(proxy.addr, request.into()).await;
        assert_eq!(reply.status, 200);
        let reply = send(proxy.addr, crate::test_support::get("stopped.example.com", "/x")).await;
        assert_eq!(reply.status, 502);
        let stopped_id = reply
            .head
            .lines()
            .find_map(|line| line.strip_prefix("x-request-id: "))
            .unwrap()
            .to_string();
        // Neither another app's requests nor unrouted ones are in this log.
        send(proxy.addr, crate::test_support::get("other.example.com", "/")).await;
        send(proxy.addr, crate::test_support::get("nobody.example.com", "/")).await;

        wait_for("two lines in the log", || {
            std::fs::read_to_string(&path).is_ok_and(|text| text.lines().count() >= 2)
        })
        .await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let echo_length = reply_length(lines[0]);
        assert!(lines[0].starts_with("127.0.0.1 - - ["), "{text}");
        assert!(lines[0].contains("] \"GET /path?q=1 HTTP/1.1\" 200 "), "{text}");
        assert!(echo_length > 0, "{text}");
        assert!(lines[0].contains(" \"http://ref.example/\" \"test-agent/1.0\" "), "{text}");
        assert!(lines[0].ends_with(" trace-7"), "{text}");
        let seconds: f64 = lines[0].rsplit(' ').nth(1).unwrap().parse().unwrap();
        assert!((0.0..10.0).contains(&seconds), "{text}");
        assert!(lines[1].contains("\"GET /x HTTP/1.1\" 502 "), "{text}");
        assert!(lines[1].contains(" \"-\" \"-\" "), "{text}");
        assert!(lines[1].ends_with(&format!(" {stopped_id}")), "{text}");
        assert_eq!(log.dropped(), 0);
    }

    /// The byte count of a log line (the field after the status).
    fn reply_length(line: &str) -> u64 {
        let after_request = line.split('"').nth(2).unwrap();
        after_request.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn entries_over_the_channel_capacity_are_dropped_and_counted() {
        let dir = berth_testkit::TempDir::new("router-access-log-drops");
        let path = dir.path().join("nested/dir/access.log");
        let log = AccessLog::open_with_capacity(path.clone(), 2).unwrap();
        assert!(path.exists(), "the file and its directories are made at once");
        // The writer cannot run before this test yields, so only two entries fit.
        for _ in 0..5 {
            log.record(entry());
        }
        assert_eq!(log.dropped(), 3);
        let deadline = tokio::time::Instant::now() + crate::test_support::DEADLINE;
        loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the entries were not written");
            tokio::task::yield_now().await;
        }
    }
}
