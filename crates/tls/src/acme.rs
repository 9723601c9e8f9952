//! Obtaining certificates from an ACME CA (Let's Encrypt by default) with instant-acme, by
//! HTTP-01 (tokens the router answers on plain HTTP) or TLS-ALPN-01 (a challenge certificate
//! the resolver hands out).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, Order, OrderStatus, Problem, RetryPolicy,
};

use crate::certificate::{CertError, CertInfo, CertOrigin, tls_alpn_challenge, validate_domain};
use crate::store::{ACME_DIR, CertStore, write_private};

/// Let's Encrypt's production directory, the default CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The CA names acme.sh (and so piku's `ACME_ROOT_CA`) accepts, with their directories.
/// Only Let's Encrypt works without an external account binding, which Berth does not do.
const KNOWN_CAS: &[(&[&str], &str)] = &[
    (&["letsencrypt.org", "letsencrypt"], LETS_ENCRYPT),
    (
        &[
            "letsencrypt.org_test",
            "letsencrypt_test",
            "letsencrypttest",
            "letsencrypt_staging",
            "staging",
        ],
        "https://acme-staging-v02.api.letsencrypt.org/directory",
    ),
    (&["zerossl.com", "zerossl"], "https://acme.zerossl.com/v2/DV90"),
    (&["buypass.com", "buypass"], "https://api.buypass.com/acme/directory"),
    (
        &["buypass.com_test", "buypass_test", "buypasstest"],
        "https://api.test4.buypass.no/acme/directory",
    ),
    (&["ssl.com", "sslcom"], "https://acme.ssl.com/sslcom-dv-ecc"),
    (&["google.com", "google"], "https://dv.acme-v02.api.pki.goog/directory"),
    (
        &["google.com_test", "googletest", "googletestca"],
        "https://dv.acme-v02.test-api.pki.goog/directory",
    ),
];

/// How an order's authorizations are proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeMethod {
    /// A token served on plain HTTP at `/.well-known/acme-challenge/TOKEN` (port 80).
    Http01,
    /// A challenge certificate served on TLS with ALPN `acme-tls/1` (port 443).
    TlsAlpn01,
}

impl ChallengeMethod {
    fn challenge_type(self) -> ChallengeType {
        match self {
            ChallengeMethod::Http01 => ChallengeType::Http01,
            ChallengeMethod::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }
}

impl fmt::Display for ChallengeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChallengeMethod::Http01 => "http-01",
            ChallengeMethod::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

impl FromStr for ChallengeMethod {
    type Err = String;

    fn from_str(text: &str) -> Result<ChallengeMethod, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "http-01" | "http01" | "http" => Ok(ChallengeMethod::Http01),
            "tls-alpn-01" | "tlsalpn01" | "tls-alpn" | "alpn" => Ok(ChallengeMethod::TlsAlpn01),
            _ => Err(format!("unknown challenge method {text:?}: use http-01 or tls-alpn-01")),
        }
    }
}

/// Why a certificate could not be had. The messages go to the daemon's log, so each says
/// what failed and, when the CA said why, its reason.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error(
        "unknown ACME_ROOT_CA {value:?}: give a directory URL (https://...) or one of \
         letsencrypt.org, letsencrypt.org_test, zerossl.com, buypass.com, ssl.com, google.com"
    )]
    UnknownCa { value: String },
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error(
        "{domain} is a wildcard, which only a DNS-01 challenge can prove and Berth does not \
         do; add the certificate yourself with certs:add"
    )]
    Wildcard { domain: String },
    #[error("cannot read the ACME account in {path}: {detail}")]
    AccountFile { path: PathBuf, detail: String },
    #[error("cannot use an ACME account at {directory}: {source}")]
    Account {
        directory: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("the CA refused an order for {domains}: {source}")]
    Order {
        domains: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("the CA offers no {method} challenge for {domain}")]
    NoChallenge { domain: String, method: ChallengeMethod },
    #[error("the CA's authorization for {domain} is {status} and cannot be completed")]
    Authorization { domain: String, status: String },
    #[error("the CA could not validate {domains} by {method}: {reason}")]
    Validation { domains: String, method: ChallengeMethod, reason: String },
    #[error("the CA did not issue the certificate for {domains}: {source}")]
    Issue {
        domains: String,
        #[source]
        source: instant_acme::Error,
    },
}

