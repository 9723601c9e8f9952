//! Builds for each runtime the test machine can build with its registries: push, then request
//! through the router. Runtimes whose registries are out of reach (Maven Central, Clojars,
//! rubygems) are covered by the build crate's plan tests.

use std::path::{Path, PathBuf};

use berth_testkit::http_get_with;

use crate::World;

/// uv, installed by `scripts/test` where the tests can put it on a daemon's PATH or leave it off.
fn uv_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/bin");
    assert!(
        dir.join("uv").exists(),
        "uv is not in {}: run ./scripts/test, which installs it there",
        dir.display()
    );
    dir
}

/// The PATH of this process without any directory that holds `uv`, so builds use pip.
fn path_without_uv() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').filter(|d| !Path::new(d).join("uv").exists()).collect::<Vec<_>>().join(":")
}

fn env_path(path: String) -> Vec<(String, String)> {
    vec![("PATH".to_owned(), path)]
}

/// A Python web server whose answer is `body` (a Python expression), after `imports`.
fn python_app(imports: &str, body: &str) -> String {
    format!(
        "import os\n{imports}\nfrom http.server import BaseHTTPRequestHandler, ThreadingHTTPServer\n\
         class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        data = ({body}).encode()\n\
         \x20       self.send_response(200)\n        self.send_header('Content-Length', str(len(data)))\n\
         \x20       self.end_headers()\n        self.wfile.write(data)\n\
         ThreadingHTTPServer((os.environ['BIND_ADDRESS'], int(os.environ['PORT'])), H).serve_forever()\n"
    )
}

fn six_app(version: &str) -> String {
    python_app(
        "import six",
        &format!("'six %s {version} %s' % (six.__version__, os.environ['VIRTUAL_ENV'])"),
    )
}

/// Python with pip (and with uv): the venv is built, reused on a code-only push, rebuilt when
/// the requirements change, and a bad requirement leaves the previous release serving.
fn python_requirements(world: &World, app: &str, manager: &str) {
    let repo = world.repo_with(
        app,
        &[
            ("Procfile", "web: python app.py\n"),
            ("requirements.txt", "six==1.16.0\n"),
            ("app.py", &six_app("v1")),
        ],
    );
    let out = world.push_ok(&repo, app);
    assert!(
        out.contains(&format!("-----> Python app (requirements.txt, {manager}, python3)")),
        "{out}"
    );
    assert!(out.contains("-----> Installing dependencies (requirements.txt)"), "{out}");
    let page = world.get(app, "/");
    assert!(page.body.starts_with("six 1.16.0 v1 "), "{}", page.body);
    let venv = page.body.rsplit(' ').next().unwrap().to_owned();
    assert!(venv.contains(&format!("/cache/{app}/venv/")), "{venv}");

    // Code only: the venv is reused, nothing is installed.
    repo.commit(&[("app.py", &six_app("v2"))], "v2").unwrap();
    let out = world.push_ok(&repo, app);
    assert!(
        out.contains(
            "-----> Dependencies unchanged since an earlier build (requirements.txt); reusing them"
        ),
        "{out}"
    );
    assert!(!out.contains("Installing dependencies"), "{out}");
    assert_eq!(world.get(app, "/").body, format!("six 1.16.0 v2 {venv}"));

    // A requirement that cannot be installed fails the push; v2 keeps serving.
    repo.commit(&[("requirements.txt", "six==1.16.0\nthis is not a requirement!!\n")], "bad")
        .unwrap();
    let out = world.push_refused(&repo, app);
    assert!(out.contains("installing dependencies failed"), "{out}");
    assert!(out.contains("Deploy failed; v2 keeps serving"), "{out}");
    assert_eq!(world.get(app, "/").body, format!("six 1.16.0 v2 {venv}"));
}

#[test]
fn python_with_pip() {
    let world = World::start_with_env("pip", &env_path(path_without_uv()));
    python_requirements(&world, "py-pip", "pip");
}

#[test]
fn python_with_uv() {
    let path = format!("{}:{}", uv_dir().display(), path_without_uv());
    let world = World::start_with_env("uv", &env_path(path));
    python_requirements(&world, "py-uv", "uv");
}

