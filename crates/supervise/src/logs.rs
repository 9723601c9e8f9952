//! Instance logs: the log writer each instance's output goes through (a timestamp on every
//! line, size-based rotation), and reading them back — the newest lines of several files
//! interleaved by time, and following them as they grow.
//!
//! The writer is a small process of its own (`berth log-writer`), not a task of the daemon:
//! it keeps writing while the daemon restarts, and it exits when the last process holding its
//! pipe (the instance's processes and the supervisor) closes it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Log files rotate past this size unless the app sets `BERTH_LOG_MAX_SIZE`.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept (`web.1.log.1` … `.N`) unless the app sets `BERTH_LOG_KEEP`.
pub const DEFAULT_KEEP: u32 = 5;
/// Longer lines are cut into pieces of this size, so one runaway line cannot use up memory.
const MAX_LINE: usize = 64 * 1024;

/// How an instance's output is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogWriter {
    /// The berth binary (`berth log-writer` is the writer).
    pub exe: PathBuf,
    pub max_bytes: u64,
    pub keep: u32,
}

/// `2026-11-22T13:05:01.123Z`: UTC, milliseconds, sortable as text.
pub fn format_timestamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Howard Hinnant's algorithm: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Splits a log line into its timestamp and text; lines written before timestamps existed,
/// or by something else, have none.
pub fn split_timestamp(line: &str) -> (Option<&str>, &str) {
    let bytes = line.as_bytes();
    let looks_like = line.len() >= 25
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && bytes[23] == b'Z'
        && bytes[24] == b' '
        && bytes[..4].iter().all(u8::is_ascii_digit);
    if looks_like { (Some(&line[..24]), &line[25..]) } else { (None, line) }
}

/// Appends one line with a timestamp (Berth's own notes next to an instance's output).
pub fn append_line(path: &Path, text: &str) {
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{} {text}", format_timestamp(SystemTime::now()));
    }
}

/// The writer process: stamps every line of `input` and appends it to `path`, rotating the
/// file when it grows past `max_bytes`. Returns at the end of the input.
pub fn run_writer(input: impl Read, path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<()> {
    let mut reader = std::io::BufReader::with_capacity(MAX_LINE, input);
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    let mut size = file.metadata()?.len();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        let stamp = format_timestamp(SystemTime::now());
        let mut record = Vec::with_capacity(stamp.len() + 1 + line.len());
        record.extend_from_slice(stamp.as_bytes());
        record.push(b' ');
        record.extend_from_slice(&line);
        // One write per line: with O_APPEND, lines of Berth's own notes never split it.
        file.write_all(&record)?;
        size += record.len() as u64;
        if size >= max_bytes {
            rotate(path, keep)?;
            file = OpenOptions::new().create(true).append(true).open(path)?;
            size = 0;
        }
    }
}

/// `web.1.log` → `web.1.log.1` → … → `web.1.log.KEEP`, the oldest dropped.
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    std::fs::rename(path, numbered(1))
}

/// One line of a log, from one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Which log: `web.1`.
    pub source: String,
    pub timestamp: Option<String>,
    pub text: String,
}

/// The newest `n` lines of the log `path` (and its rotated files when it holds fewer).
pub fn tail_file(path: &Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut generation = 0;
    while lines.len() < n {
        let file = if generation == 0 {
            path.to_owned()
        } else {
            PathBuf::from(format!("{}.{generation}", path.display()))
        };
        if !file.exists() {
            break;
        }
        let mut older = tail_lines(&file, n - lines.len());
        older.append(&mut lines);
        lines = older;
        generation += 1;
    }
    lines
}

