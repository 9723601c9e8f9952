//! Process supervision as users see it: scale, restarts, rolling restart.

use std::collections::BTreeSet;
use std::time::Duration;

use berth_testkit::{output_text, poll};

use crate::World;

/// Which instances answer `/env/BERTH_PROCESS` over `n` requests through the router.
fn responders(world: &World, app: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|_| world.get(app, "/env/BERTH_PROCESS").body).collect()
}

fn web_lines(ps: &str) -> Vec<&str> {
    ps.lines().filter(|l| l.starts_with("web.")).collect()
}

#[test]
fn scale_up_and_down_survives_redeploys_and_daemon_restarts() {
    let mut world = World::start("scale");
    let procfile = "web: python3 app.py\nworker: exec sleep 600\n";
    let repo = world.app_repo("scaled", "v1", procfile, "");
    world.push_ok(&repo, "scaled");
    assert_eq!(world.ssh_ok(&["ps:scale", "scaled"]), "scaled: web=1 worker=1\n");

    let out = world.ssh_ok(&["ps:scale", "scaled", "web=3", "worker=2"]);
    assert_eq!(out, "scaled: web=3 worker=2\n");
    let ps = world.ssh_ok(&["ps", "scaled"]);
    assert_eq!(web_lines(&ps).len(), 3, "{ps}");
    assert_eq!(ps.lines().filter(|l| l.starts_with("worker.")).count(), 2, "{ps}");
    let ports: BTreeSet<&str> =
        web_lines(&ps).iter().map(|l| l.split_whitespace().nth(2).unwrap()).collect();
    assert_eq!(ports.len(), 3, "each web instance has its own port:\n{ps}");
    assert!(ps.contains("MEMORY"), "{ps}");
    let expected: BTreeSet<String> = ["web.1", "web.2", "web.3"].map(String::from).into();
    assert_eq!(responders(&world, "scaled", 12), expected);

    // A redeploy keeps the scale.
    repo.commit(&[("app.py", &crate::app_source("v2"))], "v2").unwrap();
    world.push_ok(&repo, "scaled");
    assert_eq!(world.get("scaled", "/").body, "? v2");
    assert_eq!(responders(&world, "scaled", 12), expected);

    // Scaling down stops the extra instances and leaves web.1 as it was.
    let pid_before = web_lines(&world.ssh_ok(&["ps", "scaled"]))[0]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    world.ssh_ok(&["ps:scale", "scaled", "web=1"]);
    let ps = world.ssh_ok(&["ps", "scaled"]);
    assert_eq!(web_lines(&ps).len(), 1, "{ps}");
    assert_eq!(
        web_lines(&ps)[0].split_whitespace().nth(1).unwrap(),
        pid_before,
        "web.1 was restarted:\n{ps}"
    );
    assert_eq!(responders(&world, "scaled", 4), BTreeSet::from(["web.1".to_owned()]));

    // Bad requests are refused with what to do.
    let output = world.ssh(&["ps:scale", "scaled", "cron=2"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output_text(&output)
            .contains("no process type \"cron\" to scale; its Procfile has: web, worker")
    );
    let output = world.ssh(&["ps:scale", "scaled", "web=lots"]);
    assert_eq!(output.status.code(), Some(2));
    let output = world.ssh(&["ps:scale", "scaled", "web=1000"]);
    assert!(
        output_text(&output).contains("more than the 64 instances"),
        "{}",
        output_text(&output)
    );

    // After a daemon restart the app comes back at its scale.
    world.ssh_ok(&["ps:scale", "scaled", "web=2", "worker=0"]);
    world.daemon.stop();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_berth"));
    world.daemon =
        berth_testkit::TestDaemon::start(bin, &world.tmp.path().join("root"), "berth.test")
            .unwrap();
    let ps = poll("two web instances after the restart", Duration::from_secs(30), || {
        let ps = world.ssh_ok(&["ps", "scaled"]);
        (web_lines(&ps).len() == 2 && ps.matches("running").count() >= 3).then_some(ps)
    });
    assert!(!ps.contains("worker."), "{ps}");
    assert_eq!(responders(&world, "scaled", 8).len(), 2);
}

#[test]
fn restart_is_rolling_and_keeps_answering() {
    let world = World::start("rolling");
    let repo = world.app_repo("roll", "v1", "web: python3 app.py\n", "");
    world.push_ok(&repo, "roll");
    world.ssh_ok(&["ps:scale", "roll", "web=2"]);

    // Requests in a bounded loop while the app restarts: none may fail.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut failures = Vec::new();
            let mut count = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && count < 5000 {
                count += 1;
                match world.daemon.get("roll.berth.test", "/") {
                    Ok(page) if page.status == 200 => {}
                    Ok(page) => failures.push(format!("{} {}", page.status, page.body)),
                    Err(err) => failures.push(err.to_string()),
                }
            }
            (count, failures)
        });
        let out = world.ssh_ok(&["restart", "roll"]);
        assert!(out.contains("roll was restarted"), "{out}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap()
    });
    let (count, failures) = failures;
    assert!(count > 0);
    assert!(
        failures.is_empty(),
        "{} of {count} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let ps = world.ssh_ok(&["ps", "roll"]);
    assert_eq!(web_lines(&ps).len(), 2, "{ps}");
}

