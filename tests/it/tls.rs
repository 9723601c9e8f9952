//! Certificates through the whole daemon from a real ACME server (pebble, validating the
//! router's answers on loopback) by HTTP-01 and TLS-ALPN-01, an app's own CA
//! (ACME_ROOT_CA), and the TCP API over HTTPS for its host (`--api-host`).

use std::net::SocketAddr;

use berth_testkit::pebble::Pebble;
use berth_testkit::tls::{
    Handshake, Trust, certificates, handshake, https_request, issuer_of, names_of,
};
use berth_testkit::{DEADLINE, TempDir, free_port, http_request, output_text, poll};

use crate::World;

/// Waits until `addr` serves `name` a certificate that verifies up to `root` (pebble's), and
/// returns the handshake.
fn wait_for_issued(addr: SocketAddr, name: &str, root: &Trust) -> Handshake {
    let what = format!("a certificate from pebble for {name} at {addr}");
    poll(&what, DEADLINE, || handshake(addr, name, root.clone(), &[b"http/1.1"]).ok())
}

fn sorted_names(served: &Handshake) -> Vec<String> {
    let mut names = names_of(&served.chain[0]).0;
    names.sort();
    names
}

fn args(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs.iter().flat_map(|(flag, value)| [flag.to_string(), value.to_string()]).collect()
}