/// The HTTP-01 tokens being validated right now, token to key authorization.
///
/// Cheap to clone; the ACME client publishes into it and the router answers
/// `GET /.well-known/acme-challenge/TOKEN` on plain HTTP from it (the daemon hands the router
/// a closure over [`Http01Tokens::key_authorization`], so neither crate depends on the other).
#[derive(Debug, Clone, Default)]
pub struct Http01Tokens {
    tokens: Arc<RwLock<HashMap<String, String>>>,
}

impl Http01Tokens {
    pub fn new() -> Http01Tokens {
        Http01Tokens::default()
    }

    /// The body to answer `/.well-known/acme-challenge/{token}` with, while it is pending.
    pub fn key_authorization(&self, token: &str) -> Option<String> {
        self.tokens.read().unwrap_or_else(PoisonError::into_inner).get(token).cloned()
    }

    fn publish(&self, token: &str, key_authorization: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        tokens.insert(token.to_string(), key_authorization.to_string());
    }

    fn remove(&self, token: &str) {
        self.tokens.write().unwrap_or_else(PoisonError::into_inner).remove(token);
    }
}

/// Where certificates come from.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL; see [`directory_url`] for piku's `ACME_ROOT_CA` names.
    pub directory_url: String,
    /// Given to the CA as `mailto:` contact for expiry notices, if set.
    pub contact_email: Option<String>,
    /// A PEM CA certificate to trust for the CA's own HTTPS instead of the system's roots:
    /// a private CA, or pebble's in tests.
    pub trust_root_pem: Option<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> AcmeConfig {
        AcmeConfig {
            directory_url: LETS_ENCRYPT.to_string(),
            contact_email: None,
            trust_root_pem: None,
        }
    }
}

/// The directory URL for an `ACME_ROOT_CA` value as piku (through acme.sh) accepts it: empty
/// for Let's Encrypt, a CA's short name (`letsencrypt.org`, `letsencrypt.org_test`, ...),
/// or any `https://` (or `http://`) directory URL.
pub fn directory_url(acme_root_ca: &str) -> Result<String, AcmeError> {
    let value = acme_root_ca.trim();
    if value.is_empty() {
        return Ok(LETS_ENCRYPT.to_string());
    }
    if value.starts_with("https://") || value.starts_with("http://") {
        return Ok(value.to_string());
    }
    let lower = value.to_ascii_lowercase();
    KNOWN_CAS
        .iter()
        .find(|(names, _)| names.contains(&lower.as_str()))
        .map(|(_, url)| url.to_string())
        .ok_or_else(|| AcmeError::UnknownCa { value: value.to_string() })
}

/// Whether a directory URL is one of the public CAs' that [`directory_url`] knows by name.
/// Those sign only names in public DNS, and their HTTPS is verified against the system's
/// roots.
pub fn is_public_ca(directory_url: &str) -> bool {
    let url = directory_url.trim().trim_end_matches('/');
    KNOWN_CAS.iter().any(|(_, known)| known.eq_ignore_ascii_case(url))
}

/// Obtains certificates into a [`CertStore`], with one ACME account per CA kept in the
/// store's directory (`.acme/`), created on first use.
pub struct AcmeClient {
    config: AcmeConfig,
    store: Arc<CertStore>,
    http01: Http01Tokens,
    /// Loaded or created on the first order, not at start: a CA that cannot be reached must
    /// not keep the daemon from starting, and the manager retries with backoff.
    account: tokio::sync::Mutex<Option<Account>>,
    poll: RetryPolicy,
}

impl fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeClient")
            .field("directory_url", &self.config.directory_url)
            .finish_non_exhaustive()
    }
}