#[test]
fn wsgi_runs_under_gunicorn_in_the_venv() {
    let world = World::start_with_env("wsgi", &env_path(path_without_uv()));
    let app = "def application(environ, start_response):\n    \
               start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
               return [b'wsgi says hi to ' + environ.get('HTTP_X_FORWARDED_HOST', '').encode()]\n";
    let repo = world.repo_with(
        "wsgi",
        &[
            ("Procfile", "wsgi: app:application\n"),
            ("requirements.txt", "# nothing but the WSGI server, which Berth adds\n"),
            ("ENV", "UWSGI_PROCESSES=2\n"),
            ("app.py", app),
        ],
    );
    let out = world.push_ok(&repo, "wsgi");
    assert!(out.contains("install --disable-pip-version-check gunicorn"), "{out}");
    assert_eq!(world.get("wsgi", "/").body, "wsgi says hi to wsgi.berth.test");
    let logs = world.ssh_ok(&["logs", "wsgi", "wsgi"]);
    assert_eq!(
        logs.matches("Booting worker").count(),
        2,
        "UWSGI_PROCESSES=2 means two workers:\n{logs}"
    );

    // A rename moves the virtualenv: gunicorn's `#!` line and VIRTUAL_ENV follow it.
    world.ssh_ok(&["apps:rename", "wsgi", "wsgi-moved"]);
    assert_eq!(world.get("wsgi-moved", "/").body, "wsgi says hi to wsgi-moved.berth.test");
    let env = world.ssh_ok(&["config:live", "wsgi-moved", "wsgi"]);
    assert!(env.contains("/cache/wsgi-moved/venv/"), "{env}");
    world.ssh_ok(&["destroy", "wsgi-moved", "--force"]);
}

fn node_app(version: &str) -> String {
    format!(
        "const http = require('http');\nconst isNumber = require('is-number');\n\
         http.createServer((req, res) => res.end(`node {version} ${{isNumber(5)}}`))\n  \
         .listen(process.env.PORT, process.env.BIND_ADDRESS);\n"
    )
}

#[test]
fn node_with_npm_keeps_node_modules_in_the_cache() {
    let world = World::start("node");
    let package =
        r#"{"name": "hello", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}"#;
    let repo = world.repo_with(
        "node",
        &[
            ("Procfile", "web: node server.js\n"),
            ("package.json", package),
            ("server.js", &node_app("v1")),
        ],
    );
    let out = world.push_ok(&repo, "node");
    assert!(out.contains("-----> Node.js app (package.json, npm install)"), "{out}");
    assert!(out.contains("-----> Installing dependencies (package.json)"), "{out}");
    assert_eq!(world.get("node", "/").body, "node v1 true");

    repo.commit(&[("server.js", &node_app("v2"))], "v2").unwrap();
    let out = world.push_ok(&repo, "node");
    assert!(out.contains("Dependencies unchanged since an earlier build (package.json)"), "{out}");
    assert_eq!(world.get("node", "/").body, "node v2 true");

    // NODE_VERSION that the server cannot satisfy is refused before anything is installed.
    repo.commit(&[("ENV", "NODE_VERSION=4\n")], "old node").unwrap();
    let out = world.push_refused(&repo, "node");
    assert!(out.contains("NODE_VERSION asks for node 4, but this server has node v"), "{out}");
    assert_eq!(world.get("node", "/").body, "node v2 true");
}

#[test]
fn go_with_the_standard_library() {
    let world = World::start("go");
    let main = "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n\t\"os\"\n)\n\n\
                func main() {\n\thttp.HandleFunc(\"/\", func(w http.ResponseWriter, r *http.Request) {\n\
                \t\tfmt.Fprint(w, \"go says hi\")\n\t})\n\
                \thttp.ListenAndServe(os.Getenv(\"BIND_ADDRESS\")+\":\"+os.Getenv(\"PORT\"), nil)\n}\n";
    let repo = world.repo_with(
        "goapp",
        &[
            ("Procfile", "web: ./bin/hello\n"),
            ("go.mod", "module hello\n\ngo 1.19\n"),
            ("main.go", main),
        ],
    );
    let out = world.push_ok(&repo, "goapp");
    assert!(out.contains("-----> Go app (go.mod, go build)"), "{out}");
    assert_eq!(world.get("goapp", "/").body, "go says hi");
}