/// The last `n` lines of a text file (empty when it cannot be read). Reads backwards from the
/// end in blocks, so a large log costs no more than its tail.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    const BLOCK: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else { return Vec::new() };
    let Ok(len) = file.metadata().map(|m| m.len()) else { return Vec::new() };
    let mut start = len;
    let mut buffer: Vec<u8> = Vec::new();
    while start > 0 && buffer.iter().filter(|&&b| b == b'\n').count() <= n {
        let from = start.saturating_sub(BLOCK);
        let mut block = vec![0; (start - from) as usize];
        if file.seek(SeekFrom::Start(from)).is_err() || file.read_exact(&mut block).is_err() {
            return Vec::new();
        }
        block.extend_from_slice(&buffer);
        buffer = block;
        start = from;
    }
    let text = String::from_utf8_lossy(&buffer);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|s| s.to_string()).collect()
}

/// Interleaves the lines of several logs by time and keeps the newest `n`. Lines without a
/// timestamp keep the time of the line before them in their file.
pub fn merge(logs: Vec<(String, Vec<String>)>, n: usize) -> Vec<LogLine> {
    let mut all: Vec<(String, usize, LogLine)> = Vec::new();
    for (source_index, (source, lines)) in logs.into_iter().enumerate() {
        let mut last = String::new();
        for line in lines {
            let (timestamp, text) = split_timestamp(&line);
            if let Some(ts) = timestamp {
                last = ts.to_owned();
            }
            all.push((
                last.clone(),
                source_index,
                LogLine {
                    source: source.clone(),
                    timestamp: timestamp.map(str::to_owned),
                    text: text.to_owned(),
                },
            ));
        }
    }
    // A stable sort keeps each file's order for lines of the same millisecond.
    all.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let skip = all.len().saturating_sub(n);
    all.into_iter().skip(skip).map(|(_, _, line)| line).collect()
}

/// Follows one log file as it grows, across rotations: `poll` returns the lines added since
/// the last call.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Starts at the current end of the file (the caller has shown the tail already).
    pub fn at_end(path: &Path) -> Follower {
        let mut follower =
            Follower { path: path.to_owned(), file: None, inode: 0, partial: Vec::new() };
        if let Ok(mut file) = File::open(path) {
            use std::os::unix::fs::MetadataExt;
            follower.inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
            let _ = file.seek(SeekFrom::End(0));
            follower.file = Some(file);
        }
        follower
    }

    /// Starts at the beginning of the file, or of the file that will appear at `path`.
    pub fn from_start(path: &Path) -> Follower {
        let mut follower =
            Follower { path: path.to_owned(), file: None, inode: 0, partial: Vec::new() };
        if let Ok(file) = File::open(path) {
            use std::os::unix::fs::MetadataExt;
            follower.inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
            follower.file = Some(file);
        }
        follower
    }

    pub fn poll(&mut self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut lines = Vec::new();
        self.drain(&mut lines);
        // Rotated (a new file under the name) or created since: the rest of the old file was
        // read above through the open handle; go on with the new one from its start.
        let current = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
        if current.is_some()
            && current != Some(self.inode)
            && let Ok(file) = File::open(&self.path)
        {
            self.inode = current.unwrap_or(0);
            self.file = Some(file);
            self.partial.clear();
            self.drain(&mut lines);
        }
        lines
    }

    fn drain(&mut self, lines: &mut Vec<String>) {
        let Some(file) = &mut self.file else { return };
        let mut chunk = Vec::new();
        if file.read_to_end(&mut chunk).is_err() {
            return;
        }
        self.partial.extend_from_slice(&chunk);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
    }
}

