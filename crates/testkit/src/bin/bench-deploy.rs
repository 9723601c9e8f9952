//! Deploy timings for `bench/deploy.sh`: time from the start of `git push` to the new version
//! answering through the router, for a Python app's first deploy, a code-only change and a
//! change of requirements; beside it, the step piku runs on every push (pip install -r into
//! the app's existing virtualenv), timed on the same machine in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::{AppRepo, TempDir, TestDaemon, TestSshd, output_text, poll};

const APP: &str = "import os, flask\napp = flask.Flask(__name__)\n\
                   @app.route('/')\ndef index():\n    return '__VERSION__'\n\
                   app.run(host=os.environ['BIND_ADDRESS'], port=int(os.environ['PORT']))\n";

fn main() -> anyhow::Result<()> {
    let bin = PathBuf::from(
        std::env::args().nth(1).expect("usage: bench-deploy BERTH_BINARY [RUNS] [UV_DIR]"),
    );
    let runs: usize =
        std::env::args().nth(2).map(|n| n.parse().expect("RUNS is a number")).unwrap_or(5);
    let uv_dir = std::env::args().nth(3).map(PathBuf::from).filter(|d| d.join("uv").exists());
    let path = std::env::var("PATH").unwrap_or_default();
    let without_uv: Vec<&str> =
        path.split(':').filter(|d| !Path::new(d).join("uv").exists()).collect();
    let without_uv = without_uv.join(":");
    let (pip, piku_step) = scenario(&bin, runs, &without_uv)?;
    report("pip", runs, &pip);
    println!(
        "  piku's per-push pip step    {:>8.2} s   (pip install -r with nothing to install; Berth skips it)",
        piku_step.as_secs_f64()
    );
    println!(
        "  (b) / piku's pip step alone {:>8.2}",
        pip.1.as_secs_f64() / piku_step.as_secs_f64()
    );
    if let Some(uv_dir) = uv_dir {
        let (uv, _) = scenario(&bin, runs, &format!("{}:{without_uv}", uv_dir.display()))?;
        report("uv", runs, &uv);
        println!("  (a) pip / (a) uv            {:>8.2}", pip.0.as_secs_f64() / uv.0.as_secs_f64());
    }
    Ok(())
}

fn report(manager: &str, runs: usize, (a, b, c): &(Duration, Duration, Duration)) {
    println!(
        "deploy of a Python (flask) app with {manager}, git push start to new version answering, median of {runs}:"
    );
    println!("  (a) first deploy            {:>8.2} s", a.as_secs_f64());
    println!(
        "  (b) code-only change        {:>8.2} s   ({:.1}x faster than (a))",
        b.as_secs_f64(),
        a.as_secs_f64() / b.as_secs_f64()
    );
    println!("  (c) changed requirements    {:>8.2} s", c.as_secs_f64());
}

/// Medians of (first deploy, code-only change, changed requirements), and of piku's pip step.
fn scenario(
    bin: &Path,
    runs: usize,
    path: &str,
) -> anyhow::Result<((Duration, Duration, Duration), Duration)> {
    let tmp = TempDir::new("bench");
    let root = tmp.path().join("root");
    let mut daemon = TestDaemon::start_with_env(
        bin,
        &root,
        "bench.test",
        &[("PATH".to_owned(), path.to_owned())],
    )?;
    let sshd = TestSshd::start(bin, &root, &tmp.path().join("sshd"))?;

    let mut first = Vec::new();
    let mut code_only = Vec::new();
    let mut requirements = Vec::new();
    for run in 0..runs {
        let app = format!("bench{run}");
        let repo = AppRepo::new(&tmp.path().join(&app), &sshd)?;
        let version = |n: usize| APP.replace("__VERSION__", &format!("{app} v{n}"));
        repo.commit(
            &[
                ("Procfile", "web: python app.py\n"),
                ("requirements.txt", "flask==3.0.3\n"),
                ("app.py", &version(1)),
            ],
            "v1",
        )?;
        first.push(timed_push(&daemon, &sshd, &repo, &app, &format!("{app} v1"))?);
        repo.commit(&[("app.py", &version(2))], "v2")?;
        code_only.push(timed_push(&daemon, &sshd, &repo, &app, &format!("{app} v2"))?);
        repo.commit(
            &[("requirements.txt", "flask==3.0.3\nsix==1.16.0\n"), ("app.py", &version(3))],
            "v3",
        )?;
        requirements.push(timed_push(&daemon, &sshd, &repo, &app, &format!("{app} v3"))?);
    }

    // piku's per-push dependency step: pip install -r into the existing venv (nothing to do).
    let venv = std::fs::read_dir(root.join("cache/bench0/venv"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("a venv of bench0");
    let requirements_file = tmp.path().join("bench0/requirements.txt");
    let mut piku_step = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let status = Command::new("python3")
            .args(["-m", "pip", "--python"])
            .arg(venv.join("bin/python"))
            .args(["install", "--disable-pip-version-check", "-q", "-r"])
            .arg(&requirements_file)
            .status()?;
        anyhow::ensure!(status.success(), "pip install failed");
        piku_step.push(start.elapsed());
    }
    daemon.stop();
    Ok((
        (median(&mut first), median(&mut code_only), median(&mut requirements)),
        median(&mut piku_step),
    ))
}

fn timed_push(
    daemon: &TestDaemon,
    sshd: &TestSshd,
    repo: &AppRepo,
    app: &str,
    expect: &str,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let output = repo.push(&sshd.remote(app));
    anyhow::ensure!(output.status.success(), "push failed:\n{}", output_text(&output));
    let host = daemon.app_host(app);
    poll("the new version", Duration::from_secs(120), || {
        daemon.get(&host, "/").ok().filter(|r| r.body == expect)
    });
    Ok(start.elapsed())
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}
