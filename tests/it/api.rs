//! The REST API on TCP: bearer tokens, pull deploys (procserver's `POST /apps` from a git
//! URL), redeploys, logs by kind.

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
