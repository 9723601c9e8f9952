//! Parsing of the Procfile, in the piku and Heroku format: one `name: command` per line.
//!
//! The process name decides how the process is run: `web` and `wsgi` get a port and a route,
//! `static` is served by the router, `release` and `preflight` run once per deploy, names
//! starting with `cron` run on a schedule, and every other name is a long-running worker.

use crate::{Diagnostic, Parsed, numbered_lines};

/// The example shown when a Procfile has no usable processes.
const WEB_EXAMPLE: &str = "web: ./server --port $PORT";

/// How many schedule fields a cron line starts with (minute, hour, day, month, weekday).
const CRON_FIELDS: usize = 5;

/// Names allowed inside a cron schedule field, in lower case.
const CRON_NAMES: [&str; 19] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec", "sun",
    "mon", "tue", "wed", "thu", "fri", "sat",
];

/// What a process is for, decided by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessKind {
    /// `web`: an HTTP server listening on `$PORT`.
    Web,
    /// `wsgi`: a Python WSGI application served on `$PORT`.
    Wsgi,
    /// `static`: a directory served by the router.
    Static,
    /// Any other name: a long-running process without a port.
    Worker,
    /// A name starting with `cron`: a command run on a five-field schedule.
    Cron { schedule: String },
    /// `release`: run once after a build, before the new release starts.
    Release,
    /// `preflight`: run once before the build is accepted.
    Preflight,
}

impl ProcessKind {
    /// Whether the process listens on `$PORT` and gets a route.
    pub fn needs_port(&self) -> bool {
        matches!(self, ProcessKind::Web | ProcessKind::Wsgi)
    }

    /// Whether the process is supervised and restarted rather than run to completion.
    pub fn is_long_running(&self) -> bool {
        matches!(self, ProcessKind::Web | ProcessKind::Wsgi | ProcessKind::Worker)
    }
}

/// One `name: command` line of a Procfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEntry {
    pub name: String,
    pub kind: ProcessKind,
    /// The command, trimmed; for cron entries, without the schedule.
    pub command: String,
    /// The 1-based line the entry was declared on.
    pub line: usize,
}

/// The processes a Procfile declares, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Procfile {
    pub entries: Vec<ProcessEntry>,
}

impl Procfile {
    /// The entry called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&ProcessEntry> {
        self.entries.iter().find(|entry| entry.name == name)
    }

    /// The entry that serves HTTP on `$PORT`: the `web` or the `wsgi` entry.
    pub fn web(&self) -> Option<&ProcessEntry> {
        self.entries.iter().find(|entry| entry.kind.needs_port())
    }
}

/// Parses a Procfile. Lines with errors are left out of the value and reported.
pub fn parse_procfile(text: &str) -> Parsed<Procfile> {
    let mut procfile = Procfile::default();
    let mut diagnostics = Vec::new();
    // Every name with a valid spelling and the line it first appeared on, so a duplicate is
    // reported even if the first declaration had another error.
    let mut first_seen: Vec<(String, usize)> = Vec::new();

    for (line_number, line) in numbered_lines(text) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line, line_number, &mut first_seen) {
            Ok(entry) => {
                if let Some(existing) = procfile.web().filter(|_| entry.kind.needs_port()) {
                    diagnostics.push(Diagnostic::error(
                        line_number,
                        format!(
                            "both \"{}\" (line {}) and \"{}\" are declared, but an app has one \
                             HTTP entry point; keep only one of them",
                            existing.name, existing.line, entry.name
                        ),
                    ));
                    continue;
                }
                if let Some(warning) = case_warning(&entry.name) {
                    diagnostics.push(Diagnostic::warning(line_number, warning));
                }
                procfile.entries.push(entry);
            }
            Err(message) => diagnostics.push(Diagnostic::error(line_number, message)),
        }
    }

    // A Procfile whose every line is broken already says why; only a Procfile with nothing
    // in it at all needs to be told what to add.
    if procfile.entries.is_empty() && diagnostics.is_empty() {
        diagnostics.push(Diagnostic::error(
            1,
            format!("the Procfile declares no processes; add a line like \"{WEB_EXAMPLE}\""),
        ));
    }
    Parsed { value: procfile, diagnostics }
}

