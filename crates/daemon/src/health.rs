//! Health checks of a new web instance before it gets traffic: by default it must accept TCP
//! on its port and answer `GET /` with a status below 500; an app can name its own checks the
//! two ways people already write them, dokku's `CHECKS` file and `app.json` `healthchecks`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One check: `GET path` answered below 500, and containing `content` when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub path: String,
    pub content: Option<String>,
}

/// The checks of a process type and how patiently to run them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    pub checks: Vec<Check>,
    /// Waited before the first attempt.
    pub wait: Duration,
    /// The most one attempt may take.
    pub timeout: Duration,
    pub attempts: u32,
}

impl Default for Checks {
    fn default() -> Checks {
        Checks {
            checks: vec![Check { path: "/".to_owned(), content: None }],
            wait: Duration::ZERO,
            timeout: Duration::from_secs(5),
            attempts: 5,
        }
    }
}

/// Parses dokku's `CHECKS` file: `WAIT=`, `TIMEOUT=`, `ATTEMPTS=` settings, then lines of
/// `/path [expected content]` (`//host/path` as dokku allows: the host part is ignored, the
/// router's name for the app is used). Comments start with `#`. Errors name the line.
pub fn parse_checks_file(text: &str) -> Result<Checks, String> {
    let mut checks = Checks { checks: Vec::new(), ..Checks::default() };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let number = |value: &str, what: &str| -> Result<u64, String> {
            value.trim().parse().map_err(|_| {
                format!("CHECKS line {}: {what} needs a number, as in {what}=5", n + 1)
            })
        };
        if let Some(value) = line.strip_prefix("WAIT=") {
            checks.wait = Duration::from_secs(number(value, "WAIT")?);
        } else if let Some(value) = line.strip_prefix("TIMEOUT=") {
            checks.timeout = Duration::from_secs(number(value, "TIMEOUT")?.max(1));
        } else if let Some(value) = line.strip_prefix("ATTEMPTS=") {
            checks.attempts = number(value, "ATTEMPTS")?.clamp(1, 100) as u32;
        } else if line.starts_with('/') {
            let (target, content) = match line.split_once(char::is_whitespace) {
                Some((target, content)) => (target, Some(content.trim().to_owned())),
                None => (line, None),
            };
            let path = match target.strip_prefix("//") {
                Some(rest) => format!("/{}", rest.split_once('/').map_or("", |(_, p)| p)),
                None => target.to_owned(),
            };
            checks.checks.push(Check { path, content: content.filter(|c| !c.is_empty()) });
        } else {
            return Err(format!(
                "CHECKS line {}: expected WAIT=, TIMEOUT=, ATTEMPTS= or a path such as \"/health ok\"",
                n + 1
            ));
        }
    }
    if checks.checks.is_empty() {
        checks.checks = Checks::default().checks;
    }
    Ok(checks)
}

#[derive(Debug, serde::Deserialize)]
struct AppJson {
    #[serde(default)]
    healthchecks: std::collections::BTreeMap<String, Vec<AppJsonCheck>>,
}

#[derive(Debug, serde::Deserialize)]
struct AppJsonCheck {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    wait: Option<u64>,
    #[serde(default)]
    timeout: Option<u64>,
}

/// The `healthchecks` of `app.json` for `process_type` (dokku's format), when it has some.
/// Only `startup` checks (the default type) decide a deploy.
pub fn parse_app_json(text: &str, process_type: &str) -> Result<Option<Checks>, String> {
    let parsed: AppJson = serde_json::from_str(text).map_err(|e| format!("app.json: {e}"))?;
    let Some(list) = parsed.healthchecks.get(process_type) else { return Ok(None) };
    let mut checks = Checks { checks: Vec::new(), ..Checks::default() };
    for check in list.iter().filter(|c| c.kind.as_deref().is_none_or(|k| k == "startup")) {
        checks.checks.push(Check {
            path: check.path.clone().unwrap_or_else(|| "/".to_owned()),
            content: check.content.clone().filter(|c| !c.is_empty()),
        });
        if let Some(attempts) = check.attempts {
            checks.attempts = attempts.clamp(1, 100);
        }
        if let Some(wait) = check.wait {
            checks.wait = Duration::from_secs(wait);
        }
        if let Some(timeout) = check.timeout {
            checks.timeout = Duration::from_secs(timeout.max(1));
        }
    }
    Ok((!checks.checks.is_empty()).then_some(checks))
}

/// The checks of a process type in the release tree `dir`: `app.json`, then `CHECKS` (web
/// only, as in dokku), else the default.
pub fn checks_for(dir: &Path, process_type: &str) -> Result<Checks, String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("app.json"))
        && let Some(checks) = parse_app_json(&text, process_type)?
    {
        return Ok(checks);
    }
    if matches!(process_type, "web" | "wsgi")
        && let Ok(text) = std::fs::read_to_string(dir.join("CHECKS"))
    {
        return parse_checks_file(&text);
    }
    Ok(Checks::default())
}

