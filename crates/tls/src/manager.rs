//! The background task that keeps certificates present and fresh: it obtains the ones that
//! are missing, renews the ones that are due, and backs off (and says why) when a CA refuses.

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
pub fn spawn_manager<F>(
    client: Arc<AcmeClient>,
    domains_source: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ManagerHandle
where
    F: Fn() -> Vec<Vec<String>> + Send + Sync + 'static,
{
    spawn_manager_with(client, ManagerConfig::default(), domains_source, shutdown)
}

/// Starts the task that keeps a certificate for each set of names `domains_source` returns
/// (one certificate per set, stored under its first name: typically an app's domains).
///
/// On each round it asks `domains_source` afresh, skips sets covered by a certificate that
/// is not due, and obtains the rest one after another into the client's store. A failure is
/// logged with the CA's reason and retried after a backoff. Certificates users brought are
/// never replaced; a warning says when one is about to expire. The task ends when
/// `shutdown` resolves, abandoning an order under way (its challenges are withdrawn).
pub fn spawn_manager_with<F>(
    client: Arc<AcmeClient>,
    config: ManagerConfig,
    domains_source: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ManagerHandle
where
    F: Fn() -> Vec<Vec<String>> + Send + Sync + 'static,
{
    let wake = Arc::new(Notify::new());
    let manager = Manager {
        client,
        config,
        wake: Arc::clone(&wake),
        failures: HashMap::new(),
        warned: HashSet::new(),
    };
    let task = tokio::spawn(manager.run(domains_source, shutdown));
    ManagerHandle { wake, task }
}

struct Manager {
    client: Arc<AcmeClient>,
    config: ManagerConfig,
    wake: Arc<Notify>,
    /// Sets that failed: how often in a row, and when to try again.
    failures: HashMap<Vec<String>, (u32, Instant)>,
    /// Sets whose expiring user certificate was already warned about.
    warned: HashSet<Vec<String>>,
}

impl Manager {
    async fn run<F>(mut self, domains_source: F, shutdown: impl Future<Output = ()> + Send)
    where
        F: Fn() -> Vec<Vec<String>>,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let mut next_round = Instant::now() + self.config.check_interval;
            let wanted = normalize_sets(domains_source());
            for domains in &wanted {
                let Some(retry_at) = self.needs_work(domains) else { continue };
                if retry_at > Instant::now() {
                    next_round = next_round.min(retry_at);
                    continue;
                }
                match self.client.store().covering_all(domains) {
                    Some(info) => tracing::info!(
                        names = %domains.join(","),
                        method = %self.config.method,
                        "renewing the certificate, which expires on {}",
                        info.not_after_text()
                    ),
                    None => tracing::info!(
                        names = %domains.join(","),
                        method = %self.config.method,
                        "obtaining a certificate"
                    ),
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    result = self.client.obtain(domains, self.config.method) => {
                        if let Some(retry_at) = self.record(domains, result) {
                            next_round = next_round.min(retry_at);
                        }
                    }
                }
            }
            // Forget sets nobody wants any more, so a domain that comes back starts afresh.
            self.failures.retain(|domains, _| wanted.contains(domains));
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(next_round) => {}
            }
        }
    }

    /// `None` if the set is fine as it is; else when it may next be tried.
    fn needs_work(&mut self, domains: &[String]) -> Option<Instant> {
        let now = SystemTime::now();
        if let Some(info) = self.client.store().covering_all(domains) {
            if !info.expires_within(self.config.renew_within, now) {
                self.failures.remove(domains);
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
        Some(self.failures.get(domains).map_or_else(Instant::now, |(_, retry_at)| *retry_at))
    }

    fn record(
        &mut self,
        domains: &[String],
        result: Result<CertInfo, crate::AcmeError>,
    ) -> Option<Instant> {
        let names = domains.join(",");
        match result {
            Ok(info) => {
                self.failures.remove(domains);
                tracing::info!(
                    names = %names,
                    issuer = %info.issuer,
                    "certificate obtained; valid until {}",
                    info.not_after_text()
                );
                None
            }
            Err(error) => {
                let failures = self.failures.get(domains).map_or(0, |(n, _)| *n) + 1;
                let delay = backoff(&self.config, failures);
                let retry_at = Instant::now() + delay;
                self.failures.insert(domains.to_vec(), (failures, retry_at));
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

/// Valid, lower-case, duplicate-free sets; invalid names are logged and left out.
fn normalize_sets(sets: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let mut normalized: Vec<Vec<String>> = Vec::new();
    for set in sets {
        let mut names: Vec<String> = Vec::new();
        for name in set {
            match validate_domain(&name) {
                Ok(name) if !names.contains(&name) => names.push(name),
                Ok(_) => {}
                Err(error) => tracing::warn!("no certificate for {name:?}: {error}"),
            }
        }
        if !names.is_empty() && !normalized.contains(&names) {
            normalized.push(names);
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
    fn sets_are_normalized() {
        let sets = vec![
            vec!["A.example.com".into(), "a.example.com".into(), "bad name".into()],
            vec!["a.example.com".into()],
            vec![],
        ];
        assert_eq!(normalize_sets(sets), [vec!["a.example.com".to_string()]]);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(30)), "30 s");
        assert_eq!(human(Duration::from_secs(300)), "5 min");
        assert_eq!(human(Duration::from_secs(7200)), "2 h");
    }
}
