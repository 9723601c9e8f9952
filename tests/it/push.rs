//! Pushing apps: first deploy, redeploy, refused pushes, config, hosts and workers.

use std::time::Duration;

use berth_testkit::{output_text, poll};

use crate::World;

const WEB: &str = "web: python3 app.py\n";

#[test]
fn push_deploys_redeploys_and_a_broken_procfile_keeps_the_old_release() {
    let world = World::start("push");
    let repo = world.app_repo("myapp", "v1", WEB, "GREETING=Hello\n");

    let out = world.push_ok(&repo, "myapp");
    let short = &repo.head()[..7];
    assert!(out.contains("-----> Created app myapp"), "{out}");
    assert!(out.contains(&format!("-----> Deploying myapp v1 (commit {short} on main)")), "{out}");
    assert!(out.contains("-----> Process types: web"), "{out}");
    let url = format!("http://myapp.berth.test:{}/", world.daemon.http_addr.port());
    assert!(out.contains(&format!("-----> Your app is at {url}")), "{out}");
    assert!(world.root().join("repos/myapp.git/HEAD").exists());
    assert!(world.root().join("logs/myapp/build/1.log").exists());

    let page = world.get("myapp", "/");
    assert_eq!((page.status, page.body.as_str()), (200, "Hello v1"));

    // The router says who asked, and for which host.
    let headers = world.get("myapp", "/headers").body;
    assert!(headers.contains("x-forwarded-for: 127.0.0.1"), "{headers}");
    assert!(headers.contains("x-forwarded-proto: http"), "{headers}");
    assert!(headers.contains("x-forwarded-host: myapp.berth.test"), "{headers}");

    // A second push with changed code replaces the running version.
    repo.commit(&[("app.py", &crate::app_source("v2"))], "v2").unwrap();
    let out = world.push_ok(&repo, "myapp");
    assert!(out.contains("-----> Deploying myapp v2"), "{out}");
    assert_eq!(world.get("myapp", "/").body, "Hello v2");
    let deployed = repo.head();

    // A broken Procfile is refused with the line and the reason; v2 keeps serving and the
    // server's branch does not move.
    repo.commit(&[("Procfile", "web: python3 app.py\nworker python3 loop.py\n")], "broken")
        .unwrap();
    let output = repo.push(&world.sshd.remote("myapp"));
    let text = output_text(&output);
    assert!(!output.status.success(), "a broken Procfile was accepted:\n{text}");
    assert!(text.contains("Procfile line 2:"), "{text}");
    assert!(text.contains("name: command"), "the message should show the expected form:\n{text}");
    assert!(text.contains("Deploy failed; v2 keeps serving"), "{text}");
    assert!(text.contains("[remote rejected]"), "{text}");
    assert_eq!(world.get("myapp", "/").body, "Hello v2");
    let remote_head =
        repo.git(&["ls-remote", &world.sshd.remote("myapp"), "refs/heads/main"]).unwrap();
    assert!(remote_head.starts_with(&deployed), "server branch moved: {remote_head}");

    // A Procfile whose web process never listens fails the deploy the same way.
    let never_listens = "web: python3 -c 'import time; print(\"not listening\", flush=True); time.sleep(1); raise SystemExit(4)'\n";
    repo.commit(&[("Procfile", never_listens)], "no listener").unwrap();
    let output = repo.push(&world.sshd.remote("myapp"));
    let text = output_text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("web.1 did not start: the process exited with status 4"), "{text}");
    assert!(text.contains("not listening"), "the log tail should be shown:\n{text}");
    assert_eq!(world.get("myapp", "/").body, "Hello v2");
}

