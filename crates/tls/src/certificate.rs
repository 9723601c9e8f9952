//! One certificate and its key: parsing PEM, checking that they belong together, and what
//! `berth certs` shows about them.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

/// Why a certificate or key was refused. The messages are shown to whoever ran `certs:add`,
/// so each names the problem and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("the certificate is not PEM: {detail}")]
    CertificateNotPem { detail: String },
    #[error(
        "no certificate found: the certificate file must hold a \"-----BEGIN CERTIFICATE-----\" \
         block"
    )]
    NoCertificate,
    #[error("the private key is not PEM: {detail}")]
    KeyNotPem { detail: String },
    #[error(
        "no private key found: the key file must hold a \"-----BEGIN PRIVATE KEY-----\" \
         (or RSA/EC PRIVATE KEY) block"
    )]
    NoKey,
    #[error("the certificate and the key were given the wrong way round; swap them")]
    Swapped,
    #[error("the certificate cannot be parsed: {detail}")]
    BadCertificate { detail: String },
    #[error("the private key cannot be used: {detail}")]
    UnsupportedKey { detail: String },
    #[error("the private key does not match the certificate (is it the key of another one?)")]
    KeyMismatch,
    #[error("the certificate expired on {not_after}")]
    Expired { not_after: String },
    #[error("the certificate is not valid before {not_before}")]
    NotYetValid { not_before: String },
    #[error("the certificate names no domain (it has no DNS subject alternative name)")]
    NoNames,
    #[error("the certificate does not cover {domain}; it is for {}", names.join(", "))]
    NameMismatch { domain: String, names: Vec<String> },
    #[error("{domain:?} is not a domain name")]
    InvalidDomain { domain: String },
    #[error("no domain was given")]
    NoDomains,
    #[error("cannot generate a certificate: {detail}")]
    Generate { detail: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a stored certificate came from, which decides whether Berth renews it: it can only
/// renew what it obtained itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertOrigin {
    /// Obtained by Berth's ACME client; renewed before it expires.
    Acme,
    /// Brought by a user with `certs:add`; never replaced behind their back.
    User,
}

impl CertOrigin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CertOrigin::Acme => "acme",
            CertOrigin::User => "user",
        }
    }

    pub(crate) fn parse(text: &str) -> CertOrigin {
        if text.trim() == "acme" { CertOrigin::Acme } else { CertOrigin::User }
    }
}

impl fmt::Display for CertOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `berth certs APP` shows about one stored certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The DNS names the certificate is valid for, lower-case (`*.example.com` for a
    /// wildcard), in the certificate's order.
    pub names: Vec<String>,
    /// The issuer's common name (or its whole distinguished name if it has none).
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub origin: CertOrigin,
}

impl CertInfo {
    /// Whether the certificate is valid for `name` (lower-case), directly or by a wildcard.
    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|pattern| name_matches(pattern, name))
    }

    /// Whether it expires before `now + within` (or has already expired).
    pub fn expires_within(&self, within: Duration, now: SystemTime) -> bool {
        self.not_after <= now + within
    }

    /// `not_after` as an HTTP date ("Sun, 06 Nov 1994 08:49:37 GMT"), for messages.
    pub fn not_after_text(&self) -> String {
        httpdate::fmt_http_date(self.not_after)
    }
}

/// A certificate chain with its signing key, ready for rustls, and what it says.
#[derive(Debug, Clone)]
pub(crate) struct ParsedCert {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) info: CertInfo,
}

