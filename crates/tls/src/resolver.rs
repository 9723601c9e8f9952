//! Which certificate a TLS handshake gets: the stored one for its SNI name, else a
//! self-signed one made on the spot, or the TLS-ALPN-01 challenge certificate when the CA's
//! validator asks for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::certificate::{normalize_name, provider, self_signed};
use crate::store::CertStore;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The name of the self-signed certificate given to clients that send no SNI (an IP
/// address typed into a browser, a health check).
const NO_SNI_NAME: &str = "localhost";

/// SNI names are chosen by whoever connects, so the cache of self-signed certificates is
/// bounded; when full it starts over, which costs one key generation per name.
const MAX_SELF_SIGNED: usize = 1024;

/// A rustls certificate resolver over a [`CertStore`].
///
/// In order: a client that offers only the `acme-tls/1` protocol gets the pending
/// TLS-ALPN-01 challenge certificate for its SNI name (or no certificate, failing the
/// handshake, as RFC 8737 asks); otherwise the stored certificate for the name (exact, then
/// wildcard); otherwise a self-signed certificate for the name, generated once and cached,
/// like piku serves until the real one has been obtained.
pub struct CertResolver {
    store: Arc<CertStore>,
    self_signed: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver").field("store", &self.store).finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn new(store: Arc<CertStore>) -> CertResolver {
        CertResolver { store, self_signed: Mutex::new(HashMap::new()) }
    }

    fn self_signed_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let mut cache = self.self_signed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = cache.get(name) {
            return Some(Arc::clone(key));
        }
        match self_signed(name) {
            Ok(key) => {
                if cache.len() >= MAX_SELF_SIGNED {
                    cache.clear();
                }
                cache.insert(name.to_string(), Arc::clone(&key));
                tracing::debug!(name, "serving a self-signed certificate");
                Some(key)
            }
            Err(error) => {
                tracing::warn!(name, "cannot make a self-signed certificate: {error}");
                None
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name().map(normalize_name);
        let only_acme = client_hello.alpn().is_some_and(|protocols| {
            let protocols: Vec<&[u8]> = protocols.collect();
            protocols == [ACME_TLS_ALPN]
        });
        if only_acme {
            let challenge = name.as_deref().and_then(|name| self.store.tls_alpn_challenge(name));
            if challenge.is_none() {
                tracing::debug!(?name, "a TLS-ALPN-01 validation for no pending challenge");
            }
            return challenge;
        }
        let name = name.unwrap_or_else(|| NO_SNI_NAME.to_string());
        self.store.lookup(&name).or_else(|| self.self_signed_for(&name))
    }
}

/// The router's TLS configuration: TLS 1.3 and 1.2, certificates from `store` by SNI, and
/// ALPN `h2`, `http/1.1` (in that order of preference) and `acme-tls/1`, the last only ever
/// chosen by a CA's validator, which offers nothing else.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CertResolver::new(store)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    // Tickets let returning visitors resume TLS 1.3 sessions without a full handshake; the
    // keys rotate every few hours and live only in memory.
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        Err(error) => tracing::warn!("TLS session tickets are off: {error}"),
    }
    Arc::new(config)
}