impl AcmeClient {
    /// A client that stores what it obtains in `store` and publishes HTTP-01 tokens in
    /// `http01` (TLS-ALPN-01 challenge certificates go to the store, where the resolver made
    /// by [`crate::server_config`] finds them).
    pub fn new(config: AcmeConfig, store: Arc<CertStore>, http01: Http01Tokens) -> AcmeClient {
        // Validation takes a CA a few seconds; two minutes covers a slow one without letting
        // a stuck order hold the manager forever.
        let poll = RetryPolicy::new()
            .initial_delay(Duration::from_millis(500))
            .backoff(1.5)
            .timeout(Duration::from_secs(120));
        AcmeClient { config, store, http01, account: tokio::sync::Mutex::new(None), poll }
    }

    /// A client for another CA (an app's `ACME_ROOT_CA`) that shares this one's store,
    /// HTTP-01 tokens and contact address. The CA certificate this client trusts for its CA's
    /// HTTPS goes along for a private CA only: a public CA is verified against the system's
    /// roots.
    pub fn for_directory(&self, directory_url: &str) -> AcmeClient {
        let trust_root_pem =
            if is_public_ca(directory_url) { None } else { self.config.trust_root_pem.clone() };
        let config = AcmeConfig {
            directory_url: directory_url.to_string(),
            contact_email: self.config.contact_email.clone(),
            trust_root_pem,
        };
        AcmeClient::new(config, Arc::clone(&self.store), self.http01.clone())
    }

    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    pub fn directory_url(&self) -> &str {
        &self.config.directory_url
    }