#[test]
fn config_set_restarts_the_app_with_the_new_value() {
    let world = World::start("config");
    let repo = world.app_repo("conf", "v1", WEB, "GREETING=Hello\nCOMBINED=${GREETING} world\n");
    world.push_ok(&repo, "conf");
    assert_eq!(world.get("conf", "/").body, "Hello v1");
    assert_eq!(world.get("conf", "/env/COMBINED").body, "Hello world");
    assert!(world.get("conf", "/env/PORT").body.parse::<u16>().is_ok());
    assert_eq!(world.get("conf", "/env/BIND_ADDRESS").body, "127.0.0.1");
    assert_eq!(world.get("conf", "/env/PM_PORT").body, world.get("conf", "/env/PORT").body);
    assert_eq!(world.get("conf", "/env/BERTH_PROCESS").body, "web.1");
    let metadata = world.get("conf", "/env/PM_METADATA").body;
    assert!(
        metadata.contains("\"name\":\"conf\"") && metadata.contains("\"version\":1"),
        "{metadata}"
    );

    // config:set overrides ENV; values with spaces and '=' survive ssh.
    let out = world.ssh_ok(&["config:set", "conf", "GREETING=Howdy", "'EXTRA=a b=c'"]);
    assert!(out.contains("set EXTRA, GREETING on conf; restarted"), "{out}");
    assert_eq!(world.get("conf", "/").body, "Howdy v1");
    assert_eq!(world.get("conf", "/env/EXTRA").body, "a b=c");

    // unset falls back to the ENV file's value.
    let out = world.ssh_ok(&["config:unset", "conf", "GREETING"]);
    assert!(out.contains("unset GREETING on conf; restarted"), "{out}");
    assert_eq!(world.get("conf", "/").body, "Hello v1");

    // A bad key is refused and nothing changes.
    let output = world.ssh(&["config:set", "conf", "1BAD=x"]);
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains("invalid config key \"1BAD\""),
        "{}",
        output_text(&output)
    );
    assert_eq!(world.ssh_ok(&["config:get", "conf", "EXTRA"]), "a b=c\n");
}

#[test]
fn server_names_from_env_route_and_workers_run_without_a_port() {
    let world = World::start("hosts");
    let procfile = "web: python3 app.py\n\
                    worker: echo \"worker PORT=${PORT:-none} GREETING=$GREETING\"; exec sleep 600\n";
    let env = "GREETING=Hi\nNGINX_SERVER_NAME=www.example.test, Example.TEST\n";
    let repo = world.app_repo("site", "v1", procfile, env);
    let out = world.push_ok(&repo, "site");
    assert!(out.contains("-----> Process types: web, worker"), "{out}");

    for host in ["site.berth.test", "www.example.test", "example.test", "EXAMPLE.test:8080"] {
        let page = world.daemon.get(host, "/").unwrap();
        assert_eq!((page.status, page.body.as_str()), (200, "Hi v1"), "host {host}");
    }
    let unknown = world.daemon.get("other.example.test", "/").unwrap();
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("no app is served at other.example.test"), "{}", unknown.body);

    let logs = poll("the worker's line in its log", Duration::from_secs(20), || {
        let out = world.ssh_ok(&["logs", "site", "worker"]);
        out.contains("worker PORT=").then_some(out)
    });
    assert!(logs.contains("worker.1 | worker PORT=none GREETING=Hi"), "{logs}");
}

#[test]
fn a_crashed_process_is_restarted() {
    let world = World::start("crash");
    let repo = world.app_repo("crashy", "v1", WEB, "");
    world.push_ok(&repo, "crashy");
    let pid_before = pid_of_web(&world, "crashy");

    // The app exits on /crash; the connection drops or the router answers 502.
    let _ = world.daemon.get("crashy.berth.test", "/crash");
    let page = poll("the app back after a crash", Duration::from_secs(30), || {
        world.daemon.get("crashy.berth.test", "/").ok().filter(|p| p.status == 200)
    });
    assert_eq!(page.body, "? v1");
    let ps = world.ssh_ok(&["ps", "crashy"]);
    assert!(ps.contains("exited with status 3"), "{ps}");
    assert_ne!(pid_of_web(&world, "crashy"), pid_before);
    let logs = world.ssh_ok(&["logs", "crashy", "web"]);
    assert!(logs.contains("berth: web.1 exited with status 3; restarting in 1 s"), "{logs}");
}

fn pid_of_web(world: &World, app: &str) -> String {
    let ps = world.ssh_ok(&["ps", app]);
    let line =
        ps.lines().find(|l| l.starts_with("web.1")).unwrap_or_else(|| panic!("no web.1 in:\n{ps}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

#[test]
fn a_restarted_daemon_brings_running_apps_back() {
    let mut world = World::start("restore");
    let repo = world.app_repo("kept", "v1", WEB, "");
    world.push_ok(&repo, "kept");
    assert_eq!(world.get("kept", "/").status, 200);

    world.daemon.stop();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_berth"));
    world.daemon =
        berth_testkit::TestDaemon::start(bin, &world.tmp.path().join("root"), "berth.test")
            .unwrap();
    let page = poll("the app after a daemon restart", Duration::from_secs(30), || {
        world.daemon.get("kept.berth.test", "/").ok().filter(|p| p.status == 200)
    });
    assert_eq!(page.body, "? v1");
}
