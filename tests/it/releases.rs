//! Releases: zero-downtime redeploys, health checks, rollback with config, deploy locks.

use std::time::Duration;

use berth_testkit::{TestDaemon, output_text, poll};

use crate::{World, app_source};

/// Sends requests one after another until `stop` is set (at most `max`), and returns how many
/// were sent and the failed ones.
fn load(
    world: &World,
    app: &str,
    stop: &std::sync::atomic::AtomicBool,
    max: usize,
) -> (usize, Vec<String>) {
    let host = world.daemon.app_host(app);
    let mut failures = Vec::new();
    let mut sent = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < max {
        sent += 1;
        match world.daemon.get(&host, "/") {
            Ok(page) if page.status == 200 => {}
            Ok(page) => failures.push(format!("{} {}", page.status, page.body)),
            Err(err) => failures.push(err.to_string()),
        }
    }
    (sent, failures)
}

#[test]
fn twenty_redeploys_under_load_fail_no_request() {
    let world = World::start("zero");
    let repo = world.app_repo("smooth", "v0", "web: python3 app.py\n", "GREETING=Hi\n");
    world.push_ok(&repo, "smooth");
    world.ssh_ok(&["ps:scale", "smooth", "web=2"]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (sent, failures) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(&world, "smooth", &stop, 200_000));
        for n in 1..=20 {
            repo.commit(&[("app.py", &app_source(&format!("v{n}")))], &format!("v{n}")).unwrap();
            let out = world.push_ok(&repo, "smooth");
            assert!(out.contains("web instance(s) healthy; switching the routes"), "{out}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap()
    });
    assert!(sent > 100, "only {sent} requests were sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(world.get("smooth", "/").body, "Hi v20");
}

#[test]
fn a_release_that_fails_its_checks_is_refused_and_the_old_keeps_answering() {
    let world = World::start("checks");
    let repo = world.app_repo("checked", "v1", "web: python3 app.py\n", "GREETING=Hello\n");
    repo.commit(&[("CHECKS", "ATTEMPTS=2\nTIMEOUT=2\n/ Hello\n")], "checks").unwrap();
    world.push_ok(&repo, "checked");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (out, (sent, failures)) = std::thread::scope(|scope| {
        let load = scope.spawn(|| load(&world, "checked", &stop, 100_000));
        repo.commit(
            &[("ENV", "GREETING=Bye\n"), ("app.py", &app_source("v2"))],
            "breaks the check",
        )
        .unwrap();
        let out = world.push_refused(&repo, "checked");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, load.join().unwrap())
    });
    assert!(out.contains("web.1 did not start: failed its health check: GET / answered 200 without the text \"Hello\" (2 attempts)"), "{out}");
    assert!(out.contains("Deploy failed; v1 keeps serving"), "{out}");
    assert!(sent > 0 && failures.is_empty(), "{failures:?}");
    assert_eq!(world.get("checked", "/").body, "Hello v1");
}

