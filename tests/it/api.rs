//! The REST API on TCP: bearer tokens, pull deploys (procserver's `POST /apps` from a git
//! URL), redeploys, logs by kind.

use std::path::{Path, PathBuf};

use berth_testkit::{http_request, output_text};

use crate::World;

#[test]
fn tokens_guard_the_api_and_pull_deploys_work() {
    let world = World::start("api");
    let api = world.daemon.api_addr.expect("the test daemon serves the API on TCP");

    let out = world.ssh_ok(&["tokens:create", "ci"]);
    let token = out.lines().next().unwrap().to_owned();
    assert!(token.starts_with("berth_"), "{out}");
    let auth = format!("Bearer {token}");
    let bearer = [("Authorization", auth.as_str())];

    // Nothing without a valid token: 401 and nothing else.
    for headers in [&[][..], &[("Authorization", "Bearer berth_wrong")][..]] {
        let answer = http_request(api, "GET", "/apps", headers, "").unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (401, ""));
    }
    assert_eq!(http_request(api, "GET", "/apps", &bearer, "").unwrap().body, "[]");

    // A source repository the daemon pulls from.
    let source = world.app_repo("source", "v1", "web: python3 app.py\n", "");
    let body = serde_json::json!({
        "name": "pulled",
        "repo": { "url": format!("file://{}", source.dir.display()), "branch": "main" },
        "config": { "GREETING": "Pulled" },
        "scale": { "web": 2 },
        "domains": ["pulled.example.test"],
    });
    let answer = http_request(api, "POST", "/apps", &bearer, &body.to_string()).unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert!(
        answer.body.contains("Deploying pulled v1") && answer.body.contains("\"ok\":true"),
        "{}",
        answer.body
    );
    assert_eq!(world.get("pulled", "/").body, "Pulled v1");
    assert_eq!(world.daemon.get("pulled.example.test", "/").unwrap().body, "Pulled v1");
    assert!(world.ssh_ok(&["ps:scale", "pulled"]).contains("web=2"));
    let releases = world.ssh_ok(&["releases", "pulled"]);
    assert!(releases.contains("api:ci"), "{releases}");

    // A new commit upstream, then redeploy pulls it.
    source.commit(&[("app.py", &crate::app_source("v2"))], "v2").unwrap();
    let answer = http_request(api, "POST", "/apps/pulled/redeploy", &bearer, "").unwrap();
    assert!(answer.body.contains("\"ok\":true"), "{}", answer.body);
    assert_eq!(world.get("pulled", "/").body, "Pulled v2");
    let build = http_request(api, "GET", "/apps/pulled/logs/build", &bearer, "").unwrap();
    assert!(build.body.contains("Deploying pulled v2"), "{}", build.body);

    // Credentials in a repo URL never show in an answer or a log.
    let secret = serde_json::json!({
        "name": "secretive",
        "repo": { "url": "https://deploy:hunter2@127.0.0.1:9/nothing.git", "branch": "main" },
    });
    let answer = http_request(api, "POST", "/apps", &bearer, &secret.to_string()).unwrap();
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(answer.body.contains("https://***@127.0.0.1:9/nothing.git"), "{}", answer.body);
    assert!(!answer.body.contains("hunter2") && !world.daemon.log().contains("hunter2"));

    // Malformed JSON, unknown fields, wrong types: 4xx with a message, never 500.
    for (body, status) in
        [("{not json", 400), (r#"{"name": "x", "colour": "blue"}"#, 422), (r#"{"name": 7}"#, 422)]
    {
        let answer = http_request(api, "POST", "/apps", &bearer, body).unwrap();
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("GET /openapi.json describes the body"),
            "{}",
            answer.body
        );
    }
    let answer = http_request(api, "GET", "/apps/pulled/logs?lines=many", &bearer, "").unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);

    // Bad input gets the same messages as the CLI.
    let answer = http_request(api, "POST", "/apps", &bearer, r#"{"name": "Bad Name"}"#).unwrap();
    assert_eq!(answer.status, 400);
    assert!(answer.body.contains("invalid app name"), "{}", answer.body);

    // The OpenAPI document is made from the same table as the routes.
    let doc: serde_json::Value =
        serde_json::from_str(&http_request(api, "GET", "/openapi.json", &bearer, "").unwrap().body)
            .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/apps", "post"),
        ("/apps/{app}/rollback", "post"),
        ("/apps/{app}/logs/{kind}", "get"),
        ("/tokens/{name}", "delete"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{path} {method} missing");
    }
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(doc["components"]["schemas"][name].is_object(), "dangling $ref {name}");
    }

    world.ssh_ok(&["tokens:revoke", "ci"]);
    assert_eq!(http_request(api, "GET", "/apps", &bearer, "").unwrap().status, 401);
    let listed = world.ssh(&["tokens"]);
    assert!(!output_text(&listed).contains("ci\n"));
}

