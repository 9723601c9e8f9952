//! Real parts for tests: a temporary Berth root, a daemon on it, an `sshd` on loopback whose
//! only key runs Berth's forced command, git repos to push, and a raw HTTP client.
//!
//! Nothing here is a mock: tests drive Berth the way a user does, through ssh and git and the
//! router. Every wait polls with a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub mod pebble;
pub mod tls;
pub mod websocket;

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A loopback TCP port free a moment ago, for servers that must be told their port before
/// they start (sshd, pebble, a daemon another server must know the address of).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// A directory removed on drop (kept when `BERTH_KEEP_TEST_DIRS` is set, for debugging).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new directory under /tmp with a short name: unix socket paths must stay under 108
    /// bytes, so a long `$TMPDIR` is avoided on purpose.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/berth-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A `TempDir` is used as the path it is.
impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("BERTH_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Sends SIGTERM to a child we started, waits up to `grace`, then SIGKILL.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A `berth daemon` on its own root, with the router on a free loopback port.
#[derive(Debug)]
pub struct TestDaemon {
    pub root: PathBuf,
    pub http_addr: SocketAddr,
    /// Where the router serves HTTPS.
    pub https_addr: Option<SocketAddr>,
    /// Where the API is served on TCP (tokens required).
    pub api_addr: Option<SocketAddr>,
    pub domain: String,
    child: Child,
}

impl TestDaemon {
    pub fn start(bin: &Path, root: &Path, domain: &str) -> anyhow::Result<TestDaemon> {
        TestDaemon::start_with_env(bin, root, domain, &[])
    }

    /// Starts a daemon with extra environment (a PATH with or without a tool, say), which its
    /// apps and builds inherit.
    pub fn start_with_env(
        bin: &Path,
        root: &Path,
        domain: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<TestDaemon> {
        TestDaemon::start_with_args(bin, root, domain, env, &[])
    }

    /// Starts a daemon with extra environment and extra `berth daemon` arguments. The router
    /// and the API listen on free loopback ports (`--http`, `--https`, `--api` at
    /// `127.0.0.1:0`) unless `args` names one of those flags itself (`--http ADDR`).
    pub fn start_with_args(
        bin: &Path,
        root: &Path,
        domain: &str,
        env: &[(String, String)],
        args: &[String],
    ) -> anyhow::Result<TestDaemon> {
        std::fs::create_dir_all(root)?;
        // Appending keeps the log of an earlier daemon on the same root.
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(root.join("daemon.log"))?;
        let mut listen = Vec::new();
        for flag in ["--http", "--https", "--api"] {
            if !args.iter().any(|arg| arg == flag) {
                listen.extend([flag, "127.0.0.1:0"]);
            }
        }
        // The daemon writes where it listens once it does; an earlier daemon's files on the
        // same root must not be taken for this one's.
        let serves_https = !args.iter().any(|arg| arg == "--no-https");
        let run = root.join("run");
        for name in ["https.addr", "api.addr"] {
            let _ = std::fs::remove_file(run.join(name));
        }
        let child = Command::new(bin)
            .arg("--root")
            .arg(root)
            .arg("daemon")
            .args(listen)
            .args(args)
            .args(["--domain", domain])
            .env("BERTH_LOG", "debug,hyper=info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start berth daemon")?;
        let mut daemon = TestDaemon {
            root: root.to_owned(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            https_addr: None,
            api_addr: None,
            domain: domain.to_owned(),
            child,
        };
        let socket = run.join("berth.sock");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                bail!("the daemon exited with {status}: {}", daemon.log());
            }
            let read_addr = |name: &str| {
                std::fs::read_to_string(run.join(name)).ok().and_then(|s| s.trim().parse().ok())
            };
            let (http, https, api) =
                (read_addr("http.addr"), read_addr("https.addr"), read_addr("api.addr"));
            if let Some(addr) = http
                && (https.is_some() || !serves_https)
                && api.is_some()
                && std::os::unix::net::UnixStream::connect(&socket).is_ok()
            {
                daemon.http_addr = addr;
                daemon.https_addr = https;
                daemon.api_addr = api;
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!("the daemon did not become ready: {}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the daemon with SIGTERM and waits for it. Its apps keep running, for the next
    /// daemon on the same root to adopt: start one.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(30));
    }

    /// Kills the daemon with SIGKILL, as a crash would. Its apps keep running.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the daemon with SIGINT, which stops every app and the socket keeper too.
    pub fn stop_everything(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `GET path` with `Host: host` through the router.
    pub fn get(&self, host: &str, path: &str) -> anyhow::Result<HttpResponse> {
        http_get(self.http_addr, host, path)
    }

    /// The host name of an app under the daemon's base domain.
    pub fn app_host(&self, app: &str) -> String {
        format!("{app}.{}", self.domain)
    }
}

impl Drop for TestDaemon {
    /// A daemon still running is stopped with everything it runs. One that was stopped or
    /// killed on purpose is left alone: the test started the next daemon, which owns the apps.
    /// Unless the test failed before it could: then no daemon owns them, and they are ended
    /// here (the processes recorded on the root, and the socket keeper).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop_everything();
        } else if std::thread::panicking() {
            end_orphans(&self.root);
        }
    }
}

/// Ends what a stopped daemon on `root` left running: each process group recorded under
/// `run/instances` and `run/previews` (if the recorded process is still the one that was
/// started: same pid, same start time), and the socket keeper.
fn end_orphans(root: &Path) {
    let children = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir).map(|e| e.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    };
    let run = root.join("run");
    for records in [run.join("instances"), run.join("previews")] {
        for record in children(&records).iter().flat_map(|app| children(app)) {
            for path in children(&record) {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let number = |key: &str| -> Option<u64> {
                    let (_, after) = text.split_once(&format!("\"{key}\":"))?;
                    after.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
                };
                if let (Some(pid), Some(started)) = (number("pid"), number("start_ticks"))
                    && start_ticks(pid) == Some(started)
                {
                    let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
    }
    // The keeper's protocol: `Q`, and it quits.
    if let Ok(mut keeper) = std::os::unix::net::UnixStream::connect(run.join("keeper.sock")) {
        let _ = keeper.set_read_timeout(Some(Duration::from_secs(5)));
        if keeper.write_all(b"Q").is_ok() {
            let _ = keeper.read(&mut [0u8; 1]);
        }
    }
}

/// When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat).
fn start_ticks(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 request with a body over a plain socket (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write_request(&mut stream, method, "berth", path, headers, body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Writes a request with a JSON body and `Connection: close`.
fn write_request(
    stream: &mut impl Write,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// A minimal HTTP/1.1 GET over a plain socket (`Connection: close`, read to the end).
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<HttpResponse> {
    http_get_with(addr, host, path, &[])
}

/// [`http_get`] with extra request headers.
pub fn http_get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers in the response")?;
    let mut lines = head.lines();
    let status_line = lines.next().context("empty response")?;
    let status = status_line.split_whitespace().nth(1).context("no status")?.parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// An `sshd` on 127.0.0.1 with its own host key and config, whose `authorized_keys` holds one
/// client key authorised by `berth setup:ssh` (so it runs Berth's forced command).
#[derive(Debug)]
pub struct TestSshd {
    dir: PathBuf,
    pub port: u16,
    pub user: String,
    pub client_key: PathBuf,
    child: Child,
}

impl TestSshd {
    pub fn start(bin: &Path, berth_root: &Path, dir: &Path) -> anyhow::Result<TestSshd> {
        std::fs::create_dir_all(dir)?;
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        for key in [&host_key, &client_key] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "berth-test"])
                    .arg("-f")
                    .arg(key),
            )
            .context("ssh-keygen failed (apt-get install openssh-client)")?;
        }
        let authorized = dir.join("authorized_keys");
        let output = Command::new(bin)
            .arg("--root")
            .arg(berth_root)
            .arg("setup:ssh")
            .arg(client_key.with_extension("pub"))
            .arg("--authorized-keys")
            .arg(&authorized)
            .output()?;
        if !output.status.success() {
            bail!("setup:ssh failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())?
            .context("the current user has no passwd entry")?
            .name;
        let is_root = nix::unistd::geteuid().is_root();
        if is_root {
            // sshd refuses to start without its privilege separation directory, which only
            // the ssh service's start creates on a fresh machine.
            std::fs::create_dir_all("/run/sshd")?;
        }
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("sshd is not installed (apt-get install openssh-server)")?;

        // sshd cannot listen on port 0 and tell us the port, so try free ports until one binds.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
                     AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nPermitRootLogin {root_login}\n\
                     AllowAgentForwarding no\nAllowTcpForwarding no\nX11Forwarding no\n\
                     PrintMotd no\nLogLevel VERBOSE\n",
                    host = host_key.display(),
                    pid = dir.join("sshd.pid").display(),
                    authorized = authorized.display(),
                    root_login = if is_root { "forced-commands-only" } else { "no" },
                ),
            )?;
            let log = std::fs::File::create(dir.join("sshd.log"))?;
            let mut child = Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start sshd")?;
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Some(status) = child.try_wait()? {
                    last_error = format!(
                        "sshd exited with {status}: {}",
                        std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(TestSshd { dir: dir.to_owned(), port, user, client_key, child });
                }
                if Instant::now() > deadline {
                    stop_child(&mut child, Duration::from_secs(5));
                    bail!("sshd did not listen on port {port}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!("could not start sshd: {last_error}")
    }

    /// The ssh command line git and tests use: this key only, no host key prompts.
    pub fn ssh_command(&self) -> Vec<String> {
        let mut cmd = vec![
            "ssh".to_owned(),
            "-F".to_owned(),
            "/dev/null".to_owned(),
            "-i".to_owned(),
            self.client_key.display().to_string(),
            "-p".to_owned(),
            self.port.to_string(),
        ];
        for option in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "IdentitiesOnly=yes",
            "BatchMode=yes",
            "LogLevel=ERROR",
        ] {
            cmd.push("-o".to_owned());
            cmd.push(option.to_owned());
        }
        cmd
    }

    /// For `GIT_SSH_COMMAND`.
    pub fn git_ssh_command(&self) -> String {
        self.ssh_command().join(" ")
    }

    /// The git remote of an app, as a user writes it: `user@host:app`.
    pub fn remote(&self, app: &str) -> String {
        format!("{}@127.0.0.1:{app}", self.user)
    }

    /// Runs `ssh user@127.0.0.1 ARGS...` (the words are sent as one command line).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, "")
    }

    pub fn run_with_input(&self, args: &[&str], input: &str) -> Output {
        let cmd = self.ssh_command();
        let mut child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg(format!("{}@127.0.0.1", self.user))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ssh");
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        child.wait_with_output().expect("wait for ssh")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd.output()?;
    if !output.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A local git repository with an app in it, pushed to Berth over the test sshd.
#[derive(Debug)]
pub struct AppRepo {
    pub dir: PathBuf,
    git_ssh: String,
}

impl AppRepo {
    pub fn new(dir: &Path, sshd: &TestSshd) -> anyhow::Result<AppRepo> {
        std::fs::create_dir_all(dir)?;
        let repo = AppRepo { dir: dir.to_owned(), git_ssh: sshd.git_ssh_command() };
        repo.git(&["init", "-q", "--initial-branch=main"])?;
        Ok(repo)
    }

    /// Writes `files` (path, contents) into the work tree and commits them.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> anyhow::Result<()> {
        for (path, contents) in files {
            let path = self.dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, contents)?;
        }
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "-m", message])?;
        Ok(())
    }

    pub fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ok(&mut self.git_command(args))
    }

    fn git_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.args(["-c", "user.name=Berth Test", "-c", "user.email=test@berth.invalid"])
            .args(args)
            .current_dir(&self.dir)
            .env("GIT_SSH_COMMAND", &self.git_ssh)
            .env("GIT_TERMINAL_PROMPT", "0");
        cmd
    }

    /// `git push REMOTE main` (force, like a developer rewriting history before a deploy
    /// would); returns the output whether or not the push was accepted.
    pub fn push(&self, remote: &str) -> Output {
        self.push_to(remote, "main")
    }

    /// `git push --force REMOTE REFSPEC` (e.g. `main:master`).
    pub fn push_to(&self, remote: &str, refspec: &str) -> Output {
        self.git_command(&["push", "--force", remote, refspec]).output().expect("run git push")
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).map(|s| s.trim().to_owned()).unwrap_or_default()
    }
}

/// Everything `git push` and ssh print, stdout then stderr, for assertions and messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (200, "hi"));
        assert_eq!(plain.header("content-length"), Some("2"));
        let chunked =
            parse_response(b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (502, "abcde"));
    }
}