/// The one crypto provider Berth uses, so that no process-wide default is needed and
/// aws-lc can never be picked by accident.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// Parses a PEM chain (leaf first) and a PEM private key, and checks that the key belongs to
/// the leaf. With `now`, also refuses a certificate that is expired or not yet valid;
/// certificates already on disk are loaded without that check, so an expired one is still
/// listed (and renewed) rather than silently dropped.
pub(crate) fn parse_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: CertOrigin,
    now: Option<SystemTime>,
) -> Result<ParsedCert, CertError> {
    let chain = parse_chain(cert_pem, key_pem)?;
    let key = parse_key(key_pem, cert_pem)?;
    let info = describe(&chain[0], origin)?;
    if let Some(now) = now {
        if info.not_after <= now {
            return Err(CertError::Expired { not_after: httpdate::fmt_http_date(info.not_after) });
        }
        if info.not_before > now {
            return Err(CertError::NotYetValid {
                not_before: httpdate::fmt_http_date(info.not_before),
            });
        }
    }
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|error| CertError::UnsupportedKey { detail: error.to_string() })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::KeyMismatch);
        }
        // ring can always report its public key; anything else is a certificate rustls
        // cannot read, which a client could not use either.
        Err(error) => return Err(CertError::BadCertificate { detail: error.to_string() }),
    }
    Ok(ParsedCert { certified: Arc::new(certified), info })
}

fn parse_chain(cert_pem: &[u8], key_pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CertError::CertificateNotPem { detail: pem_error(&error) })?;
    if !chain.is_empty() {
        return Ok(chain);
    }
    let key_file_has_certificate = CertificateDer::pem_slice_iter(key_pem).next().is_some();
    if PrivateKeyDer::from_pem_slice(cert_pem).is_ok() && key_file_has_certificate {
        return Err(CertError::Swapped);
    }
    if looks_like_pem(cert_pem) {
        Err(CertError::NoCertificate)
    } else {
        Err(CertError::CertificateNotPem { detail: "no \"-----BEGIN\" line".into() })
    }
}

fn parse_key(key_pem: &[u8], cert_pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            if CertificateDer::pem_slice_iter(key_pem).next().is_some()
                && PrivateKeyDer::from_pem_slice(cert_pem).is_ok()
            {
                Err(CertError::Swapped)
            } else if looks_like_pem(key_pem) {
                Err(CertError::NoKey)
            } else {
                Err(CertError::KeyNotPem { detail: "no \"-----BEGIN\" line".into() })
            }
        }
        Err(error) => Err(CertError::KeyNotPem { detail: pem_error(&error) }),
    }
}

fn looks_like_pem(text: &[u8]) -> bool {
    text.windows(10).any(|window| window == b"-----BEGIN")
}

fn pem_error(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("a block is not closed (no {:?})", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed line {:?}", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(detail) => format!("bad base64 inside a block: {detail}"),
        other => other.to_string(),
    }
}

/// Reads names, issuer and validity from a DER certificate.
pub(crate) fn describe(der: &[u8], origin: CertOrigin) -> Result<CertInfo, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| CertError::BadCertificate { detail: error.to_string() })?;
    let mut names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|error| CertError::BadCertificate { detail: error.to_string() })?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(name) = name {
                let name = normalize_name(name);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    // Browsers ignore the common name, so a certificate without DNS names serves nobody.
    if names.is_empty() {
        return Err(CertError::NoNames);
    }
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| cert.issuer().to_string());
    let validity = cert.validity();
    Ok(CertInfo {
        names,
        issuer,
        not_before: system_time(validity.not_before.timestamp()),
        not_after: system_time(validity.not_after.timestamp()),
        origin,
    })
}

fn system_time(unix_seconds: i64) -> SystemTime {
    if unix_seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_seconds.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs())
    }
}

/// Lower-case, without a trailing dot: the form names are compared in.
pub(crate) fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks and normalises a domain a user or the daemon asks a certificate for: a DNS name,
/// optionally with a leading `*.` label.
pub(crate) fn validate_domain(domain: &str) -> Result<String, CertError> {
    let name = normalize_name(domain.trim());
    let invalid = || CertError::InvalidDomain { domain: domain.to_string() };
    if name.is_empty() || name.len() > 253 {
        return Err(invalid());
    }
    let body = name.strip_prefix("*.").unwrap_or(&name);
    for label in body.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(invalid());
        }
    }
    Ok(name)
}