/// Runs the checks against the instance at `addr`, asking for `host`. Each check gets up to
/// `attempts` tries; the error says which check failed and how.
pub async fn run_checks(checks: &Checks, addr: SocketAddr, host: &str) -> Result<(), String> {
    tokio::time::sleep(checks.wait).await;
    for check in &checks.checks {
        let mut last = String::new();
        let mut passed = false;
        for attempt in 1..=checks.attempts {
            match tokio::time::timeout(checks.timeout, get(addr, host, &check.path)).await {
                Ok(Ok((status, body))) if status < 500 => match &check.content {
                    Some(content) if !body.contains(content.as_str()) => {
                        last = format!(
                            "GET {} answered {status} without the text {content:?}",
                            check.path
                        );
                    }
                    _ => {
                        passed = true;
                        break;
                    }
                },
                Ok(Ok((status, _))) => last = format!("GET {} answered {status}", check.path),
                Ok(Err(err)) => last = format!("GET {} failed: {err}", check.path),
                Err(_) => {
                    last = format!(
                        "GET {} took longer than {} s",
                        check.path,
                        checks.timeout.as_secs()
                    )
                }
            }
            if attempt < checks.attempts {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if !passed {
            return Err(format!("failed its health check: {last} ({} attempts)", checks.attempts));
        }
    }
    Ok(())
}

/// A plain HTTP/1.1 GET: the status and (the first megabyte of) the body.
async fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-health-check\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    (&mut stream).take(1 << 20).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line in the answer"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_files_parse_like_dokku() {
        let checks = parse_checks_file(
            "WAIT=2\nTIMEOUT=3\nATTEMPTS=4\n# c\n/health ok\n//example.com/ready\n/\n",
        )
        .unwrap();
        assert_eq!(checks.wait, Duration::from_secs(2));
        assert_eq!(checks.timeout, Duration::from_secs(3));
        assert_eq!(checks.attempts, 4);
        assert_eq!(
            checks.checks,
            [
                Check { path: "/health".into(), content: Some("ok".into()) },
                Check { path: "/ready".into(), content: None },
                Check { path: "/".into(), content: None },
            ]
        );
        assert_eq!(
            parse_checks_file("WAIT=soon\n").unwrap_err(),
            "CHECKS line 1: WAIT needs a number, as in WAIT=5"
        );
        assert!(parse_checks_file("health\n").unwrap_err().starts_with("CHECKS line 1: expected"));
        assert_eq!(parse_checks_file("WAIT=1\n").unwrap().checks, Checks::default().checks);
    }

    #[test]
    fn app_json_healthchecks_are_read_per_type() {
        let json = r#"{"healthchecks": {"web": [
            {"type": "startup", "path": "/health", "content": "ok", "attempts": 2, "wait": 1, "timeout": 7},
            {"type": "liveness", "path": "/live"}]}}"#;
        let checks = parse_app_json(json, "web").unwrap().unwrap();
        assert_eq!(checks.checks, [Check { path: "/health".into(), content: Some("ok".into()) }]);
        assert_eq!(
            (checks.attempts, checks.wait, checks.timeout),
            (2, Duration::from_secs(1), Duration::from_secs(7))
        );
        assert_eq!(parse_app_json(json, "worker").unwrap(), None);
        assert_eq!(parse_app_json(r#"{"name": "x"}"#, "web").unwrap(), None);
        assert!(parse_app_json("{", "web").unwrap_err().starts_with("app.json:"));
    }

    #[tokio::test]
    async fn checks_pass_fail_and_say_why() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let mut buffer = [0u8; 1024];
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buffer[..n]).to_string();
                let (status, body) = if request.starts_with("GET /broken") {
                    ("500 Oops", "bad")
                } else {
                    ("200 OK", "all ok")
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        let quick = |path: &str, content: Option<&str>| Checks {
            checks: vec![Check { path: path.into(), content: content.map(String::from) }],
            wait: Duration::ZERO,
            timeout: Duration::from_secs(5),
            attempts: 2,
        };
        run_checks(&quick("/", None), addr, "app.test").await.unwrap();
        run_checks(&quick("/", Some("ok")), addr, "app.test").await.unwrap();
        let err = run_checks(&quick("/", Some("ready")), addr, "app.test").await.unwrap_err();
        assert_eq!(
            err,
            "failed its health check: GET / answered 200 without the text \"ready\" (2 attempts)"
        );
        let err = run_checks(&quick("/broken", None), addr, "app.test").await.unwrap_err();
        assert_eq!(err, "failed its health check: GET /broken answered 500 (2 attempts)");
    }
}