#[test]
fn an_app_gets_certificates_by_http_01_from_the_ca_its_acme_root_ca_names() {
    let (http_port, https_port) = (free_port(), free_port());
    let pebble_dir = TempDir::new("pebble-http01");
    let pebble = Pebble::start(pebble_dir.path(), http_port, free_port());
    // The daemon's own CA is unusable (nothing listens there): only an app's ACME_ROOT_CA
    // can get it a certificate.
    let unusable = format!("https://127.0.0.1:{}/dir", free_port());
    let world = World::start_with_args(
        "acme-http01",
        &[],
        &args(&[
            ("--http", &format!("127.0.0.1:{http_port}")),
            ("--https", &format!("127.0.0.1:{https_port}")),
            ("--acme-directory", &unusable),
            ("--acme-ca-file", &pebble.https_ca.display().to_string()),
            ("--acme-challenge", "http-01"),
        ]),
    );
    let https = world.daemon.https_addr.expect("the daemon serves HTTPS");
    let root = Trust::Roots(certificates(&pebble.issuing_root()));

    let env = format!("ACME_ROOT_CA={}\n", pebble.directory_url);
    let repo = world.app_repo("issued", "i1", "web: python3 app.py\n", &env);
    world.push_ok(&repo, "issued");
    world.ssh_ok(&["domains:add", "issued", "www.issued.test"]);

    // Pebble validated each name by asking the router for the token on the HTTP port.
    let served = wait_for_issued(https, "www.issued.test", &root);
    let issuer = issuer_of(&served.chain[0]);
    assert!(issuer.starts_with("Pebble Intermediate"), "{issuer}");
    assert_eq!(sorted_names(&served), ["issued.berth.test", "www.issued.test"]);
    let page = https_request(https, "issued.berth.test", root.clone(), "GET", "/", &[], "")
        .expect("a verified HTTPS request through the router");
    assert_eq!(page.body, "? i1");
    let certs = world.ssh_ok(&["certs", "issued"]);
    assert!(certs.contains("acme") && certs.contains("Pebble Intermediate"), "{certs}");
    let log = world.daemon.log();
    assert!(log.contains("method=http-01"), "{log}");

    // An app without ACME_ROOT_CA asks the daemon's CA, which cannot be reached: the log says
    // so, and the app keeps its self-signed certificate.
    let other = world.app_repo("fallback", "f1", "web: python3 app.py\n", "");
    world.push_ok(&other, "fallback");
    poll("the daemon's CA failing for fallback", DEADLINE, || {
        world
            .daemon
            .log()
            .lines()
            .any(|line| {
                line.contains("cannot obtain a certificate")
                    && line.contains("fallback.berth.test")
                    && line.contains(&unusable)
            })
            .then_some(())
    });
    assert!(handshake(https, "fallback.berth.test", root.clone(), &[]).is_err());
    let fallback = handshake(https, "fallback.berth.test", Trust::Anything, &[]).unwrap();
    assert_eq!(names_of(&fallback.chain[0]).1.as_deref(), Some("Berth (self-signed)"));

    // A name that is not a CA is refused with the names that are; nothing changes.
    let output = world.ssh(&["config:set", "issued", "ACME_ROOT_CA=lets-encrypt"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("unknown ACME_ROOT_CA \"lets-encrypt\": give a directory URL"), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(world.get("issued", "/").body, "? i1");
    assert_eq!(wait_for_issued(https, "issued.berth.test", &root).chain, served.chain);
}

#[test]
fn tls_alpn_01_certificates_and_the_api_over_https_for_its_host() {
    let https_port = free_port();
    let pebble_dir = TempDir::new("pebble-alpn");
    // Nothing answers on pebble's HTTP-01 port: only TLS-ALPN-01 can succeed.
    let pebble = Pebble::start(pebble_dir.path(), free_port(), https_port);
    let world = World::start_with_args(
        "acme-alpn",
        &[],
        &args(&[
            ("--https", &format!("127.0.0.1:{https_port}")),
            ("--acme-directory", &pebble.directory_url),
            ("--acme-ca-file", &pebble.https_ca.display().to_string()),
            ("--acme-challenge", "tls-alpn-01"),
            ("--api-host", "API.berth.test"),
        ]),
    );
    let https = world.daemon.https_addr.expect("the daemon serves HTTPS");
    let api = world.daemon.api_addr.expect("the daemon serves the API on TCP");
    let root = Trust::Roots(certificates(&pebble.issuing_root()));

    // The API host's certificate is asked for at start, like an app's.
    let served = wait_for_issued(api, "api.berth.test", &root);
    assert!(issuer_of(&served.chain[0]).starts_with("Pebble Intermediate"));
    assert_eq!(sorted_names(&served), ["api.berth.test"]);
    assert_eq!(served.alpn.as_deref(), Some(&b"http/1.1"[..]));

    // Over HTTPS, the API answers as on plain TCP: a token or 401.
    let token = world.ssh_ok(&["tokens:create", "ops"]).lines().next().unwrap().to_owned();
    let auth = format!("Bearer {token}");
    let bearer = [("Authorization", auth.as_str())];
    let get = |path: &str, headers: &[(&str, &str)]| {
        https_request(api, "api.berth.test", root.clone(), "GET", path, headers, "")
            .expect("an HTTPS request to the API")
    };
    let apps = get("/apps", &bearer);
    assert_eq!((apps.status, apps.body.as_str()), (200, "[]"));
    assert_eq!(get("/apps", &[]).status, 401);
    let openapi = get("/openapi.json", &bearer);
    assert_eq!(openapi.status, 200);
    assert!(openapi.body.contains("\"openapi\""), "{}", openapi.body);

    // Plain HTTP to the API's port gets a clear refusal, not a broken handshake.
    let plain = http_request(api, "GET", "/apps", &bearer, "").expect("an answer to plain HTTP");
    assert_eq!(plain.status, 400, "{}", plain.body);
    let expected = format!(
        "this port serves Berth's API over HTTPS only: use https://api.berth.test:{}/",
        api.port()
    );
    assert!(plain.body.contains(&expected), "{}", plain.body);

    // An app's names, validated by the router answering pebble's TLS-ALPN-01 handshakes.
    let repo = world.app_repo("alpn", "a1", "web: python3 app.py\n", "");
    world.push_ok(&repo, "alpn");
    world.ssh_ok(&["domains:add", "alpn", "www.alpn.test"]);
    let served = wait_for_issued(https, "www.alpn.test", &root);
    assert!(issuer_of(&served.chain[0]).starts_with("Pebble Intermediate"));
    assert_eq!(sorted_names(&served), ["alpn.berth.test", "www.alpn.test"]);
    let page = https_request(https, "www.alpn.test", root.clone(), "GET", "/", &[], "").unwrap();
    assert_eq!(page.body, "? a1");
    let log = world.daemon.log();
    assert!(log.contains("method=tls-alpn-01") && !log.contains("method=http-01"), "{log}");
}

#[test]
fn api_host_is_refused_without_an_api_address_and_checked_as_a_name() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_berth"));
    let tmp = TempDir::new("api-host");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .arg("--root")
            .arg(tmp.path().join("root"))
            .args(["daemon", "--http", "127.0.0.1:0", "--no-https"])
            .args(args)
            .output()
            .expect("run berth daemon")
    };
    let output = run(&["--api-host", "api.example.com"]);
    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    assert!(output_text(&output).contains("--api <ADDR:PORT>"), "{}", output_text(&output));
    let output = run(&["--api", "127.0.0.1:0", "--api-host", "*.example.com"]);
    assert_eq!(output.status.code(), Some(1), "{}", output_text(&output));
    assert!(
        output_text(&output)
            .contains("--api-host \"*.example.com\" is not a host name (like api.example.com)"),
        "{}",
        output_text(&output)
    );
    let output = run(&["--acme-challenge", "dns-01"]);
    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    assert!(output_text(&output).contains("[possible values: http-01, tls-alpn-01]"));
}