    /// Obtains one certificate for all of `domains` (the first is where it is stored),
    /// proving each by `method`, and stores it. Wildcards are refused (they need DNS-01).
    pub async fn obtain(
        &self,
        domains: &[impl AsRef<str>],
        method: ChallengeMethod,
    ) -> Result<CertInfo, AcmeError> {
        let domains = domains
            .iter()
            .map(|domain| validate_domain(domain.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if domains.is_empty() {
            return Err(CertError::NoDomains.into());
        }
        if let Some(domain) = domains.iter().find(|domain| domain.starts_with("*.")) {
            return Err(AcmeError::Wildcard { domain: domain.clone() });
        }
        let names = domains.join(", ");
        let account = self.account().await?;
        let identifiers: Vec<Identifier> =
            domains.iter().map(|domain| Identifier::Dns(domain.clone())).collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|source| AcmeError::Order { domains: names.clone(), source })?;

        // Whatever happens from here on, the published challenges are withdrawn when this
        // goes out of scope (also when the manager's task is cancelled at shutdown).
        let mut published = Published { client: self, tokens: Vec::new(), domains: Vec::new() };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization
                .map_err(|source| AcmeError::Order { domains: names.clone(), source })?;
            let domain = authorization.identifier().to_string();
            match authorization.status {
                AuthorizationStatus::Pending => {}
                // The CA remembers a recent validation of this account for this name.
                AuthorizationStatus::Valid => continue,
                status => {
                    let status = format!("{status:?}").to_ascii_lowercase();
                    return Err(AcmeError::Authorization { domain, status });
                }
            }
            let mut challenge = authorization
                .challenge(method.challenge_type())
                .ok_or_else(|| AcmeError::NoChallenge { domain: domain.clone(), method })?;
            let key_authorization = challenge.key_authorization();
            match method {
                ChallengeMethod::Http01 => {
                    self.http01.publish(&challenge.token, key_authorization.as_str());
                    published.tokens.push(challenge.token.clone());
                }
                ChallengeMethod::TlsAlpn01 => {
                    let digest = key_authorization.digest();
                    let key = tls_alpn_challenge(&domain, digest.as_ref())?;
                    self.store.set_tls_alpn_challenge(&domain, key);
                    published.domains.push(domain.clone());
                }
            }
            tracing::debug!(%domain, %method, "challenge published");
            challenge.set_ready().await.map_err(|source| AcmeError::Validation {
                domains: names.clone(),
                method,
                reason: problem_text(&source),
            })?;
        }

        let status = order.poll_ready(&self.poll).await;
        match status {
            Ok(OrderStatus::Ready) => {}
            Ok(_) | Err(instant_acme::Error::Api(_)) => {
                let reason = why_invalid(&mut order, status.err()).await;
                return Err(AcmeError::Validation { domains: names, method, reason });
            }
            Err(source) => return Err(AcmeError::Issue { domains: names, source }),
        }
        drop(published);

        let issue = |source| AcmeError::Issue { domains: names.clone(), source };
        let generate = |error: rcgen::Error| CertError::Generate { detail: error.to_string() };
        let key = rcgen::KeyPair::generate().map_err(generate)?;
        let params = rcgen::CertificateParams::new(domains.clone()).map_err(generate)?;
        let csr = params.serialize_request(&key).map_err(generate)?;
        order.finalize_csr(csr.der()).await.map_err(issue)?;
        let chain = order.poll_certificate(&self.poll).await.map_err(issue)?;
        let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
        let info = self.store.insert_with_origin(
            &domains,
            chain.as_bytes(),
            key.serialize_pem().as_bytes(),
            CertOrigin::Acme,
        )?;
        Ok(info)
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let directory = self.config.directory_url.clone();
        let account_error = |source| AcmeError::Account { directory: directory.clone(), source };
        let path = self.account_path();
        let file_error = |detail: String| AcmeError::AccountFile { path: path.clone(), detail };
        let account = match fs::read(&path) {
            Ok(bytes) => {
                let credentials: AccountCredentials = serde_json::from_slice(&bytes)
                    .map_err(|error| file_error(error.to_string()))?;
                self.builder()?.from_credentials(credentials).await.map_err(account_error)?
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let contact =
                    self.config.contact_email.as_ref().map(|email| format!("mailto:{email}"));
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new_account = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = self
                    .builder()?
                    .create(&new_account, directory.clone(), None)
                    .await
                    .map_err(account_error)?;
                let json = serde_json::to_vec_pretty(&credentials)
                    .map_err(|error| file_error(error.to_string()))?;
                self.save_account(&json).map_err(|error| file_error(error.to_string()))?;
                tracing::info!(directory = %directory, id = %account.id(), "ACME account created");
                account
            }
            Err(error) => return Err(file_error(error.to_string())),
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    fn builder(&self) -> Result<AccountBuilder, AcmeError> {
        let builder = match &self.config.trust_root_pem {
            Some(pem) => Account::builder_with_root(pem),
            None => Account::builder(),
        };
        builder.map_err(|source| AcmeError::Account {
            directory: self.config.directory_url.clone(),
            source,
        })
    }

    /// One account per CA: `.acme/account-HOST_PATH.json`.
    fn account_path(&self) -> PathBuf {
        let url = &self.config.directory_url;
        let without_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let slug: String = without_scheme
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        self.store.dir().join(ACME_DIR).join(format!("account-{slug}.json"))
    }

    fn save_account(&self, json: &[u8]) -> io::Result<()> {
        let path = self.account_path();
        let dir = path.parent().expect("the account file is inside the acme directory");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let temporary = path.with_extension("json.new");
        write_private(&temporary, json)?;
        fs::rename(&temporary, &path)
    }
}

/// The challenges of one order that are being answered; withdrawn on drop.
struct Published<'a> {
    client: &'a AcmeClient,
    tokens: Vec<String>,
    domains: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.client.http01.remove(token);
        }
        for domain in &self.domains {
            self.client.store.remove_tls_alpn_challenge(domain);
        }
    }
}

/// The CA's reasons for an invalid order: each failed challenge's problem, by domain (such
/// as "connection refused" or "DNS problem: NXDOMAIN"), which is what an operator needs.
async fn why_invalid(order: &mut Order, error: Option<instant_acme::Error>) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else { continue };
        let domain = state.identifier().to_string();
        for challenge in &state.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(format!("{domain}: {}", problem_detail(problem)));
            }
        }
    }
    if reasons.is_empty() {
        match error {
            Some(error) => reasons.push(problem_text(&error)),
            None => reasons.push("the order became invalid and the CA gave no reason".into()),
        }
    }
    reasons.join("; ")
}

