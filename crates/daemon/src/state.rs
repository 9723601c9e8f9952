//! The daemon's state and the operations every interface shares: start, stop, restart an app's
//! processes, and rebuild the router's table after each change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_api::InstanceInfo;
use berth_build::{AppFiles, BuildOutcome, read_app_files};
use berth_procfile::ProcessKind;
use berth_router::{Backend, RouteTable, SharedRoutes, StaticMount, parse_static_paths};
use berth_store::Store;
use berth_supervise::{Instance, RunAs};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::layout::Layout;

/// What the daemon was started with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub layout: Layout,
    /// Base domain: apps are served at `APP.<domain>`.
    pub domain: String,
    /// The router's bound address (known once it listens).
    pub http_addr: SocketAddr,
    /// The router's HTTPS address, when it serves HTTPS.
    pub https_addr: Option<SocketAddr>,
    /// The user that owns the git repos and may use the API socket (the `berth` user of a
    /// root install), when it is not the daemon's own user.
    pub git_owner: Option<RunAs>,
    /// Whether each app runs as a Unix user of its own (the daemon runs as root).
    pub app_users: bool,
    /// Resource limits for app processes (`BERTH_MEMORY_LIMIT`…).
    pub cgroups: Arc<berth_supervise::Cgroups>,
    /// The berth binary, for git hooks.
    pub exe: std::path::PathBuf,
    /// The API's host name (`--api-host`), which needs a certificate like an app's names.
    pub api_host: Option<String>,
}

/// The processes of one app that the daemon runs now.
#[derive(Debug, Default)]
pub struct AppRuntime {
    /// The release the instances run.
    pub release: i64,
    pub instances: Vec<Instance>,
    pub hosts: Vec<String>,
    /// Directories the router serves itself (`static:` lines, `NGINX_STATIC_PATHS`).
    pub statics: Vec<StaticMount>,
    /// The file served for every path nothing else matched (`NGINX_CATCH_ALL`).
    pub catch_all: Option<std::path::PathBuf>,
    /// The schedules of the release's cron lines.
    pub crons: Vec<berth_supervise::cron::CronHandle>,
    /// How the router treats the app (its knobs).
    pub route: RouteOptions,
}

/// The settings an app's knobs give the router and its certificates (piku's NGINX_* and
/// ACME_ROOT_CA, and Berth's own).
#[derive(Debug, Clone, Default)]
pub struct RouteOptions {
    pub https_only: bool,
    pub path_routing: bool,
    /// Paths through `.git` are served from the static mounts (NGINX_ALLOW_GIT_FOLDERS).
    pub git_folders: bool,
    pub limits: berth_router::Limits,
    pub cache: Option<berth_router::CacheConfig>,
    /// Who may reach the app by address (NGINX_CLOUDFLARE_ACL, BERTH_ALLOW_IPS).
    pub access: berth_router::AccessRules,
    /// The ACME directory of the CA the app's certificates come from (ACME_ROOT_CA), when
    /// not the daemon's.
    pub acme_directory: Option<String>,
}

impl RouteOptions {
    /// Reads NGINX_HTTPS_ONLY, BERTH_PATH_ROUTING, NGINX_ALLOW_GIT_FOLDERS, BERTH_MAX_BODY_SIZE,
    /// BERTH_RESPONSE_TIMEOUT, NGINX_CACHE_PREFIXES / NGINX_CACHE_TIME / NGINX_CACHE_SIZE,
    /// NGINX_CLOUDFLARE_ACL, BERTH_ALLOW_IPS and ACME_ROOT_CA.
    pub fn from_env(env: &[(String, String)]) -> Result<RouteOptions, String> {
        let knob = |key: &str| env_value(env, key);
        let flag = |key: &str| {
            knob(key).is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            })
        };
        let mut limits = berth_router::Limits::default();
        if let Some(size) =
            knob("BERTH_MAX_BODY_SIZE").or_else(|| knob("NGINX_CLIENT_MAX_BODY_SIZE"))
        {
            limits.max_body_bytes = berth_supervise::logs::parse_size(&size).ok_or_else(|| {
                format!("BERTH_MAX_BODY_SIZE={size:?} is not a size (for example 20M)")
            })?;
        }
        if let Some(seconds) = knob("BERTH_RESPONSE_TIMEOUT") {
            let seconds: u64 = seconds.parse().map_err(|_| {
                format!("BERTH_RESPONSE_TIMEOUT={seconds:?} is not a number of seconds")
            })?;
            limits.response_timeout = std::time::Duration::from_secs(seconds.max(1));
        }
        let cache = match knob("NGINX_CACHE_PREFIXES") {
            None => None,
            Some(prefixes) => {
                let mut config = berth_router::CacheConfig {
                    prefixes: prefixes
                        .split([',', ' '])
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    ..berth_router::CacheConfig::default()
                };
                if let Some(time) = knob("NGINX_CACHE_TIME") {
                    let seconds: u64 = time.parse().map_err(|_| {
                        format!("NGINX_CACHE_TIME={time:?} is not a number of seconds")
                    })?;
                    config.default_ttl = std::time::Duration::from_secs(seconds);
                }
                if let Some(size) = knob("NGINX_CACHE_SIZE") {
                    // piku counts this in gigabytes; a size with a unit is taken as written.
                    let bytes = match size.parse::<u64>() {
                        Ok(gigabytes) => gigabytes << 30,
                        Err(_) => berth_supervise::logs::parse_size(&size).ok_or_else(|| {
                            format!(
                                "NGINX_CACHE_SIZE={size:?} is not a size (for example 1 or 256M)"
                            )
                        })?,
                    };
                    config.max_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
                }
                Some(config)
            }
        };
        let allow = knob("BERTH_ALLOW_IPS")
            .map(|list| {
                berth_router::parse_ip_list(&list).map_err(|e| format!("BERTH_ALLOW_IPS: {e}"))
            })
            .transpose()?;
        let acme_directory = knob("ACME_ROOT_CA")
            .map(|value| berth_tls::directory_url(&value).map_err(|e| e.to_string()))
            .transpose()?;
        Ok(RouteOptions {
            https_only: flag("NGINX_HTTPS_ONLY"),
            path_routing: flag("BERTH_PATH_ROUTING"),
            git_folders: flag("NGINX_ALLOW_GIT_FOLDERS"),
            limits,
            cache,
            access: berth_router::AccessRules {
                cloudflare_only: flag("NGINX_CLOUDFLARE_ACL"),
                allow,
            },
            acme_directory,
        })
    }
}