/// The operations of an OpenAPI document: (method, path template), each with whether it
/// takes a body.
fn operations(doc: &serde_json::Value) -> Vec<(String, String, bool)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("a path item is an object");
            methods.iter().map(move |(method, operation)| {
                (method.to_uppercase(), path.clone(), operation["requestBody"].is_object())
            })
        })
        .collect()
}

#[test]
fn every_endpoint_needs_a_token_and_answers_with_one() {
    let world = World::start("walk");
    let api = world.daemon.api_addr.expect("the test daemon serves the API on TCP");
    let repo = world.app_repo("walker", "v1", "web: python3 app.py\n", "");
    world.push_ok(&repo, "walker");
    let out = world.ssh_ok(&["tokens:create", "walk"]);
    let auth = format!("Bearer {}", out.lines().next().unwrap());
    let bearer = [("Authorization", auth.as_str())];

    // The endpoints are the document's operations: one added to the table is walked too.
    let answer = http_request(api, "GET", "/openapi.json", &bearer, "").unwrap();
    let doc: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    let operations = operations(&doc);
    for expected in ["POST /apps/{app}/rename", "POST /apps/{app}/clone", "DELETE /tokens/{name}"] {
        assert!(
            operations.iter().any(|(method, path, _)| format!("{method} {path}") == expected),
            "{expected} is not in the document"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Path parameters name things that exist where they can: the app, its release, its log.
    let fill = |path: &str| {
        let name = if path.starts_with("/tokens/") { "no-such-token" } else { "www.nosuch.test" };
        path.replace("{app}", "walker")
            .replace("{release}", "1")
            .replace("{kind}", "build")
            .replace("{port}", &port.to_string())
            .replace("{name}", name)
    };
    let mut requests: Vec<(String, String, &str)> = operations
        .iter()
        .map(|(method, path, has_body)| {
            (method.clone(), fill(path), if *has_body { "{}" } else { "" })
        })
        .collect();
    requests.push(("GET".to_owned(), "/openapi.json".to_owned(), ""));
    requests.push(("GET".to_owned(), "/no/such/endpoint".to_owned(), ""));

    // Without a valid token: 401 and nothing else, for every endpoint, the document and
    // unknown paths included.
    let wrong = [
        &[][..],
        &[("Authorization", "Bearer berth_wrong")][..],
        &[("Authorization", "Basic d2FsazpzZWNyZXQ=")][..],
    ];
    for headers in wrong {
        for (method, path, body) in &requests {
            let answer = http_request(api, method, path, headers, body).unwrap();
            assert_eq!(
                (answer.status, answer.body.as_str()),
                (401, ""),
                "{method} {path} {headers:?}"
            );
            assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        }
    }

    // With the token, every endpoint answers its own way: never 401, never a server error.
    for (method, path, body) in &requests[..operations.len()] {
        let answer = http_request(api, method, path, &bearer, body).unwrap();
        assert!(
            answer.status != 401 && answer.status < 500,
            "{method} {path}: {} {}",
            answer.status,
            answer.body
        );
    }

    // Renaming or cloning onto a taken or invalid name: 409 or 400, with the message.
    let answer = http_request(api, "DELETE", "/apps/walker/lock", &bearer, "").unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = http_request(api, "POST", "/apps", &bearer, r#"{"name": "other"}"#).unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    for action in ["rename", "clone"] {
        let path = format!("/apps/walker/{action}");
        let answer = http_request(api, "POST", &path, &bearer, r#"{"name": "other"}"#).unwrap();
        assert_eq!(answer.status, 409, "{action}: {}", answer.body);
        let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(message.contains("an app named other already exists"), "{action}: {message}");
        let answer = http_request(api, "POST", &path, &bearer, r#"{"name": "No Good"}"#).unwrap();
        assert_eq!(answer.status, 400, "{action}: {}", answer.body);
        assert!(answer.body.contains("invalid app name"), "{action}: {}", answer.body);
    }

    // A revoked token opens nothing any more.
    world.ssh_ok(&["tokens:revoke", "walk"]);
    for (method, path, body) in &requests {
        let answer = http_request(api, method, path, &bearer, body).unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (401, ""), "{method} {path} revoked");
    }
    for app in ["walker", "other"] {
        world.ssh_ok(&["destroy", app, "--force"]);
    }
}

/// schemathesis, installed by `scripts/test` into target/test-tools.
fn schemathesis() -> PathBuf {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-tools/schemathesis/bin/schemathesis");
    assert!(
        tool.exists(),
        "schemathesis is not at {}: run ./scripts/test, which installs it there",
        tool.display()
    );
    tool
}

/// What schemathesis may try, beyond what the document says (schemathesis.toml): path
/// parameters name the app the test made (or one the fuzzer may make, create, rename or
/// clone to: names in bodies are often those) and its release, so requests get past "no such
/// app"; logs are never followed (a followed log never ends, so the request could only time
/// out).
const SCHEMATHESIS_CONFIG: &str = r#"
[dictionaries.apps]
values = ["target", "fuzzed-1", "fuzzed-2"]
[dictionaries.names]
values = ["fuzzed-1", "fuzzed-2"]
[dictionaries.releases]
values = ["1", "v1"]
[dictionaries.no]
values = ["0"]
[parameters]
"path.app" = { dictionary = "apps", probability = 0.8 }
"path.release" = { dictionary = "releases", probability = 0.5 }
"query.follow" = { dictionary = "no", probability = 1.0 }
"body.name" = { dictionary = "names", probability = 0.5 }
"#;

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let tool = schemathesis();
    // Whatever repository URL the fuzzer makes up, the daemon's git reaches nothing but
    // loopback (ssh and git:// fail at once, http goes to a closed local port), and no
    // certificate is asked of a CA for the names it adds.
    let offline = [
        ("GIT_SSH_COMMAND", "false"),
        ("GIT_PROXY_COMMAND", "false"),
        ("http_proxy", "http://127.0.0.1:9"),
        ("https_proxy", "http://127.0.0.1:9"),
        ("HTTP_PROXY", "http://127.0.0.1:9"),
        ("HTTPS_PROXY", "http://127.0.0.1:9"),
        ("ALL_PROXY", "http://127.0.0.1:9"),
        ("no_proxy", ""),
        ("NO_PROXY", ""),
    ];
    let env: Vec<(String, String)> =
        offline.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let world = World::start_with_args("fuzz", &env, &["--no-acme".to_string()]);
    let api = world.daemon.api_addr.expect("the test daemon serves the API on TCP");
    let repo = world.app_repo("target", "v1", "web: python3 app.py\n", "");
    world.push_ok(&repo, "target");
    let token =
        world.ssh_ok(&["tokens:create", "schemathesis-run"]).lines().next().unwrap().to_owned();
    let config = world.tmp.path().join("schemathesis.toml");
    std::fs::write(&config, SCHEMATHESIS_CONFIG).unwrap();

    let auth = format!("Bearer {token}");
    let bearer = [("Authorization", auth.as_str())];
    let answer = http_request(api, "GET", "/openapi.json", &bearer, "").unwrap();
    let doc: serde_json::Value = serde_json::from_str(&answer.body).unwrap();

    let output = std::process::Command::new(&tool)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://{api}/openapi.json"))
        .args(["--header", &format!("Authorization: {auth}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        // Revoking tokens is walked by the test above; here it would revoke the fuzzer's own
        // (the stateful phase takes the names GET /tokens lists), and all after it is 401.
        .args(["--exclude-name", "DELETE /tokens/{name}"])
        .args(["--max-examples", "10", "--max-time", "30", "--request-timeout", "20"])
        .arg("--no-color")
        // Its cache (.hypothesis) goes into the test's directory.
        .current_dir(world.tmp.path())
        .output()
        .expect("run schemathesis");
    let text = output_text(&output);
    // Apps made by the fuzzer are destroyed: their Unix users go with them.
    let apps: Vec<serde_json::Value> =
        serde_json::from_str(&http_request(api, "GET", "/apps", &bearer, "").unwrap().body)
            .unwrap();
    let mut left = Vec::new();
    for app in apps {
        let name = app["name"].as_str().unwrap_or_default();
        let path = format!("/apps/{name}?confirm={name}");
        match http_request(api, "DELETE", &path, &bearer, "") {
            Ok(answer) if answer.status == 200 => {}
            other => left.push(format!("{name}: {other:?}")),
        }
    }

    assert!(output.status.success(), "schemathesis found problems:\n{text}");
    assert!(left.is_empty(), "apps the fuzzer made could not be destroyed: {left:?}");
    let operations = operations(&doc).len();
    assert!(
        text.contains(&format!("Tested: {}", operations - 1)),
        "schemathesis did not test every operation but the excluded one:\n{text}"
    );
}
