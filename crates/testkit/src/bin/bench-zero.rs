//! Zero-downtime figures for `bench/zero-downtime.sh`: `wrk` sends requests through the router
//! while an app with two web instances is redeployed N times; then the time of a rollback, from
//! the command to the old version answering.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::{AppRepo, TempDir, TestDaemon, TestSshd, output_text, poll};

const APP: &str = r#"import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        data = b"__VERSION__"
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

ThreadingHTTPServer((os.environ["BIND_ADDRESS"], int(os.environ["PORT"])), H).serve_forever()
"#;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(args.next().expect("usage: bench-zero BERTH_BINARY [REDEPLOYS]"));
    let redeploys: usize = args.next().map(|n| n.parse().expect("a number")).unwrap_or(10);
    let tmp = TempDir::new("bench-zero");
    let root = tmp.path().join("root");
    let daemon = TestDaemon::start(&bin, &root, "bench.test")?;
    let sshd = TestSshd::start(&bin, &root, &tmp.path().join("sshd"))?;
    let repo = AppRepo::new(&tmp.path().join("app"), &sshd)?;
    let version = |n: usize| APP.replace("__VERSION__", &format!("v{n}"));
    repo.commit(&[("Procfile", "web: python3 app.py\n"), ("app.py", &version(0))], "v0")?;
    let push = |repo: &AppRepo| -> anyhow::Result<Duration> {
        let start = Instant::now();
        let output = repo.push(&sshd.remote("zero"));
        anyhow::ensure!(output.status.success(), "push failed:\n{}", output_text(&output));
        Ok(start.elapsed())
    };
    push(&repo)?;
    let scale =
        Command::new(&bin).arg("--root").arg(&root).args(["ps:scale", "zero", "web=2"]).output()?;
    anyhow::ensure!(scale.status.success(), "ps:scale failed: {}", output_text(&scale));

    // wrk runs for a fixed time that covers the redeploys (about 2 s each here).
    let seconds = 10 + redeploys * 3;
    let url = format!("http://{}/", daemon.http_addr);
    let wrk = Command::new("wrk")
        .args([
            "-t2",
            "-c16",
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            "Host: zero.bench.test",
            &url,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run wrk (apt-get install wrk): {e}"))?;
    std::thread::sleep(Duration::from_secs(2));
    let mut deploy_times = Vec::new();
    for n in 1..=redeploys {
        repo.commit(&[("app.py", &version(n))], &format!("v{n}"))?;
        deploy_times.push(push(&repo)?);
    }
    let report = String::from_utf8_lossy(&wrk.wait_with_output()?.stdout).into_owned();
    let requests =
        report.lines().find(|l| l.contains("requests in")).unwrap_or("").trim().to_owned();
    let errors = report
        .lines()
        .find(|l| l.contains("Socket errors"))
        .unwrap_or("Socket errors: none")
        .trim()
        .to_owned();
    let non_2xx = report
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .unwrap_or("Non-2xx or 3xx responses: 0")
        .trim()
        .to_owned();
    let latency = |label: &str| {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
    };
    let max = report
        .lines()
        .find(|l| l.trim_start().starts_with("Latency") && l.contains('%'))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    deploy_times.sort();
    println!(
        "{redeploys} redeploys of an app with 2 web instances under wrk (2 threads, 16 connections, {seconds} s):"
    );
    println!("  {requests}");
    println!("  failed: {non_2xx}; {errors}");
    println!(
        "  latency p50 {} p99 {} max {max}; push to deployed: median {:.2} s",
        latency("50%").unwrap_or_default(),
        latency("99%").unwrap_or_default(),
        deploy_times[deploy_times.len() / 2].as_secs_f64()
    );

    // Rollback: from the command to the previous version answering.
    let want = format!("v{}", redeploys - 1);
    let start = Instant::now();
    let output = Command::new(&bin).arg("--root").arg(&root).args(["rollback", "zero"]).output()?;
    anyhow::ensure!(output.status.success(), "rollback failed: {}", output_text(&output));
    poll("the old version", Duration::from_secs(60), || {
        daemon.get("zero.bench.test", "/").ok().filter(|r| r.body == want)
    });
    println!(
        "rollback to {want}: {:.2} s from the command to the old version answering",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