impl AppRuntime {
    /// Stops the schedules, then the processes (all at once), each once the router's
    /// requests to it are done.
    pub async fn stop(self, in_flight: &Arc<berth_router::InFlight>) {
        for handle in self.crons {
            handle.stop();
        }
        let stops: Vec<_> = self
            .instances
            .into_iter()
            .map(|i| tokio::spawn(crate::processes::retire_owned(in_flight.clone(), i)))
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
    }
}

/// What a release's build gave its processes, as kept in the store.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StoredBuild {
    pub env: Vec<(String, String)>,
    pub path_prefix: Vec<String>,
}

/// An app port's server (`ports:add`).
#[derive(Debug)]
struct PortServer {
    /// Stops it.
    stop: tokio::sync::watch::Sender<bool>,
    /// Its listening socket (a duplicate), for the socket keeper.
    socket: std::os::fd::OwnedFd,
}

/// The sockets the keeper is given ([`Daemon::keep_sockets`]), besides the app ports'.
#[derive(Debug, Default)]
struct Sockets {
    /// Duplicates of the router's listening sockets.
    router: Vec<std::os::fd::OwnedFd>,
    /// App ports' listeners an earlier daemon's keeper held, until opened again.
    inherited: Vec<std::net::TcpListener>,
}

#[derive(Debug)]
pub struct Daemon {
    pub settings: Settings,
    store: Mutex<Store>,
    runtimes: Mutex<HashMap<String, AppRuntime>>,
    /// Releases running beside the current one for a preview, at `vN.APP.<domain>`.
    previews: Mutex<HashMap<(String, i64), AppRuntime>>,
    pub routes: SharedRoutes,
    /// Requests under way to each instance, for draining before a stop.
    pub in_flight: Arc<berth_router::InFlight>,
    /// One lock per app so that deploys and restarts of an app happen one at a time.
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The Unix user of each app, once known.
    app_users: Mutex<HashMap<String, RunAs>>,
    /// The listeners of app ports (`ports:add`), by port.
    port_servers: Mutex<HashMap<u16, PortServer>>,
    /// What the socket keeper is given to hold for the next daemon.
    sockets: Mutex<Sockets>,
    /// Each app's router access log, kept across route tables.
    access_logs: Mutex<HashMap<String, berth_router::AccessLog>>,
    /// The basic-auth users of each app that has some, as the router checks them: kept
    /// across route tables (with the credentials they verified) until the users change.
    pub(crate) basic_auth: Mutex<HashMap<String, Arc<berth_router::BasicAuth>>>,
    /// The certificates the router serves.
    certs: std::sync::OnceLock<Arc<berth_tls::CertStore>>,
    /// The ACME manager, when certificates come from a CA.
    acme: std::sync::OnceLock<berth_tls::ManagerHandle>,
}

/// Paasmaker's `PM_METADATA`: the application, its release, workspace and node, as JSON.
fn pm_metadata(app: &str, release: i64) -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    serde_json::json!({
        "application": { "name": app, "version": release, "release": release, "workspace": "default" },
        "node": { "hostname": hostname.trim() },
        "workspace": { "name": "default" },
    })
    .to_string()
}

