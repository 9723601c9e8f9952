//! Obtaining certificates from pebble by each challenge, and the manager's loop.

use std::sync::Arc;
use std::time::Duration;

use berth_testkit::pebble::Pebble;
use berth_testkit::{TempDir, free_port};
use berth_tls::{
    AcmeClient, CertOrigin, CertStore, ChallengeMethod, Http01Tokens, ManagerConfig, renew_due,
    server_config, spawn_manager_with,
};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep, timeout};

use crate::{
    DEADLINE, Trust, acme_config, certificates, handshake, serve_handshakes, serve_http01,
};

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_by_http_01_keeps_the_account_and_says_why_validation_failed() {
    let temp = TempDir::new("tls-http01");
    let tokens = Http01Tokens::new();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = http.local_addr().unwrap().port();
    serve_http01(http, tokens.clone());
    let pebble = Pebble::start(temp.path(), http_port, free_port());
    let certs_dir = temp.path().join("certs");
    let store = Arc::new(CertStore::open(&certs_dir).unwrap());
    let client = AcmeClient::new(acme_config(&pebble), Arc::clone(&store), tokens.clone());

    let domains = ["web.berth.test", "www.web.berth.test"];
    let info =
        timeout(DEADLINE, client.obtain(&domains, ChallengeMethod::Http01)).await.unwrap().unwrap();
    assert_eq!(info.names, domains);
    assert!(info.issuer.starts_with("Pebble Intermediate"), "{}", info.issuer);
    assert_eq!(info.origin, CertOrigin::Acme);
    assert!(store.lookup("www.web.berth.test").is_some());
    let chain = std::fs::read_to_string(certs_dir.join("web.berth.test/cert.pem")).unwrap();
    assert!(certificates(&chain).len() >= 2, "the chain has its intermediate:\n{chain}");

    // The account was created once and is kept next to the certificates.
    let accounts: Vec<_> = std::fs::read_dir(certs_dir.join(".acme")).unwrap().collect();
    assert_eq!(accounts.len(), 1);
    let account_path = accounts[0].as_ref().unwrap().path();
    let account = std::fs::read(&account_path).unwrap();

    // A restarted daemon loads the certificate and the account, and can renew.
    let reopened = Arc::new(CertStore::open(&certs_dir).unwrap());
    let due = renew_due(&reopened, CENTURY);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].names, domains);
    assert!(renew_due(&reopened, Duration::ZERO).is_empty());
    let client = AcmeClient::new(acme_config(&pebble), Arc::clone(&reopened), tokens);
    let renewed =
        timeout(DEADLINE, client.obtain(&domains, ChallengeMethod::Http01)).await.unwrap().unwrap();
    assert!(renewed.not_before >= info.not_before);
    assert_eq!(std::fs::read(&account_path).unwrap(), account, "the account was not reused");
    assert_eq!(std::fs::read_dir(certs_dir.join(".acme")).unwrap().count(), 1);

    // Nothing answers TLS-ALPN-01 here: the error carries the CA's reason.
    let error = timeout(DEADLINE, client.obtain(&["down.berth.test"], ChallengeMethod::TlsAlpn01))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("the CA could not validate down.berth.test by tls-alpn-01: "),
        "{error}"
    );
    assert!(error.contains("down.berth.test: Failed to connect to 127.0.0.1:"), "{error}");
    assert!(reopened.lookup("down.berth.test").is_none());

    let error = client.obtain(&["*.berth.test"], ChallengeMethod::Http01).await.unwrap_err();
    assert!(error.to_string().contains("only a DNS-01 challenge can prove"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_by_tls_alpn_01_and_serves_the_certificate() {
    let temp = TempDir::new("tls-alpn01");
    let store = Arc::new(CertStore::open(temp.path().join("certs")).unwrap());
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls.local_addr().unwrap();
    serve_handshakes(tls, server_config(Arc::clone(&store)));
    let pebble = Pebble::start(temp.path(), free_port(), tls_addr.port());
    let client = AcmeClient::new(acme_config(&pebble), Arc::clone(&store), Http01Tokens::new());

    // Before: a self-signed certificate, which a client that checks refuses.
    let root = certificates(&pebble.issuing_root());
    let refused =
        handshake(tls_addr, "alpn.berth.test", Trust::Roots(root.clone()), &[b"h2"]).await;
    assert!(refused.is_err());

    let info = timeout(DEADLINE, client.obtain(&["alpn.berth.test"], ChallengeMethod::TlsAlpn01))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.names, ["alpn.berth.test"]);

    // After: the issued certificate, verified up to pebble's root, with h2 negotiated.
    let served = handshake(tls_addr, "alpn.berth.test", Trust::Roots(root), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(served.alpn.as_deref(), Some(&b"h2"[..]));
    let stored = store.lookup("alpn.berth.test").unwrap();
    assert_eq!(served.chain, stored.cert);

    // The challenge is withdrawn: a validator's handshake now fails.
    let validator =
        handshake(tls_addr, "alpn.berth.test", Trust::Anything, &[berth_tls::ACME_TLS_ALPN]).await;
    assert!(validator.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_obtains_what_is_missing_and_keeps_going_past_failures() {
    let temp = TempDir::new("tls-manager");
    let tokens = Http01Tokens::new();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = http.local_addr().unwrap().port();
    serve_http01(http, tokens.clone());
    let pebble = Pebble::start(temp.path(), http_port, free_port());
    let store = Arc::new(CertStore::open(temp.path().join("certs")).unwrap());
    let client = Arc::new(AcmeClient::new(acme_config(&pebble), Arc::clone(&store), tokens));
    let config = ManagerConfig {
        method: ChallengeMethod::Http01,
        first_retry: Duration::from_millis(50),
        max_retry: Duration::from_millis(200),
        ..ManagerConfig::default()
    };
    let wanted = Arc::new(std::sync::Mutex::new(vec![
        vec!["*.wild.berth.test".to_string()],
        vec!["one.berth.test".to_string()],
    ]));
    let source = Arc::clone(&wanted);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let manager =
        spawn_manager_with(client, config, move || source.lock().unwrap().clone(), async move {
            let _ = stopped.await;
        });

    wait_for(|| store.lookup("one.berth.test").is_some()).await;
    wanted.lock().unwrap().push(vec!["two.berth.test".to_string(), "2.berth.test".to_string()]);
    manager.check_now();
    wait_for(|| store.covering("2.berth.test").is_some()).await;
    assert_eq!(store.info().len(), 2);

    stop.send(()).unwrap();
    timeout(DEADLINE, manager.join()).await.expect("the manager stopped");
}

async fn wait_for(mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out");
        sleep(Duration::from_millis(20)).await;
    }
}