#[test]
fn rollback_restores_code_and_config() {
    let world = World::start("rollback");
    let repo = world.app_repo("back", "v1", "web: python3 app.py\n", "");
    world.push_ok(&repo, "back");
    world.ssh_ok(&["config:set", "back", "GREETING=one"]);
    repo.commit(&[("app.py", &app_source("v2"))], "v2").unwrap();
    world.push_ok(&repo, "back");
    world.ssh_ok(&["config:set", "back", "GREETING=two"]);
    assert_eq!(world.get("back", "/").body, "two v2");

    let releases = world.ssh_ok(&["releases", "back"]);
    let lines: Vec<&str> = releases.lines().collect();
    assert!(lines[1].starts_with("*v4") && lines[1].contains("config (build of v3)"), "{releases}");
    assert!(
        lines[2].contains("v3") && lines[2].contains("push") && lines[2].contains("berth-test"),
        "{releases}"
    );

    let out = world.ssh_ok(&["rollback", "back"]);
    assert!(out.contains("back is back on v3"), "{out}");
    assert_eq!(world.get("back", "/").body, "one v2");
    assert_eq!(world.ssh_ok(&["config:get", "back", "GREETING"]), "one\n");

    world.ssh_ok(&["rollback", "back", "v1"]);
    assert_eq!(world.get("back", "/").body, "? v1");
    assert!(world.ssh_ok(&["config", "back"]).contains("has no config vars"));
    assert!(world.ssh_ok(&["releases", "back"]).lines().any(|l| l.starts_with("*v1")));

    let output = world.ssh(&["rollback", "back", "9"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output_text(&output).contains("back has no release v9"), "{}", output_text(&output));

    // Keeping one tree prunes the others: they can no longer be made current.
    world.ssh_ok(&["releases:keep", "back", "1"]);
    assert!(!world.root().join("releases/back/3").exists());
    let output = world.ssh(&["rollback", "back", "3"]);
    assert!(
        output_text(&output).contains("was pruned (releases:keep)"),
        "{}",
        output_text(&output)
    );
    assert_eq!(world.get("back", "/").body, "? v1");
}

#[test]
fn deploys_of_one_app_wait_their_turn_and_locks_refuse_them() {
    let world = World::start("locks");
    // Each preflight records when it ran, in a file of its own (each app has its own Unix
    // user, so they cannot share one), so the runs of the pushes can be compared.
    let dir = world.tmp.path().join("runs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let procfile = |name: &str| {
        let file = dir.join(name).display().to_string();
        format!(
            "preflight: echo start $(date +%s%N) >> {file}; sleep 1; echo end $(date +%s%N) >> {file}\nweb: python3 app.py\n"
        )
    };
    let one = world.app_repo("one", "v1", &procfile("one-a"), "");
    let one_again = world.app_repo("one-again", "v1", &procfile("one-b"), "");
    let two = world.app_repo("two", "v1", &procfile("two"), "");
    let (a, b, c) = std::thread::scope(|scope| {
        let a = scope.spawn(|| one.push(&world.sshd.remote("one")));
        // To master: both branches deploy, and two pushes to one branch at once are a race
        // that git settles by refusing one of them.
        let b = scope.spawn(|| one_again.push_to(&world.sshd.remote("one"), "main:master"));
        let c = scope.spawn(|| two.push(&world.sshd.remote("two")));
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
    });
    for output in [&a, &b, &c] {
        assert!(output.status.success(), "{}", output_text(output));
    }
    let waited = [&a, &b]
        .iter()
        .filter(|o| output_text(o).contains("Another deploy of one is running; waiting"))
        .count();
    assert_eq!(
        waited,
        1,
        "one of the two pushes to `one` waits:\n{}\n{}",
        output_text(&a),
        output_text(&b)
    );
    assert!(!output_text(&c).contains("waiting"), "{}", output_text(&c));

    // Runs of one app never overlap; runs of two apps do.
    let span = |name: &str| -> (u128, u128) {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let at = |what: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(what))
                .map(|t| t.trim().parse().unwrap())
                .unwrap()
        };
        (at("start "), at("end "))
    };
    let (a, b, t) = (span("one-a"), span("one-b"), span("two"));
    assert!(a.1 <= b.0 || b.1 <= a.0, "two deploys of one app overlapped: {a:?} {b:?}");
    let overlaps = |x: (u128, u128), y: (u128, u128)| x.0 < y.1 && y.0 < x.1;
    assert!(
        overlaps(t, a) || overlaps(t, b),
        "deploys of two apps ran one after the other: {a:?} {b:?} {t:?}"
    );

    // A manual lock refuses pushes with the reason, until unlocked.
    world.ssh_ok(&["apps:lock", "two", "database", "migration"]);
    two.commit(&[("app.py", &app_source("v2"))], "v2").unwrap();
    let out = world.push_refused(&two, "two");
    assert!(out.contains("two is locked (database migration)"), "{out}");
    world.ssh_ok(&["apps:unlock", "two"]);
    world.push_ok(&two, "two");
    assert_eq!(world.get("two", "/").body, "? v2");
}

