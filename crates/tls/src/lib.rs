//! Certificates for Berth's router, in place of acme.sh: where they are kept, which one a TLS
//! handshake gets, and how they are obtained and renewed over ACME.
//!
//! - [`CertStore`]: `certs/DOMAIN/{cert,key}.pem` (plus `certs/.acme/` for ACME accounts),
//!   loaded at start and swapped atomically when a certificate arrives; [`CertStore::insert`]
//!   takes the certificates users bring (`certs:add`) and says what is wrong with a bad one.
//! - [`server_config`]: the router's rustls configuration (TLS 1.2 and 1.3, ALPN `h2` and
//!   `http/1.1`), whose [`CertResolver`] picks a certificate by SNI, falls back to a
//!   self-signed one, and answers TLS-ALPN-01 challenges.
//! - [`AcmeClient`]: orders a certificate by HTTP-01 (tokens published in [`Http01Tokens`],
//!   which the router answers on plain HTTP) or TLS-ALPN-01; [`spawn_manager`] keeps every
//!   wanted certificate present and renews them 30 days before expiry.
//!
//! **Architecture Invariant:** this crate does not know the router, nor the router this
//! crate: the daemon hands the router the [`rustls::ServerConfig`] and a closure over
//! [`Http01Tokens::key_authorization`]. Only the ring crypto provider is used, passed
//! explicitly, so aws-lc is never built and no process-wide default is installed.

mod acme;
mod certificate;
mod manager;
mod resolver;
mod store;

pub use acme::{
    AcmeClient, AcmeConfig, AcmeError, ChallengeMethod, Http01Tokens, LETS_ENCRYPT, directory_url,
    is_public_ca,
};
pub use certificate::{CertError, CertInfo, CertOrigin};
pub use manager::{
    CertRequest, DEFAULT_RENEW_WITHIN, ManagerConfig, ManagerHandle, renew_due, spawn_manager,
    spawn_manager_with,
};
pub use resolver::{ACME_TLS_ALPN, CertResolver, server_config};
pub use store::CertStore;
