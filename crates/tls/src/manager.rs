//! The background task that keeps certificates present and fresh: it obtains the ones that
//! are missing, renews the ones that are due, and backs off (and says why) when a CA refuses.
//! Each certificate may come from a CA of its own (an app's `ACME_ROOT_CA`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::acme::{AcmeClient, ChallengeMethod};
use crate::certificate::{CertInfo, CertOrigin, validate_domain};
use crate::store::CertStore;

/// Let's Encrypt's advice: renew when a third of a 90-day certificate's life is left.
pub const DEFAULT_RENEW_WITHIN: Duration = Duration::from_secs(30 * 24 * 3600);

/// The certificates Berth obtained itself that expire within `within` (or have expired),
/// soonest first. Certificates users brought are never renewed, so they are not listed.
pub fn renew_due(store: &CertStore, within: Duration) -> Vec<CertInfo> {
    let now = SystemTime::now();
    let mut due: Vec<CertInfo> = store
        .info()
        .into_iter()
        .filter(|info| info.origin == CertOrigin::Acme && info.expires_within(within, now))
        .collect();
    due.sort_by_key(|info| info.not_after);
    due
}

/// How the manager works; the defaults suit Let's Encrypt's rate limits.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub method: ChallengeMethod,
    /// Renew this long before expiry.
    pub renew_within: Duration,
    /// How often to look again when nothing is pending (certificates age while nothing
    /// happens; the daemon calls [`ManagerHandle::check_now`] when domains change).
    pub check_interval: Duration,
    /// The wait after a first failure, doubled after each further one up to `max_retry`.
    /// Five minutes keeps a broken setup well under Let's Encrypt's five failed validations
    /// per name and hour.
    pub first_retry: Duration,
    pub max_retry: Duration,
}

impl Default for ManagerConfig {
    fn default() -> ManagerConfig {
        ManagerConfig {
            method: ChallengeMethod::Http01,
            renew_within: DEFAULT_RENEW_WITHIN,
            check_interval: Duration::from_secs(12 * 3600),
            first_retry: Duration::from_secs(5 * 60),
            max_retry: Duration::from_secs(12 * 3600),
        }
    }
}

/// One certificate the manager keeps: the names it covers (stored under the first), and the
/// CA to ask for it when not the manager's own client's (an app's `ACME_ROOT_CA`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertRequest {
    pub names: Vec<String>,
    /// A directory URL; `None` for the client the manager was started with.
    pub directory_url: Option<String>,
}

impl From<Vec<String>> for CertRequest {
    fn from(names: Vec<String>) -> CertRequest {
        CertRequest { names, directory_url: None }
    }
}

/// The running manager: wake it after changing domains, await it after shutdown.
#[derive(Debug)]
pub struct ManagerHandle {
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl ManagerHandle {
    /// Makes the manager look at the domains now (after a deploy or a domain change), rather
    /// than at its next check; domains in backoff still wait for their retry time.
    pub fn check_now(&self) {
        self.wake.notify_one();
    }

    /// Waits for the task to end, which it does soon after the shutdown signal.
    pub async fn join(self) {
        if let Err(error) = self.task.await {
            tracing::warn!("the certificate manager failed: {error}");
        }
    }
}

/// [`spawn_manager_with`] with the default configuration (HTTP-01, renewal 30 days before
/// expiry).
pub fn spawn_manager<F, R>(
    client: Arc<AcmeClient>,
    domains_source: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ManagerHandle
where
    F: Fn() -> Vec<R> + Send + Sync + 'static,
    R: Into<CertRequest>,
{
    spawn_manager_with(client, ManagerConfig::default(), domains_source, shutdown)
}

/// Starts the task that keeps a certificate for each request `domains_source` returns (a set
/// of names, typically an app's, stored under its first name; plain `Vec<String>` sets are
/// requests to `client`'s CA).
///
/// On each round it asks `domains_source` afresh, skips sets covered by a certificate that
/// is not due, and obtains the rest one after another into the client's store, each from
/// the request's CA (a client per CA, sharing `client`'s store, tokens and contact). A
/// failure is logged with the CA's reason and retried after a backoff. Certificates users
/// brought are never replaced; a warning says when one is about to expire. The task ends
/// when `shutdown` resolves, abandoning an order under way (its challenges are withdrawn).
pub fn spawn_manager_with<F, R>(
    client: Arc<AcmeClient>,
    config: ManagerConfig,
    domains_source: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ManagerHandle
where
    F: Fn() -> Vec<R> + Send + Sync + 'static,
    R: Into<CertRequest>,
{
    let wake = Arc::new(Notify::new());
    let manager = Manager {
        client,
        other_cas: HashMap::new(),
        config,
        wake: Arc::clone(&wake),
        failures: HashMap::new(),
        warned: HashSet::new(),
    };
    let source = move || domains_source().into_iter().map(Into::into).collect();
    let task = tokio::spawn(manager.run(source, shutdown));
    ManagerHandle { wake, task }
}

struct Manager {
    client: Arc<AcmeClient>,
    /// Clients for the other CAs requests named, by directory URL, made on first use.
    other_cas: HashMap<String, Arc<AcmeClient>>,
    config: ManagerConfig,
    wake: Arc<Notify>,
    /// Requests that failed: how often in a row, and when to try again.
    failures: HashMap<CertRequest, (u32, Instant)>,
    /// Sets whose expiring user certificate was already warned about.
    warned: HashSet<Vec<String>>,
}

impl Manager {
    async fn run<F>(mut self, domains_source: F, shutdown: impl Future<Output = ()> + Send)
    where
        F: Fn() -> Vec<CertRequest>,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let mut next_round = Instant::now() + self.config.check_interval;
            let wanted = normalize_requests(domains_source());
            for request in &wanted {
                let Some(retry_at) = self.needs_work(request) else { continue };
                if retry_at > Instant::now() {
                    next_round = next_round.min(retry_at);
                    continue;
                }
                let client = self.client_for(request);
                let domains = &request.names;
                match self.client.store().covering_all(domains) {
                    Some(info) => tracing::info!(
                        names = %domains.join(","),
                        method = %self.config.method,
                        ca = %client.directory_url(),
                        "renewing the certificate, which expires on {}",
                        info.not_after_text()
                    ),
                    None => tracing::info!(
                        names = %domains.join(","),
                        method = %self.config.method,
                        ca = %client.directory_url(),
                        "obtaining a certificate"
                    ),
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    result = client.obtain(domains, self.config.method) => {
                        if let Some(retry_at) = self.record(request, result) {
                            next_round = next_round.min(retry_at);
                        }
                    }
                }
            }
            // Forget requests nobody makes any more, so one that comes back starts afresh.
            self.failures.retain(|request, _| wanted.contains(request));
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(next_round) => {}
            }
        }
    }

