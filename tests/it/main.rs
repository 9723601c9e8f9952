//! Integration tests: a real sshd on loopback, a real daemon on its own root, pushes with real
//! git, app processes, and HTTP requests through Berth's router.

mod api;
mod cli;
mod client;
mod push;
mod releases;
mod rename;
mod routing;
mod runtimes;
mod ssh;
mod supervise;
mod tidy;
mod tls;
mod websocket;

use std::path::Path;
use std::process::Output;

use berth_testkit::{AppRepo, HttpResponse, TempDir, TestDaemon, TestSshd, output_text};

/// A web app for tests: answers `/` with its greeting and version, `/env/NAME` with a
/// variable of its environment, `/headers` with the request headers, and exits on `/crash`.
pub const TEST_APP: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "__VERSION__"

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/crash":
            os._exit(3)
        if self.path.startswith("/env/"):
            body = os.environ.get(self.path[5:], "<unset>")
        elif self.path == "/headers":
            body = "".join("%s: %s\n" % (k.lower(), v) for k, v in self.headers.items())
        else:
            body = "%s %s" % (os.environ.get("GREETING", "?"), VERSION)
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        print("request %s" % (format % args), flush=True)

print("web listening on", os.environ["PORT"], flush=True)
ThreadingHTTPServer((os.environ["BIND_ADDRESS"], int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// The test app's source at a given version.
pub fn app_source(version: &str) -> String {
    TEST_APP.replace("__VERSION__", version)
}

/// One test's world: a daemon, an sshd whose key runs Berth, and a temp directory.
/// Fields drop in order: the sshd and the daemon stop before the directory goes.
pub struct World {
    pub sshd: TestSshd,
    pub daemon: TestDaemon,
    pub tmp: TempDir,
}

impl World {
    pub fn start(label: &str) -> World {
        World::start_with_env(label, &[])
    }

    /// A world whose daemon (and so every build and app) gets extra environment.
    pub fn start_with_env(label: &str, env: &[(String, String)]) -> World {
        World::start_with_args(label, env, &[])
    }

    /// A world whose daemon gets extra environment and `berth daemon` arguments (see
    /// [`TestDaemon::start_with_args`]).
    pub fn start_with_args(label: &str, env: &[(String, String)], args: &[String]) -> World {
        let bin = Path::new(env!("CARGO_BIN_EXE_berth"));
        let tmp = TempDir::new(label);
        let root = tmp.path().join("root");
        let daemon =
            TestDaemon::start_with_args(bin, &root, "berth.test", env, args).expect("start daemon");
        let sshd = TestSshd::start(bin, &root, &tmp.path().join("sshd")).expect("start sshd");
        World { sshd, daemon, tmp }
    }

    pub fn root(&self) -> &Path {
        &self.daemon.root
    }

    /// A new local repository for an app.
    pub fn repo(&self, name: &str) -> AppRepo {
        AppRepo::new(&self.tmp.path().join("work").join(name), &self.sshd).expect("create repo")
    }

    /// Commits the test app at `version` with `procfile` and `env` and returns the repo.
    pub fn app_repo(&self, name: &str, version: &str, procfile: &str, env: &str) -> AppRepo {
        let repo = self.repo(name);
        let source = app_source(version);
        let mut files = vec![("app.py", source.as_str()), ("Procfile", procfile)];
        if !env.is_empty() {
            files.push(("ENV", env));
        }
        repo.commit(&files, version).expect("commit");
        repo
    }

    /// Commits `files` into a new repo for `name`.
    pub fn repo_with(&self, name: &str, files: &[(&str, &str)]) -> AppRepo {
        let repo = self.repo(name);
        repo.commit(files, "first").expect("commit");
        repo
    }

    /// Pushes and asserts that the push was refused; returns everything it printed.
    pub fn push_refused(&self, repo: &AppRepo, app: &str) -> String {
        let output = repo.push(&self.sshd.remote(app));
        let text = output_text(&output);
        assert!(!output.status.success(), "push was accepted:\n{text}");
        assert!(text.contains("[remote rejected]"), "{text}");
        text
    }

    /// Pushes and asserts that the push was accepted; returns everything it printed.
    pub fn push_ok(&self, repo: &AppRepo, app: &str) -> String {
        let output = repo.push(&self.sshd.remote(app));
        let text = output_text(&output);
        assert!(
            output.status.success(),
            "push failed:\n{text}\n--- daemon log:\n{}",
            self.daemon.log()
        );
        text
    }

    pub fn get(&self, app: &str, path: &str) -> HttpResponse {
        self.daemon.get(&self.daemon.app_host(app), path).expect("GET through the router")
    }

    pub fn ssh(&self, args: &[&str]) -> Output {
        self.sshd.run(args)
    }

    /// Runs a Berth command over ssh and asserts it succeeded; returns its stdout.
    pub fn ssh_ok(&self, args: &[&str]) -> String {
        let output = self.sshd.run(args);
        assert!(output.status.success(), "ssh {args:?} failed:\n{}", output_text(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}