/// Whether a certificate name (`example.com`, `*.example.com`) covers `name`. A wildcard
/// covers exactly one label, as in RFC 6125: `*.example.com` covers `www.example.com` but
/// neither `example.com` nor `a.b.example.com`.
pub(crate) fn name_matches(pattern: &str, name: &str) -> bool {
    if pattern == name {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(parent), Some((first, rest))) => !first.is_empty() && rest == parent,
        _ => false,
    }
}

/// A self-signed certificate for `name`, served until a real one arrives (as piku does),
/// and for clients that send no SNI at all.
pub(crate) fn self_signed(name: &str) -> Result<Arc<CertifiedKey>, CertError> {
    let generate = |error: rcgen::Error| CertError::Generate { detail: error.to_string() };
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(generate)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Berth (self-signed)");
    generated(params)
}

/// The certificate that answers a TLS-ALPN-01 challenge (RFC 8737): self-signed for the
/// domain, with the critical acmeIdentifier extension holding the key authorization's digest.
pub(crate) fn tls_alpn_challenge(
    domain: &str,
    key_authorization_digest: &[u8],
) -> Result<Arc<CertifiedKey>, CertError> {
    let generate = |error: rcgen::Error| CertError::Generate { detail: error.to_string() };
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(generate)?;
    params.custom_extensions =
        vec![rcgen::CustomExtension::new_acme_identifier(key_authorization_digest)];
    generated(params)
}

fn generated(params: rcgen::CertificateParams) -> Result<Arc<CertifiedKey>, CertError> {
    let generate = |error: rcgen::Error| CertError::Generate { detail: error.to_string() };
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| CertError::Generate { detail: error.to_string() })?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing_key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|name| name.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn error(cert: &str, key: &str) -> String {
        parse_pair(cert.as_bytes(), key.as_bytes(), CertOrigin::User, Some(SystemTime::now()))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("example.com", "example.com"));
        assert!(name_matches("*.example.com", "www.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("www.example.com", "example.com"));
    }

    #[test]
    fn domains_are_checked_and_normalised() {
        assert_eq!(validate_domain("WWW.Example.com.").unwrap(), "www.example.com");
        assert_eq!(validate_domain("*.example.com").unwrap(), "*.example.com");
        for bad in ["", "../etc", "a/b", "a..b", "-a.com", "*", "a.*.com", "x y"] {
            assert!(validate_domain(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_valid_pair_is_described() {
        let (cert, key) = pair(&["Example.com", "www.example.com"]);
        let parsed = parse_pair(cert.as_bytes(), key.as_bytes(), CertOrigin::User, None).unwrap();
        assert_eq!(parsed.info.names, ["example.com", "www.example.com"]);
        assert_eq!(parsed.info.issuer, "rcgen self signed cert");
        assert!(parsed.info.covers("www.example.com"));
    }

    #[test]
    fn refusals_name_the_problem() {
        let (cert, key) = pair(&["example.com"]);
        let (_, other_key) = pair(&["example.com"]);
        assert!(error(&cert, &other_key).contains("does not match"));
        assert!(error(&key, &cert).contains("swap them"));
        assert!(error("hello", &key).contains("certificate is not PEM"));
        assert!(error(&cert, "hello").contains("private key is not PEM"));
        assert!(error(&key, &key).contains("no certificate found"));
        assert!(error(&cert, &cert).contains("no private key found"));
        let truncated = &cert[..cert.len() - 30];
        assert!(error(truncated, &key).contains("is not closed"), "{}", error(truncated, &key));

        let expired_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["old.example.com".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let expired = params.self_signed(&expired_key).unwrap().pem();
        let message = error(&expired, &expired_key.serialize_pem());
        assert_eq!(message, "the certificate expired on Mon, 01 Jan 2001 00:00:00 GMT");
    }
}