    /// The client that asks the request's CA.
    fn client_for(&mut self, request: &CertRequest) -> Arc<AcmeClient> {
        match &request.directory_url {
            Some(url) if url != self.client.directory_url() => Arc::clone(
                self.other_cas
                    .entry(url.clone())
                    .or_insert_with(|| Arc::new(self.client.for_directory(url))),
            ),
            _ => Arc::clone(&self.client),
        }
    }

    /// `None` if the set is fine as it is; else when it may next be tried.
    fn needs_work(&mut self, request: &CertRequest) -> Option<Instant> {
        let domains = &request.names;
        let now = SystemTime::now();
        if let Some(info) = self.client.store().covering_all(domains) {
            if !info.expires_within(self.config.renew_within, now) {
                self.failures.remove(request);
                self.warned.remove(domains);
                return None;
            }
            if info.origin == CertOrigin::User {
                if self.warned.insert(domains.to_vec()) {
                    tracing::warn!(
                        names = %domains.join(","),
                        "the certificate added with certs:add expires on {}; Berth does not \
                         renew certificates it did not obtain, so add a new one",
                        info.not_after_text()
                    );
                }
                return None;
            }
        }
        Some(self.failures.get(request).map_or_else(Instant::now, |(_, retry_at)| *retry_at))
    }

    fn record(
        &mut self,
        request: &CertRequest,
        result: Result<CertInfo, crate::AcmeError>,
    ) -> Option<Instant> {
        let names = request.names.join(",");
        match result {
            Ok(info) => {
                self.failures.remove(request);
                tracing::info!(
                    names = %names,
                    issuer = %info.issuer,
                    "certificate obtained; valid until {}",
                    info.not_after_text()
                );
                None
            }
            Err(error) => {
                let failures = self.failures.get(request).map_or(0, |(n, _)| *n) + 1;
                let delay = backoff(&self.config, failures);
                let retry_at = Instant::now() + delay;
                self.failures.insert(request.clone(), (failures, retry_at));
                tracing::warn!(
                    names = %names,
                    failures,
                    "cannot obtain a certificate: {error}; trying again in {}",
                    human(delay)
                );
                Some(retry_at)
            }
        }
    }
}

fn backoff(config: &ManagerConfig, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    config.first_retry.saturating_mul(1 << doublings).min(config.max_retry)
}

/// Requests with valid, lower-case, duplicate-free names (invalid names are logged and left
/// out), one per set of names: the first request for a set wins.
fn normalize_requests(requests: Vec<CertRequest>) -> Vec<CertRequest> {
    let mut normalized: Vec<CertRequest> = Vec::new();
    for request in requests {
        let mut names: Vec<String> = Vec::new();
        for name in request.names {
            match validate_domain(&name) {
                Ok(name) if !names.contains(&name) => names.push(name),
                Ok(_) => {}
                Err(error) => tracing::warn!("no certificate for {name:?}: {error}"),
            }
        }
        if !names.is_empty() && !normalized.iter().any(|known| known.names == names) {
            normalized.push(CertRequest { names, directory_url: request.directory_url });
        }
    }
    normalized
}

fn human(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        _ => format!("{} h", seconds / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = ManagerConfig::default();
        let minutes: Vec<u64> = (1..=10).map(|n| backoff(&config, n).as_secs() / 60).collect();
        assert_eq!(minutes, [5, 10, 20, 40, 80, 160, 320, 640, 720, 720]);
        assert_eq!(backoff(&config, u32::MAX), config.max_retry);
    }

    #[test]
    fn requests_are_normalized() {
        let elsewhere = Some("https://ca.example/dir".to_string());
        let requests = vec![
            CertRequest {
                names: vec!["A.example.com".into(), "a.example.com".into(), "bad name".into()],
                directory_url: elsewhere.clone(),
            },
            vec!["a.example.com".to_string()].into(),
            vec![].into(),
            vec!["b.example.com".to_string()].into(),
        ];
        assert_eq!(
            normalize_requests(requests),
            [
                CertRequest { names: vec!["a.example.com".into()], directory_url: elsewhere },
                CertRequest { names: vec!["b.example.com".into()], directory_url: None },
            ]
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(30)), "30 s");
        assert_eq!(human(Duration::from_secs(300)), "5 min");
        assert_eq!(human(Duration::from_secs(7200)), "2 h");
    }
}
