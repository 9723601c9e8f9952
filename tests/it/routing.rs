//! Every way to reach an app through the router (default name, domains, wildcards,
//! NGINX_SERVER_NAME, the X-App header, HTTPS, app ports), and who may: basic auth and
//! address allow lists.

use std::io::{Read, Write};

use berth_testkit::{http_get_with, output_text};

use crate::World;

#[test]
fn domains_wildcards_x_app_and_access_control_reach_the_right_app() {
    let world = World::start("routing");
    let a = world.app_repo("alpha", "a1", "web: python3 app.py\n", "");
    world.push_ok(&a, "alpha");
    let b = world.app_repo("beta", "b1", "web: python3 app.py\n", "");
    world.push_ok(&b, "beta");

    assert_eq!(
        world.ssh_ok(&["domains:add", "alpha", "WWW.Alpha.test"]),
        "alpha answers at www.alpha.test too\n"
    );
    world.ssh_ok(&["domains:add", "alpha", "*.wild.test"]);
    let domains = world.ssh_ok(&["domains", "alpha"]);
    assert_eq!(
        domains,
        "alpha.berth.test  (default)\n*.wild.test  (domains:add)\nwww.alpha.test  (domains:add)\n"
    );
    for host in ["www.alpha.test", "x.wild.test", "deep.x.wild.test"] {
        assert_eq!(world.daemon.get(host, "/").unwrap().body, "? a1", "{host}");
    }
    assert_eq!(world.daemon.get("wild.test", "/").unwrap().status, 404, "a wildcard needs a label");

    // A name belongs to one app.
    let output = world.ssh(&["domains:add", "beta", "www.alpha.test"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output_text(&output).contains("www.alpha.test is already served by alpha"),
        "{}",
        output_text(&output)
    );
    b.commit(&[("ENV", "NGINX_SERVER_NAME=www.alpha.test\n")], "steal").unwrap();
    let out = world.push_refused(&b, "beta");
    assert!(
        out.contains("www.alpha.test is already served by alpha; remove it there first"),
        "{out}"
    );
    assert_eq!(world.daemon.get("www.alpha.test", "/").unwrap().body, "? a1");

    // X-App reaches an app on any host the router serves.
    let page =
        http_get_with(world.daemon.http_addr, "www.alpha.test", "/", &[("X-App", "beta")]).unwrap();
    assert_eq!(page.body, "? b1");
    let headers =
        http_get_with(world.daemon.http_addr, "alpha.berth.test", "/headers", &[]).unwrap().body;
    assert!(headers.contains("x-request-id: "), "{headers}");
    assert!(
        headers.contains("forwarded: for=127.0.0.1;proto=http;host=alpha.berth.test"),
        "{headers}"
    );

    // Removing a domain takes it out of the routes at once, without a restart.
    world.ssh_ok(&["domains:remove", "alpha", "www.alpha.test"]);
    assert_eq!(world.daemon.get("www.alpha.test", "/").unwrap().status, 404);
    world.ssh_ok(&["domains:add", "beta", "www.alpha.test"]);
    assert_eq!(world.daemon.get("www.alpha.test", "/").unwrap().body, "? b1");

    // The same two apps, one of them guarded.
    basic_auth_over_ssh_and_ip_allow_lists_protect_an_app_without_a_restart(&world);
}

/// `auth:set` (the password on stdin) and BERTH_ALLOW_IPS on the running app `alpha`
/// ("? a1"), with `beta` ("? b1") beside it.
fn basic_auth_over_ssh_and_ip_allow_lists_protect_an_app_without_a_restart(world: &World) {
    // The PID column of `ps`, under its header.
    let pids = |app: &str| -> Vec<String> {
        let ps = world.ssh_ok(&["ps", app]);
        let rows = ps.lines().skip_while(|line| !line.starts_with("PROCESS")).skip(1);
        rows.filter_map(|row| row.split_whitespace().nth(1).map(str::to_owned)).collect()
    };
    let before = pids("alpha");
    assert_eq!(before.len(), 1, "{before:?}");

    // The password comes on stdin: none, or one given as an argument, is refused.
    let output = world.sshd.run_with_input(&["auth:set", "alpha", "alice"], "");
    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    assert!(output_text(&output).contains("no password on standard input"));
    let output = world.sshd.run(&["auth:set", "alpha", "alice", "hunter2"]);
    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    assert!(!output_text(&output).contains("hunter2"), "{}", output_text(&output));
    assert_eq!(world.get("alpha", "/").body, "? a1", "a refused auth:set changes nothing");

    // Typed on the server's own terminal: the password is not shown, and Ctrl-C halfway
    // cancels, setting nothing and leaving the terminal as it was (echo and Ctrl-C back on).
    let (code, shown, after) = auth_set_on_a_terminal(world, "alpha", "mallory", b"hal\x03");
    assert_eq!(code, Some(2), "{shown}");
    assert!(shown.contains("password for mallory: "), "{shown}");
    assert!(shown.contains("cancelled; the password was not changed"), "{shown}");
    assert!(!shown.contains("hal"), "the typing was shown: {shown}");
    use nix::sys::termios::LocalFlags;
    assert!(after.contains(LocalFlags::ECHO | LocalFlags::ISIG), "{after:?}");
    assert!(world.ssh_ok(&["auth", "alpha"]).contains("asks for no password"));
    assert_eq!(world.get("alpha", "/").body, "? a1");
    let (code, shown, _) = auth_set_on_a_terminal(world, "alpha", "mallory", b"on a tty\n");
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("mallory may now sign in to alpha"), "{shown}");
    assert!(!shown.contains("on a tty"), "the password was shown: {shown}");
    world.ssh_ok(&["auth:unset", "alpha", "mallory"]);

    let output = world.sshd.run_with_input(&["auth:set", "alpha", "alice"], "s3cret pass\n");
    assert!(output.status.success(), "{}", output_text(&output));
    assert!(output_text(&output).contains("alice may now sign in to alpha"));
    assert!(world.ssh_ok(&["auth", "alpha"]).contains("alice"));

    // At once, without a restart: no credentials or wrong ones get 401, the right ones pass,
    // and the app still sees them.
    let page = world.get("alpha", "/");
    assert_eq!(page.status, 401, "{}", page.body);
    assert_eq!(page.header("www-authenticate"), Some("Basic realm=\"alpha\""));
    let basic = |user: &str, password: &str| {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}")
    };
    let addr = world.daemon.http_addr;
    let host = world.daemon.app_host("alpha");
    let wrong = basic("alice", "s3cret");
    let page = http_get_with(addr, &host, "/", &[("Authorization", &wrong)]).unwrap();
    assert_eq!(page.status, 401);
    let right = basic("alice", "s3cret pass");
    let page = http_get_with(addr, &host, "/headers", &[("Authorization", &right)]).unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(&format!("authorization: {right}")), "{}", page.body);
    assert_eq!(world.get("beta", "/").body, "? b1", "another app stays open");
    assert_eq!(pids("alpha"), before, "the app was restarted");
    // Only a slow hash is kept: not the password, nor in any log.
    let db = std::fs::read(world.root().join("berth.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains("s3cret pass"));
    assert!(!world.sshd.log().contains("s3cret") && !world.daemon.log().contains("s3cret"));

    world.ssh_ok(&["auth:unset", "alpha", "alice"]);
    assert_eq!(world.get("alpha", "/").body, "? a1");
    assert!(world.ssh_ok(&["auth", "alpha"]).contains("asks for no password"));
    let output = world.ssh(&["auth:unset", "alpha", "alice"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output_text(&output).contains("alpha has no user \"alice\""));

    // A bad allow list is refused with the entry named, and nothing changes.
    let output = world.ssh(&["config:set", "alpha", "BERTH_ALLOW_IPS=10.0.0.0/8,10.0.0.0/33"]);
    assert_eq!(output.status.code(), Some(1), "{}", output_text(&output));
    let text = output_text(&output);
    assert!(
        text.contains("BERTH_ALLOW_IPS: \"10.0.0.0/33\" has a prefix length over 32"),
        "{text}"
    );
    assert!(text.contains("like 10.0.0.0/8"), "{text}");
    assert!(world.ssh(&["config:get", "alpha", "BERTH_ALLOW_IPS"]).status.code() == Some(1));
    assert_eq!(world.get("alpha", "/").body, "? a1");
    // A list without loopback shuts the test out; without the list it is open again.
    world.ssh_ok(&["config:set", "alpha", "BERTH_ALLOW_IPS=10.0.0.0/8,::1"]);
    let page = world.get("alpha", "/");
    assert_eq!(page.status, 403, "{}", page.body);
    assert_eq!(page.body, "403 forbidden: the address 127.0.0.1 may not reach this app\n");
    world.ssh_ok(&["config:unset", "alpha", "BERTH_ALLOW_IPS"]);
    assert_eq!(world.get("alpha", "/").body, "? a1");
}

/// `curl` against the router's HTTPS port, resolving `host` to loopback; returns what it
/// printed (the body, then the HTTP version it spoke with `-w`).
fn curl_https(world: &World, host: &str, extra: &[&str]) -> std::process::Output {
    let addr = world.daemon.https_addr.expect("the test daemon serves HTTPS");
    std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!("{host}:{}:127.0.0.1", addr.port()))
        .args(extra)
        .args(["-w", " %{http_version}"])
        .arg(format!("https://{host}:{}/", addr.port()))
        .output()
        .expect("run curl")
}

#[test]
fn https_with_http2_a_self_signed_default_and_a_certificate_users_bring() {
    let world = World::start("https");
    let repo = world.app_repo("secure", "s1", "web: python3 app.py\n", "");
    world.push_ok(&repo, "secure");

    // Until a certificate arrives, a self-signed one; HTTP/2 by ALPN, HTTP/1.1 on request.
    let output = curl_https(&world, "secure.berth.test", &["-k"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "? s1 2", "{}", output_text(&output));
    let output = curl_https(&world, "secure.berth.test", &["-k", "--http1.1"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "? s1 1.1", "{}", output_text(&output));
    let headers = curl_https(&world, "secure.berth.test", &["-k", "-H", "Host: secure.berth.test"]);
    assert!(headers.status.success());
    let verified = curl_https(&world, "secure.berth.test", &[]);
    assert!(!verified.status.success(), "a self-signed certificate must not verify");

    // A certificate the user brings is checked, then served by SNI.
    let dir = world.tmp.path().join("cert");
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "30",
        ])
        .args(["-subj", "/CN=secure.berth.test", "-addext", "subjectAltName=DNS:secure.berth.test"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("cert.pem")).unwrap(),
        std::fs::read_to_string(dir.join("key.pem")).unwrap()
    );
    let output = world.sshd.run_with_input(&["certs:add", "secure", "-"], &bundle);
    assert!(output.status.success(), "{}", output_text(&output));
    assert!(output_text(&output).contains("secure serves this certificate for secure.berth.test"));
    let certs = world.ssh_ok(&["certs", "secure"]);
    assert!(certs.contains("secure.berth.test") && certs.contains("user"), "{certs}");
    let ca = dir.join("cert.pem").display().to_string();
    let output = curl_https(&world, "secure.berth.test", &["--cacert", &ca]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "? s1 2", "{}", output_text(&output));

    // A key that is not the certificate's is refused with the reason.
    let other = world.tmp.path().join("other.pem");
    let status = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let bad = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("cert.pem")).unwrap(),
        std::fs::read_to_string(&other).unwrap()
    );
    let output = world.sshd.run_with_input(&["certs:add", "secure", "-"], &bad);
    assert_eq!(output.status.code(), Some(1));
    assert!(output_text(&output).to_lowercase().contains("key"), "{}", output_text(&output));
}

