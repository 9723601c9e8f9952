//! Which certificate a handshake gets: SNI selection, wildcards, the self-signed fallback,
//! and certificates users bring.

use std::sync::Arc;

use berth_testkit::TempDir;
use berth_tls::{CertStore, server_config};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;

use crate::{Trust, handshake, names_of, serve_handshakes};

/// A CA of the user's, and a certificate for `names` signed by it: (CA, chain PEM, key PEM).
fn user_certificate(names: &[&str]) -> (CertificateDer<'static>, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Shop CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
    (ca.der().clone(), cert.pem(), key.serialize_pem())
}

async fn start(store: &Arc<CertStore>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_handshakes(listener, server_config(Arc::clone(store)));
    addr
}

#[tokio::test]
async fn a_user_certificate_is_validated_then_served() {
    let temp = TempDir::new("tls-user");
    let store = Arc::new(CertStore::open(temp.path()).unwrap());
    let addr = start(&store).await;
    let (ca, cert, key) = user_certificate(&["shop.example.com", "www.shop.example.com"]);
    let (_, _, other_key) = user_certificate(&["shop.example.com"]);

    let refused = |cert: &str, key: &str| {
        store
            .insert(&["shop.example.com"], cert.as_bytes(), key.as_bytes())
            .unwrap_err()
            .to_string()
    };
    assert!(refused(&cert, &other_key).contains("does not match the certificate"));
    assert!(refused(&key, &cert).contains("swap them"));
    assert!(refused("not a certificate", &key).contains("is not PEM"));
    let error = store.insert(&["blog.example.com"], cert.as_bytes(), key.as_bytes()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the certificate does not cover blog.example.com; it is for shop.example.com, \
         www.shop.example.com"
    );
    assert!(store.info().is_empty());

    // Before: a self-signed certificate, which a client that checks refuses.
    let before = handshake(addr, "shop.example.com", Trust::Roots(vec![ca.clone()]), &[]).await;
    assert!(before.is_err());

    let info = store.insert(&["shop.example.com"], cert.as_bytes(), key.as_bytes()).unwrap();
    assert_eq!(info.issuer, "Shop CA");
    assert_eq!(store.info(), [info]);
    for name in ["shop.example.com", "www.shop.example.com"] {
        let served =
            handshake(addr, name, Trust::Roots(vec![ca.clone()]), &[b"http/1.1"]).await.unwrap();
        assert_eq!(served.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_a_cached_self_signed_certificate() {
    let temp = TempDir::new("tls-sni");
    let store = Arc::new(CertStore::open(temp.path()).unwrap());
    let (exact_ca, exact_cert, exact_key) = user_certificate(&["api.example.com"]);
    store.insert(&[], exact_cert.as_bytes(), exact_key.as_bytes()).unwrap();
    let (wild_ca, wild_cert, wild_key) = user_certificate(&["*.example.com"]);
    store.insert(&["*.example.com"], wild_cert.as_bytes(), wild_key.as_bytes()).unwrap();
    let addr = start(&store).await;

    let exact = Trust::Roots(vec![exact_ca]);
    handshake(addr, "API.example.com", exact, &[]).await.unwrap();
    let wild = Trust::Roots(vec![wild_ca.clone()]);
    handshake(addr, "blog.example.com", wild, &[]).await.unwrap();
    // A wildcard covers one label only.
    let deeper = Trust::Roots(vec![wild_ca]);
    assert!(handshake(addr, "a.blog.example.com", deeper, &[]).await.is_err());

    let first = handshake(addr, "new.example.org", Trust::Anything, &[b"h2"]).await.unwrap();
    let (names, organization) = names_of(&first.chain[0]);
    assert_eq!(names, ["new.example.org"]);
    assert_eq!(organization.as_deref(), Some("Berth (self-signed)"));
    assert_eq!(first.alpn.as_deref(), Some(&b"h2"[..]));
    let again = handshake(addr, "new.example.org", Trust::Anything, &[]).await.unwrap();
    assert_eq!(again.chain, first.chain, "the self-signed certificate is cached");

    // No SNI (an IP address): a self-signed certificate all the same.
    let no_sni = handshake(addr, "127.0.0.1", Trust::Anything, &[]).await.unwrap();
    assert_eq!(names_of(&no_sni.chain[0]).0, ["localhost"]);

    // A validator asking for a challenge that is not pending gets no certificate at all.
    let validator =
        handshake(addr, "api.example.com", Trust::Anything, &[berth_tls::ACME_TLS_ALPN]).await;
    assert!(validator.is_err());
}