#[test]
fn rust_with_cargo() {
    let world = World::start("rust");
    let main = r#"use std::io::{BufRead, BufReader, Write};
fn main() {
    let addr = format!("{}:{}", std::env::var("BIND_ADDRESS").unwrap(), std::env::var("PORT").unwrap());
    let listener = std::net::TcpListener::bind(addr).unwrap();
    for stream in listener.incoming() {
        // No let-else: Debian's cargo (rustc 1.63) builds this too.
        let mut stream = match stream { Ok(stream) => stream, Err(_) => continue };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 2 { line.clear(); }
        let body = "rust says hi";
        // A client that hung up (Berth's readiness check connects and closes) is no error.
        let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}", body.len(), body);
    }
}
"#;
    let cargo =
        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n";
    let repo = world.repo_with(
        "rustapp",
        &[
            ("Procfile", "web: ./target/release/hello\n"),
            ("Cargo.toml", cargo),
            ("src/main.rs", main),
        ],
    );
    let out = world.push_ok(&repo, "rustapp");
    assert!(out.contains("-----> Rust app (Cargo.toml, cargo build --release)"), "{out}");
    assert_eq!(world.get("rustapp", "/").body, "rust says hi");
    assert!(world.root().join("cache/rustapp/cargo-target/release/hello").exists());
}

#[test]
fn ruby_with_a_gemfile_that_needs_no_downloads() {
    let world = World::start("ruby");
    let app = "require 'socket'\nserver = TCPServer.new(ENV['BIND_ADDRESS'], ENV['PORT'].to_i)\n\
               loop do\n  client = server.accept\n  while (line = client.gets) && line != \"\\r\\n\"; end\n  \
               body = \"ruby says hi from #{ENV['BUNDLE_PATH'].split('/')[-2]}\"\n  \
               client.write \"HTTP/1.1 200 OK\\r\\nContent-Length: #{body.bytesize}\\r\\nConnection: close\\r\\n\\r\\n#{body}\"\n  \
               client.close\nend\n";
    let repo = world.repo_with(
        "rubyapp",
        &[("Procfile", "web: ruby app.rb\n"), ("Gemfile", "# no gems\n"), ("app.rb", app)],
    );
    let out = world.push_ok(&repo, "rubyapp");
    assert!(out.contains("-----> Ruby app (Gemfile, bundle install)"), "{out}");
    assert_eq!(world.get("rubyapp", "/").body, "ruby says hi from bundle");
}