#[test]
fn a_preview_answers_on_its_own_host_survives_a_daemon_restart_and_can_be_promoted() {
    let mut world = World::start("preview");
    let repo = world.app_repo("prev", "v1", "web: python3 app.py\n", "GREETING=Hi\n");
    world.push_ok(&repo, "prev");
    repo.commit(&[("app.py", &app_source("v2"))], "v2").unwrap();
    world.push_ok(&repo, "prev");

    let out = world.ssh_ok(&["releases:start", "prev", "1"]);
    assert!(
        out.contains("v1 of prev runs beside the current release at http://v1.prev.berth.test:"),
        "{out}"
    );
    let preview = world.daemon.get("v1.prev.berth.test", "/").unwrap();
    assert_eq!((preview.status, preview.body.as_str()), (200, "Hi v1"));
    assert_eq!(world.get("prev", "/").body, "Hi v2", "the current release keeps serving");

    // A new daemon (an upgrade) takes the running preview over: the same process answers.
    let port = preview_port(&world, 1);
    world.daemon.stop();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_berth"));
    world.daemon = TestDaemon::start(bin, world.root(), "berth.test").unwrap();
    let preview = poll("the preview back", Duration::from_secs(30), || {
        world.daemon.get("v1.prev.berth.test", "/").ok().filter(|r| r.status == 200)
    });
    assert_eq!(preview.body, "Hi v1");
    assert_eq!(
        preview_port(&world, 1),
        port,
        "started again, not adopted:\n{}",
        world.daemon.log()
    );

    let out = world.ssh_ok(&["releases:promote", "prev", "1"]);
    assert!(out.contains("v1 is the current release of prev"), "{out}");
    assert_eq!(world.get("prev", "/").body, "Hi v1");
    assert_eq!(
        world.daemon.get("v1.prev.berth.test", "/").unwrap().status,
        404,
        "the preview stopped"
    );
    assert!(!answers(port), "the preview's process still runs");

    let output = world.ssh(&["releases:start", "prev", "1"]);
    assert!(
        output_text(&output).contains("v1 is the current release of prev; it needs no preview")
    );
    let output = world.ssh(&["releases:stop", "prev", "2"]);
    assert!(output_text(&output).contains("v2 of prev has no preview running"));

    // Stopping the daemon with everything it runs (SIGINT) stops previews too, and the next
    // daemon does not bring them back.
    world.ssh_ok(&["releases:start", "prev", "2"]);
    let port = preview_port(&world, 2);
    world.daemon.stop_everything();
    assert!(!answers(port), "a preview outlived SIGINT");
    world.daemon = TestDaemon::start(bin, world.root(), "berth.test").unwrap();
    poll("prev back", Duration::from_secs(30), || {
        world.daemon.get("prev.berth.test", "/").ok().filter(|r| r.body == "Hi v1")
    });
    assert_eq!(world.daemon.get("v2.prev.berth.test", "/").unwrap().status, 404);

    // Stopping the app stops its previews; one started while it is stopped runs.
    world.ssh_ok(&["releases:start", "prev", "2"]);
    let port = preview_port(&world, 2);
    world.ssh_ok(&["stop", "prev"]);
    assert!(!answers(port), "a preview outlived its app's stop");
    world.ssh_ok(&["releases:start", "prev", "2"]);

    // Destroying the app stops its previews too.
    let port = preview_port(&world, 2);
    world.ssh_ok(&["destroy", "prev", "--force"]);
    assert!(!answers(port), "a preview outlived its app");
    assert_eq!(world.daemon.get("v2.prev.berth.test", "/").unwrap().status, 404);
}

/// The port the preview of release `n` of `prev` listens on, as it tells.
fn preview_port(world: &World, n: i64) -> u16 {
    let host = format!("v{n}.prev.berth.test");
    let page = world.daemon.get(&host, "/env/PORT").unwrap();
    page.body.parse().unwrap_or_else(|_| panic!("no port from {host}: {}", page.body))
}

/// Whether something accepts connections on `port` of loopback.
fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}
