//! Supervision figures for `bench/supervise.sh`: how long a web instance killed with SIGKILL
//! takes to answer through the router again, and the memory Berth uses (the daemon, and its
//! log writers and socket keeper, as PSS) with 1, 10 and 100 running apps; beside it, supervisord
//! (the usual Python supervisor) running the same processes, measured in the same run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::{AppRepo, TempDir, TestDaemon, TestSshd, output_text, poll};

const PROCFILE: &str = "web: exec python3 -m http.server $PORT --bind $BIND_ADDRESS\n";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bin =
        PathBuf::from(args.next().expect("usage: bench-supervise BERTH_BINARY [SUPERVISORD_DIR]"));
    let supervisord = args.next().map(PathBuf::from);
    let tmp = TempDir::new("bench-sup");
    let root = tmp.path().join("root");
    let daemon = TestDaemon::start(&bin, &root, "bench.test")?;
    let sshd = TestSshd::start(&bin, &root, &tmp.path().join("sshd"))?;
    let repo = AppRepo::new(&tmp.path().join("app"), &sshd)?;
    repo.commit(&[("Procfile", PROCFILE), ("index.html", "hello\n")], "app")?;

    println!("memory with N running apps (one web instance each), proportional set size (PSS):");
    println!(
        "  {:>5}  {:>12}  {:>22}  {:>16}",
        "apps", "berth daemon", "berth helpers (count)", "supervisord"
    );
    let mut deployed = 0;
    for target in [1, 10, 100] {
        while deployed < target {
            let output = repo.push(&sshd.remote(&format!("app{deployed}")));
            anyhow::ensure!(output.status.success(), "push failed:\n{}", output_text(&output));
            deployed += 1;
        }
        let daemon_rss = rss_kib(daemon.pid());
        let (helpers, helpers_rss) = helper_processes(&bin, daemon.pid());
        let reference = match &supervisord {
            Some(dir) => format!(
                "{} KiB",
                supervisord_rss(dir, &tmp.path().join(format!("sup{target}")), target)?
            ),
            None => "(not installed)".to_owned(),
        };
        println!(
            "  {target:>5}  {:>8} KiB  {:>12} KiB ({helpers:>3})  {reference:>16}",
            daemon_rss, helpers_rss
        );
    }

    // A web instance that ran a while is killed; time until the router gets an answer again.
    let record = root.join("run/instances/app0/1/web.1.json");
    let mut times = Vec::new();
    for _ in 0..5 {
        // Past the supervisor's "ran a while" mark, so this is a crash after a healthy run.
        std::thread::sleep(Duration::from_secs(11));
        let pid = record_pid(&record).expect("a record of app0's web.1");
        let start = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        poll("app0 answering again", Duration::from_secs(60), || {
            let answered = daemon.get("app0.bench.test", "/").is_ok_and(|r| r.status == 200);
            (answered && record_pid(&record).is_some_and(|p| p != pid)).then_some(())
        });
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "SIGKILL of a web instance to its next answer through the router: median {:.0} ms (min {:.0}, max {:.0}, 5 runs)",
        ms(times[2]),
        ms(times[0]),
        ms(times[4])
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn record_pid(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = text.split("\"pid\":").nth(1)?;
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Proportional set size: resident memory with pages shared between processes (the berth
/// binary's code, mapped by the daemon and every helper) split among them, so the sum over
/// processes is what they really cost together.
fn rss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Berth's own helper processes (log writers, the socket keeper): how many and their RSS.
fn helper_processes(bin: &Path, daemon: u32) -> (usize, u64) {
    let exe = std::fs::canonicalize(bin).unwrap_or_else(|_| bin.to_owned());
    let mut count = 0;
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == daemon {
            continue;
        }
        if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe) {
            count += 1;
            total += rss_kib(pid);
        }
    }
    (count, total)
}

/// supervisord's own RSS while it runs `n` copies of the same web server.
fn supervisord_rss(dir: &Path, work: &Path, n: usize) -> anyhow::Result<u64> {
    std::fs::create_dir_all(work)?;
    let mut config = format!(
        "[supervisord]\nnodaemon=true\nlogfile={log}\npidfile={pid}\n\
         [unix_http_server]\nfile={sock}\n",
        log = work.join("supervisord.log").display(),
        pid = work.join("supervisord.pid").display(),
        sock = work.join("supervisor.sock").display(),
    );
    let mut ports = Vec::new();
    for i in 0..n {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        ports.push(port);
        config.push_str(&format!(
            "[program:app{i}]\ncommand=python3 -m http.server {port} --bind 127.0.0.1\ndirectory={dir}\n\
             stdout_logfile={log}\nredirect_stderr=true\nautorestart=true\n",
            dir = work.display(),
            log = work.join(format!("app{i}.log")).display(),
        ));
    }
    std::fs::write(work.join("supervisord.conf"), config)?;
    let mut child = Command::new("python3")
        .args(["-m", "supervisor.supervisord", "-c"])
        .arg(work.join("supervisord.conf"))
        .env("PYTHONPATH", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    poll("supervisord's programs listening", Duration::from_secs(120), || {
        ports.iter().all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok()).then_some(())
    });
    let rss = rss_kib(child.id());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let _ = child.wait();
    Ok(rss)
}