/// The value a key has in a layered environment (the last one wins), trimmed; `None` when
/// absent or empty.
pub(crate) fn env_value(env: &[(String, String)], key: &str) -> Option<String> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether a CA could sign `name`: not a wildcard (DNS-01 only) nor an address, and for a
/// public CA, a name in public DNS (not `localhost`, `.test` and the like).
fn signable(name: &str, public_ca: bool) -> bool {
    const RESERVED: &[&str] =
        &["localhost", "test", "invalid", "example", "local", "internal", "lan", "home.arpa"];
    !name.starts_with("*.")
        && name.parse::<std::net::IpAddr>().is_err()
        && !name.starts_with('[')
        && (!public_ca
            || (name.contains('.')
                && !RESERVED.iter().any(|r| name == *r || name.ends_with(&format!(".{r}")))))
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Daemon {
    pub fn new(settings: Settings, store: Store, routes: SharedRoutes) -> Daemon {
        Daemon {
            settings,
            store: Mutex::new(store),
            runtimes: Mutex::new(HashMap::new()),
            previews: Mutex::new(HashMap::new()),
            routes,
            in_flight: Arc::new(berth_router::InFlight::new()),
            app_locks: Mutex::new(HashMap::new()),
            app_users: Mutex::new(HashMap::new()),
            certs: std::sync::OnceLock::new(),
            access_logs: Mutex::new(HashMap::new()),
            basic_auth: Mutex::new(HashMap::new()),
            port_servers: Mutex::new(HashMap::new()),
            sockets: Mutex::new(Sockets::default()),
            acme: std::sync::OnceLock::new(),
        }
    }

    pub fn https_port(&self) -> Option<u16> {
        self.settings.https_addr.map(|a| a.port())
    }

    pub fn set_certs(&self, certs: Arc<berth_tls::CertStore>) {
        let _ = self.certs.set(certs);
    }

    pub fn certs(&self) -> Option<&Arc<berth_tls::CertStore>> {
        self.certs.get()
    }

    pub fn set_acme(&self, manager: berth_tls::ManagerHandle) {
        let _ = self.acme.set(manager);
    }

    /// Asks the ACME manager to look for names without a certificate now (after a deploy or
    /// a domain change) instead of at its next round.
    pub fn check_certificates(&self) {
        if let Some(manager) = self.acme.get() {
            manager.check_now();
        }
    }

    /// The certificates the daemon wants: one per running app for the names it answers at,
    /// from the CA its ACME_ROOT_CA names (else the daemon's), and one for the API host.
    /// Wildcards need DNS-01, which Berth does not do (bring one with `certs:add`); for a
    /// public CA, names no public CA will sign (`localhost`, `.test`, addresses...) are left
    /// out. `public_ca` says whether the daemon's own CA is a public one.
    pub fn certificate_requests(&self, public_ca: bool) -> Vec<berth_tls::CertRequest> {
        let mut requests: Vec<berth_tls::CertRequest> = self
            .runtimes()
            .values()
            .filter(|r| !r.instances.is_empty() || !r.statics.is_empty())
            .filter_map(|r| {
                let directory = r.route.acme_directory.clone();
                let public = directory.as_deref().map_or(public_ca, berth_tls::is_public_ca);
                let names: Vec<String> =
                    r.hosts.iter().filter(|h| signable(h, public)).cloned().collect();
                (!names.is_empty())
                    .then_some(berth_tls::CertRequest { names, directory_url: directory })
            })
            .collect();
        if let Some(host) = &self.settings.api_host
            && signable(host, public_ca)
        {
            requests.push(vec![host.clone()].into());
        }
        requests
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn runtimes(&self) -> MutexGuard<'_, HashMap<String, AppRuntime>> {
        self.runtimes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn app_lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.app_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(app.to_owned()).or_default().clone()
    }

    /// The address people use to reach the app.
    pub fn url(&self, app: &str) -> String {
        let port = self.settings.http_addr.port();
        if port == 80 {
            format!("http://{app}.{}/", self.settings.domain)
        } else {
            format!("http://{app}.{}:{port}/", self.settings.domain)
        }
    }

    /// The environment a running instance of `process_type` was started with.
    pub fn instance_env(&self, app: &str, process_type: &str) -> Option<Vec<(String, String)>> {
        let runtimes = self.runtimes();
        let runtime = runtimes.get(app)?;
        let instance = runtime.instances.iter().find(|i| i.spec().process_type == process_type)?;
        Some(instance.spec().env.clone())
    }

    /// The cron lines scheduled for the app now.
    pub fn cron_infos(&self, app: &str) -> Vec<berth_api::CronInfo> {
        let runtimes = self.runtimes();
        let Some(runtime) = runtimes.get(app) else { return Vec::new() };
        runtime
            .crons
            .iter()
            .map(|handle| {
                let (name, schedule, command) = handle.describe();
                berth_api::CronInfo {
                    name: name.into(),
                    schedule: schedule.into(),
                    command: command.into(),
                }
            })
            .collect()
    }

    pub fn instance_infos(&self, app: &str) -> (usize, Vec<InstanceInfo>, Vec<String>) {
        let runtimes = self.runtimes();
        let Some(runtime) = runtimes.get(app) else { return (0, Vec::new(), Vec::new()) };
        let now = SystemTime::now();
        let infos = runtime
            .instances
            .iter()
            .map(|instance| {
                let status = instance.status();
                let spec = instance.spec();
                InstanceInfo {
                    process_type: spec.process_type.clone(),
                    index: spec.index,
                    pid: status.pid,
                    port: spec.port,
                    state: status.state.as_str().to_owned(),
                    uptime_secs: status
                        .started_at
                        .filter(|_| status.pid.is_some())
                        .and_then(|t| now.duration_since(t).ok())
                        .map(|d| d.as_secs()),
                    restarts: status.restarts,
                    last_exit: status.last_exit,
                    memory_bytes: instance.memory_bytes(),
                }
            })
            .collect();
        (runtime.instances.len(), infos, runtime.hosts.clone())
    }

    /// The environment of the app's processes, by layer: the daemon's own environment, then
    /// Berth's variables, then the repo's ENV file, then `config:set` values. Per-process
    /// values (PORT) are added on top when each process starts.
    fn base_env(&self, app: &str, release: i64) -> Vec<(String, String)> {
        let layout = &self.settings.layout;
        let mut env: Vec<(String, String)> =
            std::env::vars().filter(|(k, _)| !k.starts_with("BERTH_")).collect();
        // Processes that run as the app's user get that user's home, so tools that keep
        // caches there (pip, npm, cargo) write where they may.
        if let Ok(Some(run_as)) = self.app_user(app)
            && let Ok(Some(user)) =
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(run_as.uid))
        {
            env.push(("HOME".to_owned(), user.dir.display().to_string()));
            env.push(("USER".to_owned(), user.name.clone()));
            env.push(("LOGNAME".to_owned(), user.name));
        }
        env.extend([
            ("APP".to_owned(), app.to_owned()),
            ("BERTH_APP".to_owned(), app.to_owned()),
            ("BERTH_RELEASE".to_owned(), release.to_string()),
            ("DATA_ROOT".to_owned(), layout.data(app).display().to_string()),
            ("LOG_ROOT".to_owned(), layout.logs(app).display().to_string()),
            ("BIND_ADDRESS".to_owned(), "127.0.0.1".to_owned()),
            ("PM_METADATA".to_owned(), pm_metadata(app, release)),
        ]);
        env
    }

    /// Reads the release's files and the app's config into the environment its processes get,
    /// on top of what its build gave them.
    pub fn release_env(
        &self,
        app: &str,
        release: i64,
        build: &BuildOutcome,
    ) -> Result<(AppFiles, Vec<(String, String)>), String> {
        let mut base = self.base_env(app, release);
        base.extend(build.process_env.iter().cloned());
        if !build.path_prefix.is_empty() {
            let path = env_value(&base, "PATH");
            let mut parts = build.path_prefix.clone();
            parts.extend(path);
            base.push(("PATH".to_owned(), parts.join(":")));
        }
        let lookup = |key: &str| base.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let dir = self.tree(app, release);
        let files = read_app_files(&dir, &lookup)?;
        let config = self.release_config(app, release)?;
        let mut env = base.clone();
        env.extend(files.env.iter().cloned());
        env.extend(config);
        Ok((files, env))
    }

    /// The tree a release runs: its own, or the one of the build it reuses (a config change).
    pub fn tree(&self, app: &str, release: i64) -> std::path::PathBuf {
        let record = self.store().release(app, release).ok().flatten();
        self.settings.layout.release(app, record.map_or(release, |r| r.build_of))
    }

    /// The config vars a release runs with: those it was made with (a rollback brings them
    /// back), or the app's current ones for a release made before releases kept them.
    pub fn release_config(&self, app: &str, release: i64) -> Result<Vec<(String, String)>, String> {
        let record = self.store().release(app, release).map_err(|e| e.to_string())?;
        match record.map(|r| r.config).filter(|c| !c.is_empty()) {
            Some(json) => {
                let vars: std::collections::BTreeMap<String, String> = serde_json::from_str(&json)
                    .map_err(|e| format!("release {release} has a damaged config: {e}"))?;
                Ok(vars.into_iter().collect())
            }
            None => self.store().config(app).map_err(|e| e.to_string()),
        }
    }

    /// The app's current config vars as a release keeps them.
    pub fn config_snapshot(&self, app: &str) -> Result<String, String> {
        let vars: std::collections::BTreeMap<String, String> =
            self.store().config(app).map_err(|e| e.to_string())?.into_iter().collect();
        serde_json::to_string(&vars).map_err(|e| e.to_string())
    }

    /// Keeps what the build gave the release's processes, for every later start.
    pub fn save_build(&self, app: &str, release: i64, build: &BuildOutcome) -> Result<(), String> {
        let stored =
            StoredBuild { env: build.process_env.clone(), path_prefix: build.path_prefix.clone() };
        let json = serde_json::to_string(&stored).map_err(|e| e.to_string())?;
        self.store().set_release_build_env(app, release, &json).map_err(|e| e.to_string())
    }

    pub fn stored_build(&self, app: &str, release: i64) -> BuildOutcome {
        let json = self
            .store()
            .release(app, release)
            .ok()
            .flatten()
            .map(|r| r.build_env)
            .unwrap_or_default();
        let stored: StoredBuild = serde_json::from_str(&json).unwrap_or_default();
        BuildOutcome {
            process_env: stored.env,
            path_prefix: stored.path_prefix,
            reused_dependencies: false,
        }
    }

    /// The directories the router serves for the release: `static: DIR` lines at `/`, then
    /// piku's `NGINX_STATIC_PATHS=/url:dir,...`, and `NGINX_CATCH_ALL=file`.
    pub(crate) fn static_routes(
        &self,
        app: &str,
        release: i64,
        files: &AppFiles,
        env: &[(String, String)],
    ) -> Result<(Vec<StaticMount>, Option<std::path::PathBuf>), String> {
        let dir = self.tree(app, release);
        let knob = |key: &str| env_value(env, key);
        let mut mounts: Vec<StaticMount> = files
            .procfile
            .entries
            .iter()
            .filter(|e| e.kind == ProcessKind::Static)
            .map(|e| StaticMount::new("/", dir.join(e.command.trim().trim_start_matches('/'))))
            .collect();
        if let Some(paths) = knob("NGINX_STATIC_PATHS") {
            mounts.extend(
                parse_static_paths(&paths, &dir).map_err(|e| format!("NGINX_STATIC_PATHS: {e}"))?,
            );
        }
        let catch_all = knob("NGINX_CATCH_ALL").map(|file| dir.join(file.trim_start_matches('/')));
        Ok((mounts, catch_all))
    }

    /// The names NGINX_SERVER_NAME gives the app (piku's knob), normalised; bad ones are an
    /// error naming them.
    pub(crate) fn env_hosts(env: &[(String, String)]) -> Result<Vec<String>, String> {
        let Some(names) = env_value(env, "NGINX_SERVER_NAME") else {
            return Ok(Vec::new());
        };
        names
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(|name| {
                berth_router::normalize_host_pattern(name).ok_or_else(|| {
                    format!("NGINX_SERVER_NAME: {name:?} is not a host name (like www.example.com or *.example.com)")
                })
            })
            .collect()
    }

    /// Every name the app answers at: `APP.<domain>`, NGINX_SERVER_NAME, `domains:add`. A name
    /// another app has is refused with that app's name.
    pub(crate) fn hosts(&self, app: &str, env: &[(String, String)]) -> Result<Vec<String>, String> {
        let mut hosts = vec![format!("{app}.{}", self.settings.domain)];
        let added = self.store().domains(app).map_err(|e| e.to_string())?;
        for host in Self::env_hosts(env)?.into_iter().chain(added) {
            if let Some(other) = self.host_owner(&host).filter(|other| other != app) {
                return Err(format!(
                    "{host} is already served by {other}; remove it there first (domains:remove {other} {host})"
                ));
            }
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        Ok(hosts)
    }

    /// The app that answers at `host` now, or that has it as a domain.
    pub(crate) fn host_owner(&self, host: &str) -> Option<String> {
        if let Ok(Some(owner)) = self.store().domain_owner(host) {
            return Some(owner);
        }
        let runtimes = self.runtimes();
        runtimes.iter().find(|(_, r)| r.hosts.iter().any(|h| h == host)).map(|(app, _)| app.clone())
    }

    /// Recomputes the app's names after a domain change and routes them, without a restart.
    pub(crate) fn refresh_hosts(&self, app: &str) -> Result<(), String> {
        let Some(release) = self.store().app(app).map_err(|e| e.to_string())?.current_release
        else {
            return Ok(());
        };
        let build = self.stored_build(app, release);
        let (_, env) = self.release_env(app, release, &build)?;
        let hosts = self.hosts(app, &env)?;
        let mut runtimes = self.runtimes();
        if let Some(runtime) = runtimes.get_mut(app) {
            runtime.hosts = hosts;
        }
        self.publish_routes(&runtimes);
        drop(runtimes);
        self.check_certificates();
        Ok(())
    }

    /// Creates the app's persistent data directory (`DATA_ROOT`), owned by the app's user.
    pub fn ensure_data_dir(&self, app: &str) -> Result<(), String> {
        let data = self.settings.layout.data(app);
        std::fs::create_dir_all(&data)
            .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        // A data directory kept from a destroyed app of the same name belongs to its old user.
        let meta =
            std::fs::metadata(&data).map_err(|e| format!("cannot read {}: {e}", data.display()))?;
        match self.app_user(app)? {
            Some(user) if user.uid != std::os::unix::fs::MetadataExt::uid(&meta) => {
                self.hand_over(&data, app)
            }
            _ => Ok(()),
        }
    }

    /// The Unix user the app's builds and processes run as: its own (created on first use)
    /// when the daemon runs as root, none (the daemon's user) otherwise.
    pub fn app_user(&self, app: &str) -> Result<Option<RunAs>, String> {
        if !self.settings.app_users {
            return Ok(None);
        }
        if let Some(user) = self.app_users.lock().unwrap_or_else(|e| e.into_inner()).get(app) {
            return Ok(Some(*user));
        }
        let home = self.settings.layout.home(app);
        if let Some(parent) = home.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let user = crate::users::ensure_app_user(app, &home)?;
        self.app_users.lock().unwrap_or_else(|e| e.into_inner()).insert(app.to_owned(), user);
        Ok(Some(user))
    }

    /// Gives a directory of the app (and everything in it) to the app's user, readable by that
    /// user alone, so that one app cannot read another's files.
    pub fn hand_over(&self, dir: &std::path::Path, app: &str) -> Result<(), String> {
        let Some(user) = self.app_user(app)? else { return Ok(()) };
        crate::ownership::chown_tree(dir, user)
            .map_err(|e| format!("cannot hand {} to the app's user: {e}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))
    }

    /// Forgets the app's Unix user and removes it (destroy).
    pub fn remove_app_user(&self, app: &str) -> Result<(), String> {
        self.app_users.lock().unwrap_or_else(|e| e.into_inner()).remove(app);
        if self.settings.app_users { crate::users::remove_app_user(app) } else { Ok(()) }
    }

    /// Forgets what the daemon remembers of an app under its old name (a rename): its access
    /// log, opened again where the logs went.
    pub(crate) fn renamed(&self, from: &str) {
        self.access_logs.lock().unwrap_or_else(|e| e.into_inner()).remove(from);
        berth_router::CacheRegistry::clear(from);
    }

    /// Stops every process of the app, its previews' too; its hosts answer 502 (not running)
    /// until it starts.
    pub async fn stop_app(&self, app: &str) {
        self.stop_previews_of(app).await;
        let old = {
            let mut runtimes = self.runtimes();
            let old = runtimes.get_mut(app).map(|runtime| {
                // A stopped app serves nothing, its static files included.
                runtime.statics.clear();
                runtime.catch_all = None;
                AppRuntime {
                    instances: std::mem::take(&mut runtime.instances),
                    crons: std::mem::take(&mut runtime.crons),
                    ..AppRuntime::default()
                }
            });
            self.publish_routes(&runtimes);
            old
        };
        if let Some(old) = old {
            old.stop(&self.in_flight).await;
        }
    }

    /// Stops the app's processes, its previews' too, and forgets its routes (destroy).
    pub async fn remove_app(&self, app: &str) {
        self.stop_previews_of(app).await;
        let old = {
            let mut runtimes = self.runtimes();
            let old = runtimes.remove(app);
            self.publish_routes(&runtimes);
            old
        };
        if let Some(old) = old {
            old.stop(&self.in_flight).await;
        }
    }

    /// Lets go of every app's and preview's processes without stopping them, for the next
    /// daemon to adopt (SIGTERM). Dropped instead, an instance tells its supervisor to stop,
    /// and a supervisor still running on another thread while the runtime shuts down would
    /// stop the process and delete its record: the next daemon would find nothing to adopt.
    pub fn leave_running(&self) {
        let runtimes: Vec<AppRuntime> = self.runtimes().drain().map(|(_, r)| r).collect();
        let previews: Vec<AppRuntime> = self.previews().drain().map(|(_, r)| r).collect();
        // The process exits next; its memory goes back then.
        std::mem::forget(runtimes);
        std::mem::forget(previews);
    }

    /// Stops every app and every preview (daemon shutdown).
    pub async fn stop_all(&self) {
        let previews: Vec<(String, i64)> = self.previews().keys().cloned().collect();
        for (app, n) in previews {
            let _ = self.stop_preview(&app, n).await;
        }
        let all: Vec<AppRuntime> = self.runtimes().drain().map(|(_, r)| r).collect();
        for runtime in all {
            runtime.stop(&self.in_flight).await;
        }
    }

    /// Hands the socket keeper the router's sockets (duplicates of them) and the app ports'
    /// listeners an earlier daemon's keeper held (`inherited`), which `open_app_port` takes
    /// back instead of binding anew; see [`Daemon::keep_sockets`].
    pub fn set_sockets(
        &self,
        router: Vec<std::os::fd::OwnedFd>,
        inherited: Vec<std::net::TcpListener>,
    ) {
        *self.sockets.lock().unwrap_or_else(|e| e.into_inner()) = Sockets { router, inherited };
    }

    /// Gives the socket keeper every listening socket the daemon has (the router's and the app
    /// ports'), in place of what it held: the app ports then also keep listening while the
    /// daemon restarts, and a removed port is let go of.
    fn keep_sockets(&self) {
        let sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        if sockets.router.is_empty() {
            // Not a daemon's router (some tests): there is nothing to keep.
            return;
        }
        let ports = self.port_servers.lock().unwrap_or_else(|e| e.into_inner());
        let mut fds: Vec<&dyn std::os::fd::AsFd> = Vec::new();
        fds.extend(sockets.router.iter().map(|fd| fd as &dyn std::os::fd::AsFd));
        fds.extend(ports.values().map(|server| &server.socket as &dyn std::os::fd::AsFd));
        let keeper = self.settings.layout.keeper_socket();
        if let Err(err) = crate::keeper::store(&keeper, &self.settings.exe, &fds) {
            tracing::warn!(%err, "no socket keeper: a daemon restart will refuse connections");
        }
    }

    /// Serves every request on `port` to `app` (procserver's routing by port).
    pub async fn open_app_port(&self, app: &str, port: u16) -> Result<(), String> {
        let ip = self.settings.http_addr.ip();
        let inherited = {
            let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
            let at = sockets
                .inherited
                .iter()
                .position(|listener| listener.local_addr().is_ok_and(|addr| addr.port() == port));
            at.map(|at| sockets.inherited.remove(at))
        };
        // One kept on another address (the router's moved) is closed first, or it would hold
        // the port.
        let inherited = inherited.filter(|l| l.local_addr().is_ok_and(|addr| addr.ip() == ip));
        let listener = match inherited {
            Some(listener) => Ok(listener),
            None => std::net::TcpListener::bind((ip, port)),
        };
        let cannot =
            |e: std::io::Error| format!("cannot listen on {ip}:{port}: {e}; pick another port");
        let listener = listener.map_err(cannot)?;
        listener.set_nonblocking(true).map_err(cannot)?;
        let socket = std::os::fd::OwnedFd::from(listener.try_clone().map_err(cannot)?);
        let listener = tokio::net::TcpListener::from_std(listener).map_err(cannot)?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        tokio::spawn(berth_router::serve_app_port(
            listener,
            self.routes.clone(),
            app.to_owned(),
            shutdown,
        ));
        self.port_servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port, PortServer { stop, socket });
        self.keep_sockets();
        Ok(())
    }

    /// The public ports of the app (`ports:add`).
    pub(crate) fn app_ports(&self, app: &str) -> Result<Vec<u16>, berth_store::Error> {
        let ports = self.store().ports()?;
        Ok(ports.into_iter().filter(|(_, owner)| owner == app).map(|(port, _)| port).collect())
    }

    /// Stops serving `port`.
    pub fn close_app_port(&self, port: u16) {
        let server = self.port_servers.lock().unwrap_or_else(|e| e.into_inner()).remove(&port);
        if let Some(server) = server {
            let _ = server.stop.send(true);
            self.keep_sockets();
        }
    }

    /// Serves the app ports the store has (at daemon start), and closes those an earlier
    /// daemon's keeper held that no app claims any more.
    pub async fn open_stored_ports(&self) {
        let ports = self.store().ports().unwrap_or_default();
        for (port, app) in ports {
            if let Err(err) = self.open_app_port(&app, port).await {
                tracing::warn!(app, "{err}");
            }
        }
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).inherited.clear();
        self.keep_sockets();
    }

    /// The app's access log (`logs/APP/router.log`), opened on first use.
    fn access_log(&self, app: &str) -> Option<berth_router::AccessLog> {
        let mut logs = self.access_logs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = logs.get(app) {
            return Some(log.clone());
        }
        let path = self.settings.layout.logs(app).join("router.log");
        match berth_router::AccessLog::open(&path) {
            Ok(log) => {
                logs.insert(app.to_owned(), log.clone());
                Some(log)
            }
            Err(err) => {
                tracing::warn!(%err, "cannot open {}", path.display());
                None
            }
        }
    }

    pub(crate) fn previews(&self) -> MutexGuard<'_, HashMap<(String, i64), AppRuntime>> {
        self.previews.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds a new route table from the running instances and swaps it in.
    pub(crate) fn publish_routes(&self, runtimes: &HashMap<String, AppRuntime>) {
        let mut table = RouteTable::new();
        let previews = self.previews();
        // A preview's backend is named after its host, so `X-App: APP` keeps reaching the
        // current release.
        let preview_names: Vec<String> =
            previews.keys().map(|(app, n)| format!("v{n}.{app}")).collect();
        let all = runtimes.iter().chain(preview_names.iter().zip(previews.values()));
        for (app, runtime) in all {
            let addrs: Vec<SocketAddr> = runtime
                .instances
                .iter()
                .filter_map(|i| i.spec().port)
                .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
                .collect();
            let owner = app.split_once('.').map_or(app.as_str(), |(_, owner)| owner);
            let mut backend = Backend::new(app.clone(), addrs)
                .with_in_flight(&self.in_flight)
                .with_static(runtime.statics.clone(), runtime.catch_all.clone())
                .with_https_only(runtime.route.https_only)
                .with_path_routing(runtime.route.path_routing)
                .with_git_folders(runtime.route.git_folders)
                .with_limits(runtime.route.limits)
                .with_access(runtime.route.access.clone());
            // A preview is the app's too: the same users may see it.
            if let Some(auth) = self.basic_auth_of(owner) {
                backend = backend.with_basic_auth(auth);
            }
            if let Some(log) = self.access_log(owner) {
                backend = backend.with_access_log(log);
            }
            if let Some(cache) = &runtime.route.cache {
                backend = backend.with_cache(cache.clone());
            }
            let backend = Arc::new(backend);
            for host in &runtime.hosts {
                table.insert(host, backend.clone());
            }
        }
        self.routes.store(Arc::new(table));
    }

    /// Restarts the app's current release one instance after another, or fails with a
    /// message when there is none.
    pub async fn restart(&self, app: &str) -> Result<(), ApiError> {
        let record = self.store().app(app)?;
        let Some(release) = record.current_release else {
            return Err(ApiError::conflict(format!(
                "{app} has no release yet: push to it first (git push berth main)"
            )));
        };
        let lock = self.app_lock(app);
        let _guard = lock.lock().await;
        self.rolling_restart(app, release, &|line| tracing::info!(app, "{line}"))
            .await
            .map_err(ApiError::unprocessable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn access_knobs_become_access_rules() {
        let none = RouteOptions::from_env(&[]).unwrap();
        assert_eq!(none.access, berth_router::AccessRules::default());

        let options = RouteOptions::from_env(&env(&[
            ("NGINX_CLOUDFLARE_ACL", "true"),
            ("BERTH_ALLOW_IPS", "10.0.0.0/8, 192.168.1.7,::1"),
        ]))
        .unwrap();
        assert!(options.access.cloudflare_only);
        let allow: Vec<String> =
            options.access.allow.unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]);
        // An empty value is no list, as for every knob; the last value wins.
        let options = RouteOptions::from_env(&env(&[
            ("NGINX_CLOUDFLARE_ACL", "no"),
            ("BERTH_ALLOW_IPS", "10.0.0.0/8"),
            ("BERTH_ALLOW_IPS", " "),
        ]))
        .unwrap();
        assert_eq!(options.access, berth_router::AccessRules::default());

        let error = RouteOptions::from_env(&env(&[("BERTH_ALLOW_IPS", "10.0.0.0/8,10.1.2.3/8")]))
            .unwrap_err();
        assert_eq!(
            error,
            "BERTH_ALLOW_IPS: \"10.1.2.3/8\" has bits set after its prefix: write the network \
             as 10.0.0.0/8, or one address without a /"
        );
        let error = RouteOptions::from_env(&env(&[("BERTH_ALLOW_IPS", "localhost")])).unwrap_err();
        assert!(error.contains("\"localhost\" is not an IP address or network"), "{error}");
        assert!(error.contains("like 10.0.0.0/8, 192.168.1.7 or 2001:db8::/32"), "{error}");
    }

    #[test]
    fn acme_root_ca_names_a_ca_or_is_refused_with_the_names_it_takes() {
        let options = |value: &str| RouteOptions::from_env(&env(&[("ACME_ROOT_CA", value)]));
        assert_eq!(options("").unwrap().acme_directory, None);
        assert_eq!(
            options("letsencrypt_test").unwrap().acme_directory.as_deref(),
            Some("https://acme-staging-v02.api.letsencrypt.org/directory")
        );
        assert_eq!(
            options(" https://ca.internal/dir ").unwrap().acme_directory.as_deref(),
            Some("https://ca.internal/dir")
        );
        let error = options("lets-encrypt").unwrap_err();
        assert!(error.starts_with("unknown ACME_ROOT_CA \"lets-encrypt\": give a directory URL"));
        assert!(error.contains("letsencrypt.org_test"), "{error}");
    }

    #[test]
    fn only_names_a_ca_can_sign_are_asked_for() {
        for name in ["www.example.com", "api.berth.dev"] {
            assert!(signable(name, true), "{name}");
        }
        for name in ["*.example.com", "127.0.0.1", "[::1]", "localhost", "app.localhost"] {
            assert!(!signable(name, true), "{name}");
        }
        for name in ["web.berth.test", "intranet", "shop.internal", "x.home.arpa"] {
            assert!(!signable(name, true), "a public CA cannot sign {name}");
            assert!(signable(name, false), "a private CA may sign {name}");
        }
        assert!(!signable("*.berth.test", false));
    }
}