/// Parses a size such as `10M`, `512K`, `1G` or a number of bytes.
pub fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let (digits, unit) =
        value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let number: u64 = digits.parse().ok()?;
    let factor = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor).filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Removed when dropped.
    fn temp(name: &str) -> berth_testkit::TempDir {
        berth_testkit::TempDir::new(&format!("logs-{name}"))
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_784_701_123);
        assert_eq!(format_timestamp(t), "2026-11-27T13:05:01.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn timestamps_are_split_off_lines_that_have_them() {
        assert_eq!(
            split_timestamp("2026-11-22T13:05:01.123Z hello"),
            (Some("2026-11-22T13:05:01.123Z"), "hello")
        );
        assert_eq!(split_timestamp("plain line"), (None, "plain line"));
        assert_eq!(
            split_timestamp("2026-11-22 not a stamp at all"),
            (None, "2026-11-22 not a stamp at all")
        );
    }

    #[test]
    fn the_writer_stamps_lines_and_rotates() {
        let dir = temp("writer");
        let path = dir.join("web.1.log");
        let input: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        run_writer(input.as_bytes(), &path, 1000, 2).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        let first = std::fs::read_to_string(dir.join("web.1.log.1")).unwrap();
        assert!(dir.join("web.1.log.2").exists());
        assert!(!dir.join("web.1.log.3").exists(), "only two rotated files are kept");
        assert!(first.len() >= 1000 && first.len() < 1100, "{}", first.len());
        let last = current.lines().last().unwrap();
        assert_eq!(split_timestamp(last).1, "line 099");
        assert!(split_timestamp(last).0.is_some());
        // The tail reaches into rotated files when the current one is short.
        let tail = tail_file(&path, 40);
        assert_eq!(tail.len(), 40);
        assert_eq!(split_timestamp(tail.last().unwrap()).1, "line 099");
        assert_eq!(split_timestamp(&tail[0]).1, "line 060");
    }

    #[test]
    fn a_line_without_a_newline_and_a_huge_line_are_kept() {
        let dir = temp("partial");
        let path = dir.join("w.log");
        let huge = "x".repeat(MAX_LINE + 10);
        run_writer(format!("{huge}\nlast").as_bytes(), &path, u64::MAX, 5).unwrap();
        let lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| split_timestamp(l).1.to_owned())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1], "x".repeat(10));
        assert_eq!(lines[2], "last");
    }

    #[test]
    fn merge_interleaves_by_time_and_keeps_the_newest() {
        let web = vec![
            "2026-01-01T00:00:01.000Z a1".to_owned(),
            "continuation".to_owned(),
            "2026-01-01T00:00:03.000Z a3".to_owned(),
        ];
        let worker = vec![
            "2026-01-01T00:00:02.000Z b2".to_owned(),
            "2026-01-01T00:00:04.000Z b4".to_owned(),
        ];
        let merged = merge(vec![("web.1".into(), web), ("worker.1".into(), worker)], 4);
        let texts: Vec<String> =
            merged.iter().map(|l| format!("{} {}", l.source, l.text)).collect();
        assert_eq!(texts, ["web.1 continuation", "worker.1 b2", "web.1 a3", "worker.1 b4"]);
        assert_eq!(merged[0].timestamp, None);
    }

    #[test]
    fn the_follower_sees_new_lines_across_a_rotation() {
        let dir = temp("follow");
        let path = dir.join("web.1.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut follower = Follower::at_end(&path);
        assert!(follower.poll().is_empty());
        append_line(&path, "one");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "two (no newline yet)").unwrap();
        let lines = follower.poll();
        assert_eq!(lines.len(), 1);
        assert_eq!(split_timestamp(&lines[0]).1, "one");
        writeln!(file, " done").unwrap();
        rotate(&path, 3).unwrap();
        std::fs::write(&path, "three\n").unwrap();
        assert_eq!(follower.poll(), ["two (no newline yet) done", "three"]);
    }

    #[test]
    fn tail_lines_reads_the_end_of_small_and_large_files() {
        let dir = temp("tail");
        let path = dir.join("log");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(tail_lines(&path, 2), ["b", "c"]);
        assert_eq!(tail_lines(&path, 10), ["a", "b", "c"]);
        let big: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, big).unwrap();
        assert_eq!(tail_lines(&path, 3), ["line 49997", "line 49998", "line 49999"]);
        assert_eq!(tail_lines(&path, 20_000).first().unwrap(), "line 30000");
        assert!(tail_lines(&dir.join("missing"), 3).is_empty());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("10M"), Some(10 << 20));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2000"), Some(2000));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("5T"), None);
    }
}