fn problem_text(error: &instant_acme::Error) -> String {
    match error {
        instant_acme::Error::Api(problem) => problem_detail(problem),
        other => other.to_string(),
    }
}

fn problem_detail(problem: &Problem) -> String {
    let mut text = problem.detail.clone().unwrap_or_else(|| "no detail".into());
    if let Some(kind) = problem.r#type.as_deref() {
        let kind = kind.strip_prefix("urn:ietf:params:acme:error:").unwrap_or(kind);
        text.push_str(&format!(" ({kind})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_root_ca_values_map_to_directories() {
        assert_eq!(directory_url("").unwrap(), LETS_ENCRYPT);
        assert_eq!(directory_url("letsencrypt.org").unwrap(), LETS_ENCRYPT);
        assert_eq!(
            directory_url("LetsEncrypt.org_test").unwrap(),
            "https://acme-staging-v02.api.letsencrypt.org/directory"
        );
        assert_eq!(directory_url("staging").unwrap(), directory_url("letsencrypt_test").unwrap());
        assert_eq!(directory_url("https://ca.example/dir").unwrap(), "https://ca.example/dir");
        let error = directory_url("letsencrypt.com").unwrap_err().to_string();
        assert!(error.starts_with("unknown ACME_ROOT_CA \"letsencrypt.com\""), "{error}");
    }

    #[test]
    fn public_cas_are_the_known_ones() {
        assert!(is_public_ca(LETS_ENCRYPT));
        assert!(is_public_ca(&directory_url("zerossl").unwrap()));
        assert!(is_public_ca(" https://acme-staging-v02.api.letsencrypt.org/directory/ "));
        assert!(!is_public_ca("https://127.0.0.1:14000/dir"));
        assert!(!is_public_ca("https://ca.internal/acme/directory"));
    }

    #[test]
    fn a_client_for_another_ca_keeps_a_private_trust_root_only_for_a_private_ca() {
        let dir = std::env::temp_dir().join(format!("berth-acme-for-{}", std::process::id()));
        let store = Arc::new(CertStore::open(&dir).unwrap());
        let config = AcmeConfig {
            directory_url: "https://ca.internal/dir".into(),
            contact_email: Some("ops@example.com".into()),
            trust_root_pem: Some(PathBuf::from("/etc/berth/ca.pem")),
        };
        let client = AcmeClient::new(config, store, Http01Tokens::new());
        let private = client.for_directory("https://other.internal/dir");
        assert_eq!(private.directory_url(), "https://other.internal/dir");
        assert_eq!(private.config.trust_root_pem, client.config.trust_root_pem);
        assert_eq!(private.config.contact_email.as_deref(), Some("ops@example.com"));
        assert!(Arc::ptr_eq(private.store(), client.store()));
        let public = client.for_directory(LETS_ENCRYPT);
        assert_eq!(public.config.trust_root_pem, None);
        assert_ne!(public.account_path(), private.account_path(), "one account per CA");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn challenge_methods_parse() {
        assert_eq!("HTTP-01".parse(), Ok(ChallengeMethod::Http01));
        assert_eq!("tls-alpn-01".parse(), Ok(ChallengeMethod::TlsAlpn01));
        assert!("dns-01".parse::<ChallengeMethod>().is_err());
        assert_eq!(ChallengeMethod::TlsAlpn01.to_string(), "tls-alpn-01");
    }

    #[test]
    fn tokens_are_answered_until_withdrawn() {
        let tokens = Http01Tokens::new();
        tokens.publish("abc", "abc.thumb");
        let shared = tokens.clone();
        assert_eq!(shared.key_authorization("abc").as_deref(), Some("abc.thumb"));
        tokens.remove("abc");
        assert_eq!(shared.key_authorization("abc"), None);
    }
}