#[test]
fn run_streams_output_and_returns_the_exit_status() {
    let world = World::start("run");
    let repo = world.app_repo("oneoff", "v1", "web: python3 app.py\n", "GREETING=Hi there\n");
    world.push_ok(&repo, "oneoff");

    let output = world.ssh(&[
        "run",
        "oneoff",
        "--",
        "'echo \"$GREETING from $BERTH_APP in $(basename $PWD)\"; exit 7'",
    ]);
    assert_eq!(output.status.code(), Some(7), "{}", output_text(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "Hi there from oneoff in 1\n");

    let out = world.ssh_ok(&["run", "oneoff", "--", "ls", "-1", "Procfile", "app.py"]);
    assert_eq!(out, "Procfile\napp.py\n");
    let output = world.ssh(&["run", "oneoff", "--", "no-such-command-here"]);
    assert_eq!(output.status.code(), Some(127), "{}", output_text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("no-such-command-here"),
        "{}",
        output_text(&output)
    );
    let output = world.ssh(&["run", "nosuch", "--", "true"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output_text(&output).contains("there is no app named nosuch"));
}

#[test]
fn logs_rotate_interleave_and_follow() {
    let world = World::start("logs");
    let procfile = "web: python3 app.py\n\
                    worker: i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo \"worker line $i padded to be a bit longer than needed\"; done; exec sleep 600\n";
    let repo =
        world.app_repo("logged", "v1", procfile, "BERTH_LOG_MAX_SIZE=4K\nBERTH_LOG_KEEP=2\n");
    world.push_ok(&repo, "logged");

    // 300 lines of ~90 bytes rotate a 4 KiB log several times; two old files are kept.
    let logs = world.root().join("logs/logged");
    poll("the worker's last line", Duration::from_secs(20), || {
        let out = world.ssh_ok(&["logs", "logged", "worker", "--tail", "3"]);
        out.contains("worker line 300 padded").then_some(())
    });
    assert!(logs.join("worker.1.log.1").exists() && logs.join("worker.1.log.2").exists());
    assert!(!logs.join("worker.1.log.3").exists(), "BERTH_LOG_KEEP=2 keeps two rotated files");
    let size = std::fs::metadata(logs.join("worker.1.log.1")).unwrap().len();
    assert!((4096..4096 + 200).contains(&size), "rotated at 4K: {size}");
    let tail = world.ssh_ok(&["logs", "logged", "worker", "-n", "60"]);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 60, "{tail}");
    assert!(
        lines[59].ends_with("worker.1 | worker line 300 padded to be a bit longer than needed"),
        "{tail}"
    );
    assert!(
        lines[0].contains("worker line 241 "),
        "the tail reaches into the rotated file:\n{tail}"
    );

    // All instances interleaved by time, each line prefixed by its instance.
    let _ = world.get("logged", "/after-the-worker");
    let all = world.ssh_ok(&["logs", "logged", "--tail", "5"]);
    let last = all.lines().last().unwrap_or_default();
    assert!(last.contains(" web.1 | request") && last.contains("GET /after-the-worker"), "{all}");
    let stamps: Vec<&str> = all.lines().map(|l| l.split(' ').next().unwrap()).collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    assert_eq!(stamps, sorted, "not in time order:\n{all}");

    // --follow shows a line written after it started, until the session ends.
    let cmd = world.sshd.ssh_command();
    let mut follow = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .arg(format!("{}@127.0.0.1", world.sshd.user))
        .args(["logs", "logged", "web", "--follow", "--tail", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let found = poll("the followed line", Duration::from_secs(20), || {
        let _ = world.get("logged", "/while-following");
        while let Ok(line) = rx.try_recv() {
            seen.push(line);
        }
        seen.iter().find(|l| l.contains("GET /while-following")).cloned()
    });
    assert!(found.contains(" web.1 | request"), "{found}");
    follow.kill().unwrap();
    follow.wait().unwrap();
}

#[test]
fn apps_run_as_their_own_users_and_cannot_reach_each_other() {
    let world = World::start("isolate");
    for app in ["iso-a", "iso-b"] {
        let repo = world.app_repo(app, "v1", "web: python3 app.py\n", "");
        world.push_ok(&repo, app);
    }
    assert_eq!(world.ssh_ok(&["run", "iso-a", "--", "id", "-un"]), "berth-iso-a\n");
    world.ssh_ok(&[
        "run",
        "iso-a",
        "--",
        "'echo secret > \"$DATA_ROOT/key\" && chmod 600 \"$DATA_ROOT/key\"'",
    ]);
    let data_a = world.root().join("data/iso-a/key");
    let release_a = world.root().join("releases/iso-a/1/app.py");
    for path in [&data_a, &release_a] {
        let output = world.ssh(&["run", "iso-b", "--", "cat", &path.display().to_string()]);
        assert_ne!(output.status.code(), Some(0), "iso-b read {}", path.display());
        assert!(output_text(&output).contains("Permission denied"), "{}", output_text(&output));
    }
    let pid_a =
        web_lines(&world.ssh_ok(&["ps", "iso-a"]))[0].split_whitespace().nth(1).unwrap().to_owned();
    let output = world.ssh(&["run", "iso-b", "--", "kill", "-TERM", &pid_a]);
    assert_ne!(output.status.code(), Some(0));
    assert!(output_text(&output).contains("Operation not permitted"), "{}", output_text(&output));
    assert_eq!(world.get("iso-a", "/").status, 200, "iso-a survived");
}

#[test]
fn a_memory_limit_kills_a_process_that_exceeds_it() {
    let world = World::start("memory");
    let procfile = "web: python3 app.py\n\
                    hog: python3 -c 'import time; b = bytearray(256 * 1024 * 1024); print(\"allocated\", flush=True); time.sleep(600)'\n";
    let repo = world.app_repo("hog", "v1", procfile, "BERTH_MEMORY_LIMIT_HOG=64M\n");
    world.push_ok(&repo, "hog");
    let ps = poll("the hog killed for memory", Duration::from_secs(30), || {
        let ps = world.ssh_ok(&["ps", "hog"]);
        ps.contains("out of memory").then_some(ps)
    });
    let hog = ps.lines().find(|l| l.starts_with("hog.1")).unwrap();
    // Killed by SIGKILL, as the process or as its shell reports it (status 137).
    assert!(hog.contains("SIGKILL") || hog.contains("status 137"), "{ps}");
    assert!(hog.contains("(out of memory: over its limit of 64 MiB"), "{ps}");
    let logs = world.ssh_ok(&["logs", "hog", "hog"]);
    assert!(!logs.contains("allocated"), "the allocation succeeded:\n{logs}");
    // The web process has no limit and is untouched.
    assert_eq!(world.get("hog", "/").status, 200);
}

#[test]
fn cron_lines_run_commands_and_web_requests_on_schedule() {
    let world = World::start("cron");
    let procfile = "web: python3 app.py\n\
                    cron: * * * * * * echo \"tick $BERTH_APP\" >> \"$DATA_ROOT/ticks\"; echo ticked\n\
                    cron-web: */2 * * * * * GET /env/BERTH_PROCESS\n";
    let repo = world.app_repo("clock", "v1", procfile, "");
    let out = world.push_ok(&repo, "clock");
    assert!(out.contains("-----> Process types: web, cron, cron-web"), "{out}");

    let ticks = world.root().join("data/clock/ticks");
    poll("two cron runs", Duration::from_secs(30), || {
        (std::fs::read_to_string(&ticks).unwrap_or_default().lines().count() >= 2).then_some(())
    });
    assert!(std::fs::read_to_string(&ticks).unwrap().starts_with("tick clock\n"));
    let log = poll("a finished cron run in the log", Duration::from_secs(30), || {
        let log = world.ssh_ok(&["logs", "clock", "cron"]);
        log.contains("berth: cron run exited with status 0").then_some(log)
    });
    assert!(log.contains("cron.1 | ticked"), "{log}");
    let log = poll("a web-cron run", Duration::from_secs(30), || {
        let log = world.ssh_ok(&["logs", "clock", "cron-web"]);
        log.contains("answered GET /env/BERTH_PROCESS with 200 OK").then_some(log)
    });
    assert!(log.contains("berth: cron-web run started: GET /env/BERTH_PROCESS"), "{log}");

    // Web-crons go to an instance, not through the router: basic auth, which now keeps
    // visitors out, does not stop them.
    let answered = "answered GET /env/BERTH_PROCESS with 200 OK";
    let output = world.sshd.run_with_input(&["auth:set", "clock", "ops"], "s3cret\n");
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(world.get("clock", "/env/BERTH_PROCESS").status, 401);
    let before = world.ssh_ok(&["logs", "clock", "cron-web"]).matches(answered).count();
    let log = poll("a web-cron run behind basic auth", Duration::from_secs(30), || {
        let log = world.ssh_ok(&["logs", "clock", "cron-web"]);
        (log.matches(answered).count() > before).then_some(log)
    });
    assert!(!log.contains("401"), "{log}");

    let ps = world.ssh_ok(&["ps", "clock"]);
    assert!(ps.contains("cron cron: * * * * * * echo \"tick $BERTH_APP\""), "{ps}");
    assert!(ps.contains("cron cron-web: */2 * * * * * GET /env/BERTH_PROCESS"), "{ps}");

    // Stopping the app stops its schedules.
    world.ssh_ok(&["stop", "clock"]);
    let ps = world.ssh_ok(&["ps", "clock"]);
    assert!(!ps.contains("cron cron"), "{ps}");
}

#[test]
fn a_killed_instance_comes_back_and_a_crash_loop_backs_off() {
    let world = World::start("crashloop");
    let procfile = "web: python3 app.py\nflaky: echo starting; exit 3\n";
    let repo = world.app_repo("loopy", "v1", procfile, "");
    world.push_ok(&repo, "loopy");

    // SIGKILL of a web instance: it is back, with a new pid, and answers again.
    let ps = world.ssh_ok(&["ps", "loopy"]);
    let pid: i32 = web_lines(&ps)[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let ps = poll("web.1 back after SIGKILL", Duration::from_secs(30), || {
        let ps = world.ssh_ok(&["ps", "loopy"]);
        let line = web_lines(&ps).first().map(|l| l.to_string()).unwrap_or_default();
        (line.contains("running") && !line.contains(&format!(" {pid} "))).then_some(ps)
    });
    assert!(ps.contains("killed by SIGKILL"), "{ps}");
    poll("web.1 answering again", Duration::from_secs(30), || {
        world.daemon.get("loopy.berth.test", "/").ok().filter(|p| p.status == 200)
    });

    // A process that exits at once: restarts come after 1, 2, 4, 8 s… so within the first
    // few seconds there are only a handful, and `ps` says it is a crash loop.
    let ps = poll("the crash loop in ps", Duration::from_secs(30), || {
        let ps = world.ssh_ok(&["ps", "loopy"]);
        ps.contains("crash-loop").then_some(ps)
    });
    let flaky = ps.lines().find(|l| l.starts_with("flaky.1")).unwrap();
    let restarts: u32 = flaky.split_whitespace().nth(5).unwrap().parse().unwrap();
    assert!((3..=4).contains(&restarts), "backoff should space restarts out:\n{ps}");
    assert!(flaky.contains("exited with status 3"), "{ps}");
    let logs = world.ssh_ok(&["logs", "loopy", "flaky"]);
    assert!(logs.contains("(crash loop: it keeps exiting within 10 s of starting)"), "{logs}");
}

/// The pids of the processes whose working directory is the app's release `release`.
fn processes_in(world: &World, app: &str, release: u32) -> BTreeSet<u32> {
    let dir = world.root().join(format!("releases/{app}/{release}"));
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .collect()
}

#[test]
fn the_daemon_killed_and_restarted_loses_no_request_and_duplicates_no_process() {
    let mut world = World::start("adopt");
    let repo = world.app_repo("steady", "v1", "web: python3 app.py\nworker: exec sleep 600\n", "");
    world.push_ok(&repo, "steady");
    world.ssh_ok(&["ps:scale", "steady", "web=2"]);
    let before = processes_in(&world, "steady", 1);
    assert_eq!(before.len(), 3, "two web instances and a worker: {before:?}");
    let ps_before = world.ssh_ok(&["ps", "steady"]);

    // Requests one after another; the load loop itself kills the daemon between two of them,
    // then keeps sending while the next daemon starts.
    let daemon_pid = world.daemon.pid() as i32;
    let addr = world.daemon.http_addr;
    let (killed_tx, killed_rx) = std::sync::mpsc::channel();
    let (restarted_tx, restarted_rx) = std::sync::mpsc::channel::<()>();
    let load = std::thread::spawn(move || {
        let mut failures = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let mut sent_after_restart = 0;
        for i in 0..3000 {
            if i == 100 {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(daemon_pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                killed_tx.send(()).unwrap();
            }
            match berth_testkit::http_get(addr, "steady.berth.test", "/") {
                Ok(page) if page.status == 200 => {}
                Ok(page) => failures.push(format!("request {i}: {} {}", page.status, page.body)),
                Err(err) => failures.push(format!("request {i}: {err}")),
            }
            if restarted_rx.try_recv().is_ok() || sent_after_restart > 0 {
                sent_after_restart += 1;
            }
            if sent_after_restart > 100 || std::time::Instant::now() > deadline {
                return (i, failures);
            }
        }
        (3000, failures)
    });
    killed_rx.recv().unwrap();
    world.daemon.kill();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_berth"));
    world.daemon =
        berth_testkit::TestDaemon::start(bin, &world.tmp.path().join("root"), "berth.test")
            .unwrap();
    assert_eq!(world.daemon.http_addr, addr, "the router's socket was kept");
    restarted_tx.send(()).unwrap();
    let (sent, failures) = load.join().unwrap();
    assert!(sent >= 200, "only {sent} requests were sent");
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );

    // The same processes run, adopted, and no second copy was started.
    let after = processes_in(&world, "steady", 1);
    assert_eq!(after, before, "processes changed across the daemon restart");
    let ps = poll("the adopted instances in ps", Duration::from_secs(20), || {
        let ps = world.ssh_ok(&["ps", "steady"]);
        (ps.matches("running").count() >= 4).then_some(ps)
    });
    let pids = |ps: &str| -> BTreeSet<String> {
        ps.lines()
            .filter(|l| l.starts_with("web.") || l.starts_with("worker."))
            .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
            .collect()
    };
    assert_eq!(pids(&ps), pids(&ps_before), "before:\n{ps_before}\nafter:\n{ps}");

    // After a stop of everything (as at a reboot), a new daemon starts the app at its scale.
    world.daemon.stop_everything();
    assert!(processes_in(&world, "steady", 1).is_empty(), "SIGINT stops the apps");
    world.daemon =
        berth_testkit::TestDaemon::start(bin, &world.tmp.path().join("root"), "berth.test")
            .unwrap();
    let ps = poll("the app back at its scale", Duration::from_secs(30), || {
        let ps = world.ssh_ok(&["ps", "steady"]);
        (web_lines(&ps).len() == 2 && ps.matches("running").count() >= 4).then_some(ps)
    });
    assert_ne!(pids(&ps), pids(&ps_before), "{ps}");
    assert_eq!(world.get("steady", "/").status, 200);
}