#[test]
fn nginx_knobs_https_only_cache_body_limit_path_routing_and_access_log() {
    let world = World::start("knobs");
    let env = "NGINX_HTTPS_ONLY=true\nNGINX_CACHE_PREFIXES=/env\nBERTH_MAX_BODY_SIZE=1K\nBERTH_PATH_ROUTING=true\n";
    let repo = world.app_repo("knobby", "k1", "web: python3 app.py\n", env);
    world.push_ok(&repo, "knobby");

    // HTTP redirects to HTTPS; HTTPS answers with HSTS.
    let page = world.get("knobby", "/env/BERTH_APP?x=1");
    assert_eq!(page.status, 301, "{}", page.body);
    assert_eq!(page.header("location"), Some("https://knobby.berth.test/env/BERTH_APP?x=1"));
    let output = curl_https(&world, "knobby.berth.test", &["-k", "-D", "-"]);
    let text = String::from_utf8_lossy(&output.stdout).to_lowercase();
    assert!(text.contains("strict-transport-security: max-age=31536000"), "{text}");

    // The cache answers the second request for a cached prefix itself.
    let get = |path: &str| {
        let addr = world.daemon.https_addr.unwrap();
        let out = std::process::Command::new("curl")
            .args(["-sk", "-D", "-", "--resolve"])
            .arg(format!("knobby.berth.test:{}:127.0.0.1", addr.port()))
            .arg(format!("https://knobby.berth.test:{}{path}", addr.port()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    assert!(get("/env/BERTH_APP").contains("x-cache: miss"));
    let second = get("/env/BERTH_APP");
    assert!(second.contains("x-cache: hit") && second.ends_with("knobby"), "{second}");

    // A body over the limit is refused before the app sees it. curl sends the body right
    // after the head over TLS: unless the router reads it before answering (its lingering
    // close, `discard_refused_body`), the connection is reset and the 413 lost ("000").
    let addr = world.daemon.https_addr.unwrap();
    let big = "x".repeat(4096);
    let out = std::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--data", &big, "--resolve"])
        .arg(format!("knobby.berth.test:{}:127.0.0.1", addr.port()))
        .arg(format!("https://knobby.berth.test:{}/", addr.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");

    // Path routing: /knobby/... on a name no app has, prefix stripped.
    let out = std::process::Command::new("curl")
        .args(["-sk", "--resolve"])
        .arg(format!("elsewhere.test:{}:127.0.0.1", addr.port()))
        .arg(format!("https://elsewhere.test:{}/knobby/headers", addr.port()))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout);
    assert!(headers.contains("x-forwarded-prefix: /knobby"), "{headers}");

    // Every request is in the app's access log.
    let log = world.ssh_ok(&["logs", "knobby", "router"]);
    assert!(log.contains("\"GET /env/BERTH_APP HTTP/2.0\" 200"), "{log}");
}

#[test]
fn an_app_port_reaches_the_app_whatever_the_host_and_listens_through_daemon_restarts() {
    let mut world = World::start("ports");
    let repo = world.app_repo("porty", "p1", "web: python3 app.py\n", "");
    world.push_ok(&repo, "porty");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = world.ssh_ok(&["ports:add", "porty", &port.to_string()]);
    assert!(out.contains(&format!("porty answers on port {port} too")), "{out}");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(berth_testkit::http_get(addr, "anything.test", "/").unwrap().body, "? p1");
    assert_eq!(world.ssh_ok(&["ports", "porty"]), format!("{port}\n"));
    let other = world.app_repo("other-port", "o1", "web: python3 app.py\n", "");
    world.push_ok(&other, "other-port");
    let output = world.ssh(&["ports:add", "other-port", &port.to_string()]);
    assert!(
        output_text(&output).contains(&format!("port {port} belongs to porty")),
        "{}",
        output_text(&output)
    );

    // While the daemon restarts the port still listens (the socket keeper holds it): a
    // visitor who comes meanwhile waits and is answered by the next daemon.
    world.daemon.stop();
    let mut visitor = std::net::TcpStream::connect(addr).expect("refused while no daemon ran");
    visitor.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").unwrap();
    restart_daemon(&mut world);
    visitor.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    visitor.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("? p1"), "{answer}");

    world.ssh_ok(&["ports:remove", "porty", &port.to_string()]);
    berth_testkit::poll("the port closed", std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    });
    // A removed port is not kept for later either.
    world.daemon.stop();
    assert!(std::net::TcpStream::connect(addr).is_err(), "the keeper still holds the port");
    restart_daemon(&mut world);
    assert!(std::net::TcpStream::connect(addr).is_err(), "a removed port listens again");
}

/// Starts a new daemon on the world's root, the earlier one stopped.
fn restart_daemon(world: &mut World) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_berth"));
    world.daemon = berth_testkit::TestDaemon::start(bin, world.root(), "berth.test").unwrap();
}

/// Runs `berth auth:set APP USER` on the server itself with a terminal for its input and
/// output, types `typed` there, and returns its exit code, what the terminal showed, and the
/// terminal's local flags once it has exited.
fn auth_set_on_a_terminal(
    world: &World,
    app: &str,
    user: &str,
    typed: &[u8],
) -> (Option<i32>, String, nix::sys::termios::LocalFlags) {
    use std::os::fd::AsFd;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    let pty = nix::pty::openpty(None, None).unwrap();
    let terminal = || Stdio::from(pty.slave.try_clone().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--root")
        .arg(world.root())
        .args(["auth:set", app, user])
        .stdin(terminal())
        .stdout(terminal())
        .stderr(terminal())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut shown = Vec::new();
    // Whether anything came within 50 ms.
    let read_some = |shown: &mut Vec<u8>| {
        let mut ready = [PollFd::new(pty.master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut ready, PollTimeout::from(50u16)).unwrap() == 0 {
            return false;
        }
        let mut buf = [0u8; 512];
        let n = nix::unistd::read(&pty.master, &mut buf).unwrap();
        shown.extend_from_slice(&buf[..n]);
        true
    };
    // Typed once the prompt is up, as a person would.
    while !String::from_utf8_lossy(&shown).contains("password for") {
        assert!(Instant::now() < deadline, "no prompt: {}", String::from_utf8_lossy(&shown));
        read_some(&mut shown);
    }
    nix::unistd::write(&pty.master, typed).unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("auth:set still waits: {}", String::from_utf8_lossy(&shown));
        }
        read_some(&mut shown);
    };
    // What it wrote last may still be in the terminal.
    while read_some(&mut shown) {}
    let flags = nix::sys::termios::tcgetattr(&pty.slave).unwrap().local_flags;
    (status.code(), String::from_utf8_lossy(&shown).into_owned(), flags)
}