#[test]
fn static_sites_and_static_paths_are_served_by_the_router() {
    let world = World::start("static");
    let repo = world.repo("static-site");
    // A precompressed copy made the way a front-end build makes one, committed next to it.
    let script_path = repo.dir.join("public/js/app.js");
    std::fs::create_dir_all(script_path.parent().unwrap()).unwrap();
    std::fs::write(&script_path, "console.log('a script long enough to be worth compressing');\n")
        .unwrap();
    let gzip = std::process::Command::new("gzip").args(["-k", "-n"]).arg(&script_path).status();
    assert!(gzip.unwrap().success(), "gzip public/js/app.js");
    let gzipped = std::fs::read(repo.dir.join("public/js/app.js.gz")).unwrap();
    // `git archive` leaves any .git out of a release, so the release command makes one, as a
    // build that clones something into the served directory would.
    let procfile = "static: public\n\
                    release: mkdir -p public/.git && echo 'ref: refs/heads/main' > public/.git/HEAD\n";
    repo.commit(
        &[
            ("Procfile", procfile),
            ("ENV", "NGINX_CATCH_ALL=public/index.html\n"),
            ("public/index.html", "<h1>static site</h1>\n"),
            ("public/css/site.css", "body { color: red }\n"),
        ],
        "first",
    )
    .unwrap();
    let out = world.push_ok(&repo, "static-site");
    assert!(out.contains("-----> Generic app: the Procfile runs as it is"), "{out}");
    let index = world.get("static-site", "/");
    assert_eq!((index.status, index.body.as_str()), (200, "<h1>static site</h1>\n"));
    let css = world.get("static-site", "/css/site.css");
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(css.header("accept-ranges"), Some("bytes"));
    assert_eq!(css.body, "body { color: red }\n");
    // Client-side routing: unknown paths get the catch-all page.
    assert_eq!(world.get("static-site", "/account/42").body, "<h1>static site</h1>\n");
    assert_eq!(world.get("static-site", "/../ENV").status / 100, 4);

    // A byte range, as a resumed download asks for it.
    let host = world.daemon.app_host("static-site");
    let get_with = |path: &str, headers: &[(&str, &str)]| {
        http_get_with(world.daemon.http_addr, &host, path, headers).expect("GET through the router")
    };
    let part = get_with("/css/site.css", &[("Range", "bytes=7-11")]);
    assert_eq!(part.status, 206, "{:?}", part.headers);
    assert_eq!(part.header("content-range"), Some("bytes 7-11/20"));
    assert_eq!(part.body, "color");
    assert_eq!(get_with("/css/site.css", &[("Range", "bytes=20-")]).status, 416);

    // The .gz goes to clients that take gzip, typed as the script.
    let zipped = get_with("/js/app.js", &[("Accept-Encoding", "gzip, deflate")]);
    assert_eq!(zipped.status, 200, "{:?}", zipped.headers);
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(zipped.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(zipped.header("vary"), Some("Accept-Encoding"));
    assert_eq!(zipped.header("content-length"), Some(gzipped.len().to_string().as_str()));
    assert_eq!(zipped.body, String::from_utf8_lossy(&gzipped));
    let plain = get_with("/js/app.js", &[("Accept-Encoding", "gzip;q=0")]);
    assert_eq!(plain.body, "console.log('a script long enough to be worth compressing');\n");
    assert_eq!(plain.header("content-encoding"), None);

    // .git is never served, however it is spelled, unless the app allows it.
    for path in ["/.git/HEAD", "/%2egit/HEAD"] {
        let refused = world.get("static-site", path);
        assert_eq!(refused.status, 404, "{path}");
        assert!(!refused.body.contains("refs/heads"), "{path}: {}", refused.body);
    }
    world.ssh_ok(&["config:set", "static-site", "NGINX_ALLOW_GIT_FOLDERS=true"]);
    assert_eq!(world.get("static-site", "/.git/HEAD").body, "ref: refs/heads/main\n");
    assert_eq!(world.get("static-site", "/../ENV").status / 100, 4);

    // A web app with NGINX_STATIC_PATHS: the prefix from disk, the rest from the app.
    let repo = world.repo_with(
        "mixed",
        &[
            ("Procfile", "web: python3 app.py\n"),
            ("ENV", "NGINX_STATIC_PATHS=/assets:static\n"),
            ("static/logo.txt", "a logo\n"),
            ("app.py", &python_app("", "'from the app'")),
        ],
    );
    world.push_ok(&repo, "mixed");
    assert_eq!(world.get("mixed", "/assets/logo.txt").body, "a logo\n");
    assert_eq!(world.get("mixed", "/other").body, "from the app");
}

#[test]
fn preflight_and_release_run_once_per_deploy_and_fail_it() {
    let world = World::start("release");
    let procfile = "preflight: echo preflight for $BERTH_APP\n\
                    release: echo \"release $BERTH_RELEASE\" >> \"$DATA_ROOT/releases.txt\"\n\
                    web: python3 app.py\n";
    let repo =
        world.repo_with("rel", &[("Procfile", procfile), ("app.py", &python_app("", "'v1'"))]);
    let out = world.push_ok(&repo, "rel");
    assert!(
        out.contains("-----> Running preflight command: echo preflight for $BERTH_APP"),
        "{out}"
    );
    assert!(out.contains("preflight for rel"), "{out}");
    assert!(out.contains("-----> Running release command"), "{out}");
    let releases = std::fs::read_to_string(world.root().join("data/rel/releases.txt")).unwrap();
    assert_eq!(releases, "release 1\n");

    let failing = procfile.replace("release: echo", "release: exit 3; echo");
    repo.commit(&[("Procfile", &failing), ("app.py", &python_app("", "'v2'"))], "bad release")
        .unwrap();
    let out = world.push_refused(&repo, "rel");
    assert!(out.contains("the release command failed: `exit 3; echo"), "{out}");
    assert_eq!(world.get("rel", "/").body, "v1");

    let failing = procfile.replace("preflight: echo", "preflight: false && echo");
    repo.commit(&[("Procfile", &failing)], "bad preflight").unwrap();
    let out = world.push_refused(&repo, "rel");
    assert!(out.contains("the preflight command failed"), "{out}");
    assert_eq!(world.get("rel", "/").body, "v1");
    let releases = std::fs::read_to_string(world.root().join("data/rel/releases.txt")).unwrap();
    assert_eq!(releases, "release 1\n", "a failed deploy ran no other release command");
}

#[test]
fn a_missing_build_tool_is_named_with_its_package() {
    let world = World::start("tool");
    let repo = world.repo_with(
        "clj",
        &[
            ("Procfile", "web: java -jar target/app.jar\n"),
            ("project.clj", "(defproject hello \"0.1.0\")\n"),
        ],
    );
    let out = world.push_refused(&repo, "clj");
    assert!(
        out.contains("needs `lein`, which this server does not have; install it with `apt-get install leiningen`")
            || out.contains("needs `java`"),
        "{out}"
    );
}