/// Parses one non-blank, non-comment line, already trimmed.
fn parse_line(
    line: &str,
    line_number: usize,
    first_seen: &mut Vec<(String, usize)>,
) -> Result<ProcessEntry, String> {
    let Some((name, command)) = line.split_once(':') else {
        return Err(format!(
            "expected the form \"name: command\", like \"{WEB_EXAMPLE}\"; put a colon after \
             the process name"
        ));
    };
    let name = name.trim();
    let command = command.trim();
    if name.is_empty() {
        return Err(format!(
            "the process name before ':' is missing; write it first, like \"{WEB_EXAMPLE}\""
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!(
            "invalid process name {name:?}: process names use letters, digits, '_' and '-' \
             (for example \"web\" or \"worker-2\")"
        ));
    }
    if let Some((_, first_line)) = first_seen.iter().find(|(seen, _)| seen == name) {
        return Err(format!(
            "process \"{name}\" is declared twice (first on line {first_line}); remove or rename \
             one of them"
        ));
    }
    first_seen.push((name.to_owned(), line_number));
    if command.is_empty() {
        return Err(format!(
            "process \"{name}\" has no command; write the command after the colon, like \
             \"{name}: ./run\""
        ));
    }

    let (kind, command) = match name {
        "web" => (ProcessKind::Web, command),
        "wsgi" => (ProcessKind::Wsgi, command),
        "static" => (ProcessKind::Static, command),
        "release" => (ProcessKind::Release, command),
        "preflight" => (ProcessKind::Preflight, command),
        _ if name.starts_with("cron") => {
            let (schedule, command) = split_cron(name, command)?;
            (ProcessKind::Cron { schedule }, command)
        }
        _ => (ProcessKind::Worker, command),
    };
    Ok(ProcessEntry { name: name.to_owned(), kind, command: command.to_owned(), line: line_number })
}

/// Splits a cron command into its schedule (fields joined by single spaces) and the command
/// that follows, which is kept exactly as written.
fn split_cron<'a>(name: &str, command: &'a str) -> Result<(String, &'a str), String> {
    let example = format!("{name}: */5 * * * * ./cleanup.sh");
    let mut fields = Vec::with_capacity(CRON_FIELDS);
    let mut rest = command;
    for _ in 0..CRON_FIELDS {
        let trimmed = rest.trim_start();
        let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        if end == 0 {
            break;
        }
        fields.push(&trimmed[..end]);
        rest = &trimmed[end..];
    }
    // A sixth field made only of digits and `*/,-` before the command makes a schedule with
    // seconds first (`*/2 * * * * * cmd` runs every two seconds), as croner and Quartz read it.
    if fields.len() == CRON_FIELDS {
        let trimmed = rest.trim_start();
        let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        let token = &trimmed[..end];
        let numeric =
            !token.is_empty() && token.chars().all(|c| c.is_ascii_digit() || "*/,-".contains(c));
        if numeric && !trimmed[end..].trim().is_empty() {
            fields.push(token);
            rest = &trimmed[end..];
        }
    }
    let rest = rest.trim();
    if fields.len() < CRON_FIELDS || rest.is_empty() {
        return Err(format!(
            "cron process \"{name}\" needs a schedule of 5 fields (minute, hour, day of month, \
             month, day of week) followed by a command, like \"{example}\""
        ));
    }
    for (index, field) in fields.iter().enumerate() {
        if !is_cron_field(field) {
            return Err(format!(
                "cron process \"{name}\" has an invalid schedule field {field:?} (field {} of \
                 {}); fields use digits, '*', '/', ',', '-' and names like \"mon\" or \"jan\", \
                 like \"{example}\"",
                index + 1,
                fields.len()
            ));
        }
    }
    Ok((fields.join(" "), rest))
}

/// Loosely checks a cron field: digits and `*/,-`, plus three-letter month and day names.
fn is_cron_field(field: &str) -> bool {
    let mut word = String::new();
    // A trailing separator flushes the last word.
    for c in field.chars().chain(std::iter::once(',')) {
        if c.is_ascii_alphabetic() {
            word.push(c.to_ascii_lowercase());
            continue;
        }
        if !word.is_empty() {
            if !CRON_NAMES.contains(&word.as_str()) {
                return false;
            }
            word.clear();
        }
        if !(c.is_ascii_digit() || "*/,-".contains(c)) {
            return false;
        }
    }
    true
}

/// Warns about a name that differs from a special process name only in case, since names
/// are matched exactly and such a process would silently run as a worker.
fn case_warning(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if lower == name {
        return None;
    }
    let special = ["web", "wsgi", "static", "release", "preflight"];
    if special.contains(&lower.as_str()) {
        return Some(format!(
            "process \"{name}\" runs as a worker because process names are case-sensitive; \
             rename it to \"{lower}\" if it is meant to be the {lower} process"
        ));
    }
    if lower.starts_with("cron") && !name.starts_with("cron") {
        return Some(format!(
            "process \"{name}\" runs as a worker because process names are case-sensitive; \
             rename it to \"{lower}\" if it is meant to run on a schedule"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;

    /// Renders a parse result one item per line, so tables can compare whole results.
    fn render(parsed: &Parsed<Procfile>) -> String {
        let mut out = Vec::new();
        for entry in &parsed.value.entries {
            let kind = match &entry.kind {
                ProcessKind::Cron { schedule } => format!("Cron[{schedule}]"),
                other => format!("{other:?}"),
            };
            out.push(format!("{} {} {kind} {:?}", entry.line, entry.name, entry.command));
        }
        for diagnostic in &parsed.diagnostics {
            let severity = match diagnostic.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            out.push(format!("{severity} {diagnostic}"));
        }
        out.join("\n")
    }

    fn check(cases: &[(&str, &str)]) {
        for (text, want) in cases {
            let got = render(&parse_procfile(text));
            assert_eq!(got, *want, "\n--- Procfile ---\n{text}\n--- got ---\n{got}\n");
        }
    }

    #[test]
    fn kinds_by_name() {
        check(&[
            ("web: ./server --port $PORT", "1 web Web \"./server --port $PORT\""),
            ("wsgi: app:application", "1 wsgi Wsgi \"app:application\""),
            ("static: public", "1 static Static \"public\""),
            ("release: ./migrate", "1 release Release \"./migrate\""),
            ("preflight: ./check", "1 preflight Preflight \"./check\""),
            ("worker: ./work", "1 worker Worker \"./work\""),
            ("queue_2: ./work", "1 queue_2 Worker \"./work\""),
            ("cron: 0 * * * * ./hourly", "1 cron Cron[0 * * * *] \"./hourly\""),
            ("cron1: */5 * * * * ./cleanup.sh", "1 cron1 Cron[*/5 * * * *] \"./cleanup.sh\""),
            ("cron: */2 * * * * * ./tick.sh", "1 cron Cron[*/2 * * * * *] \"./tick.sh\""),
            ("cron: 0 3 * * * 5", "1 cron Cron[0 3 * * *] \"5\""),
            ("cron: 0 3 * * * GET /tasks/nightly", "1 cron Cron[0 3 * * *] \"GET /tasks/nightly\""),
            (
                "cron-cleanup: 0 3 * * sun ./x --all",
                "1 cron-cleanup Cron[0 3 * * sun] \"./x --all\"",
            ),
            ("webby: ./w", "1 webby Worker \"./w\""),
        ]);
    }

    #[test]
    fn layout_comments_and_line_endings() {
        check(&[
            (
                "# comment\n\nweb: ./a\n   # indented comment\nworker: ./b\n",
                "3 web Web \"./a\"\n5 worker Worker \"./b\"",
            ),
            ("web: ./a\r\nworker: ./b\r\n", "1 web Web \"./a\"\n2 worker Worker \"./b\""),
            ("\u{feff}web: ./a\n", "1 web Web \"./a\""),
            ("  web  :   ./a  b  \t", "1 web Web \"./a  b\""),
            ("web:./a", "1 web Web \"./a\""),
            // Only the first colon separates; the command may contain more.
            ("web: gunicorn app:app -b :$PORT", "1 web Web \"gunicorn app:app -b :$PORT\""),
            ("worker: ./a # not a comment", "1 worker Worker \"./a # not a comment\""),
        ]);
    }

    #[test]
    fn bad_lines_are_reported_on_their_line() {
        check(&[
            (
                "web: ./a\nthis line has no colon\n",
                "1 web Web \"./a\"\nerror line 2: expected the form \"name: command\", like \
                 \"web: ./server --port $PORT\"; put a colon after the process name",
            ),
            (
                "# c\nmy worker: ./a\nweb: ./b",
                "3 web Web \"./b\"\nerror line 2: invalid process name \"my worker\": process \
                 names use letters, digits, '_' and '-' (for example \"web\" or \"worker-2\")",
            ),
            (
                "web.1: ./a\nweb: ./b",
                "2 web Web \"./b\"\nerror line 1: invalid process name \"web.1\": process names \
                 use letters, digits, '_' and '-' (for example \"web\" or \"worker-2\")",
            ),
            (
                ": ./a\nweb: ./b",
                "2 web Web \"./b\"\nerror line 1: the process name before ':' is missing; write \
                 it first, like \"web: ./server --port $PORT\"",
            ),
            (
                "web: ./a\r\nworker:   \r\n",
                "1 web Web \"./a\"\nerror line 2: process \"worker\" has no command; write the \
                 command after the colon, like \"worker: ./run\"",
            ),
        ]);
    }

    #[test]
    fn duplicates_and_web_conflicts() {
        check(&[
            (
                "web: ./a\nworker: ./b\n\nweb: ./c",
                "1 web Web \"./a\"\n2 worker Worker \"./b\"\nerror line 4: process \"web\" is \
                 declared twice (first on line 1); remove or rename one of them",
            ),
            (
                "worker:\nworker: ./b\nweb: ./c",
                "3 web Web \"./c\"\nerror line 1: process \"worker\" has no command; write the \
                 command after the colon, like \"worker: ./run\"\nerror line 2: process \
                 \"worker\" is declared twice (first on line 1); remove or rename one of them",
            ),
            (
                "web: ./a\nwsgi: app:app",
                "1 web Web \"./a\"\nerror line 2: both \"web\" (line 1) and \"wsgi\" are \
                 declared, but an app has one HTTP entry point; keep only one of them",
            ),
            (
                "wsgi: app:app\nstatic: public\nweb: ./a",
                "1 wsgi Wsgi \"app:app\"\n2 static Static \"public\"\nerror line 3: both \
                 \"wsgi\" (line 1) and \"web\" are declared, but an app has one HTTP entry \
                 point; keep only one of them",
            ),
        ]);
    }

    #[test]
    fn cron_schedules() {
        check(&[
            (
                "cron: 0,30 1-5 */2 jan-MAR Mon-Fri ./a",
                "1 cron Cron[0,30 1-5 */2 jan-MAR Mon-Fri] \"./a\"",
            ),
            ("cron:   *   *  *\t* *   ./a   b", "1 cron Cron[* * * * *] \"./a   b\""),
            (
                "cron: * * * * *",
                "error line 1: cron process \"cron\" needs a schedule of 5 fields (minute, hour, \
                 day of month, month, day of week) followed by a command, like \"cron: */5 * * \
                 * * ./cleanup.sh\"",
            ),
            (
                "web: ./a\ncron1: ./cleanup.sh",
                "1 web Web \"./a\"\nerror line 2: cron process \"cron1\" needs a schedule of 5 \
                 fields (minute, hour, day of month, month, day of week) followed by a command, \
                 like \"cron1: */5 * * * * ./cleanup.sh\"",
            ),
            (
                "cron1: */x * * * * ./a",
                "error line 1: cron process \"cron1\" has an invalid schedule field \"*/x\" \
                 (field 1 of 5); fields use digits, '*', '/', ',', '-' and names like \"mon\" \
                 or \"jan\", like \"cron1: */5 * * * * ./cleanup.sh\"",
            ),
            (
                "cron1: * * * ./a * ./b",
                "error line 1: cron process \"cron1\" has an invalid schedule field \"./a\" \
                 (field 4 of 5); fields use digits, '*', '/', ',', '-' and names like \"mon\" \
                 or \"jan\", like \"cron1: */5 * * * * ./cleanup.sh\"",
            ),
            (
                "cron1: * * * * monday ./a",
                "error line 1: cron process \"cron1\" has an invalid schedule field \"monday\" \
                 (field 5 of 5); fields use digits, '*', '/', ',', '-' and names like \"mon\" \
                 or \"jan\", like \"cron1: */5 * * * * ./cleanup.sh\"",
            ),
        ]);
    }

    #[test]
    fn cron_field_check() {
        let cases: &[(&str, bool)] = &[
            ("*", true),
            ("*/15", true),
            ("1,2,3", true),
            ("1-5/2", true),
            ("JAN", true),
            ("mon,wed,fri", true),
            ("sun-sat", true),
            ("", true),
            ("?", false),
            ("L", false),
            ("jan1", true),
            ("janfeb", false),
            ("@daily", false),
            ("١", false),
        ];
        for (field, want) in cases {
            assert_eq!(is_cron_field(field), *want, "field: {field:?}");
        }
    }

    #[test]
    fn empty_procfiles() {
        let none = "error line 1: the Procfile declares no processes; add a line like \"web: \
                    ./server --port $PORT\"";
        check(&[
            ("", none),
            ("\n\n", none),
            ("# only a comment\r\n", none),
            ("\u{feff}", none),
            // Broken lines already explain themselves, so no second error is added.
            (
                "web",
                "error line 1: expected the form \"name: command\", like \"web: ./server --port \
                 $PORT\"; put a colon after the process name",
            ),
        ]);
    }

    #[test]
    fn case_sensitive_names_warn() {
        check(&[
            (
                "Web: ./a",
                "1 Web Worker \"./a\"\nwarning line 1: process \"Web\" runs as a worker because \
                 process names are case-sensitive; rename it to \"web\" if it is meant to be the \
                 web process",
            ),
            (
                "CRON1: ./a",
                "1 CRON1 Worker \"./a\"\nwarning line 1: process \"CRON1\" runs as a worker \
                 because process names are case-sensitive; rename it to \"cron1\" if it is meant \
                 to run on a schedule",
            ),
            ("Worker: ./a", "1 Worker Worker \"./a\""),
        ]);
    }

    #[test]
    fn lookups_and_kind_predicates() {
        let parsed = parse_procfile("worker: ./w\nwsgi: app:app\ncron: * * * * * ./c\n");
        assert!(!parsed.has_errors());
        let procfile = parsed.value;
        assert_eq!(procfile.web().map(|e| e.name.as_str()), Some("wsgi"));
        assert_eq!(procfile.get("worker").map(|e| e.line), Some(1));
        assert_eq!(procfile.get("cron").map(|e| e.command.as_str()), Some("./c"));
        assert!(procfile.get("web").is_none());
        assert!(parse_procfile("worker: ./w").value.web().is_none());

        let cron = ProcessKind::Cron { schedule: "* * * * *".into() };
        let cases = [
            (ProcessKind::Web, true, true),
            (ProcessKind::Wsgi, true, true),
            (ProcessKind::Static, false, false),
            (ProcessKind::Worker, false, true),
            (cron, false, false),
            (ProcessKind::Release, false, false),
            (ProcessKind::Preflight, false, false),
        ];
        for (kind, needs_port, long_running) in cases {
            assert_eq!(kind.needs_port(), needs_port, "{kind:?}");
            assert_eq!(kind.is_long_running(), long_running, "{kind:?}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        let cases = [
            ":",
            "::",
            "\r",
            "\u{feff}\u{feff}",
            "cron:",
            "cron: \u{3000}",
            "é: x",
            "web: \0",
            "cron1: * * * * *\u{a0}x",
        ];
        for text in cases {
            let _ = parse_procfile(text);
        }
    }
}
