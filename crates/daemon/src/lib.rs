//! The daemon: wires the store, the supervisor, the router and the API together, owns
//! shutdown and signals.
//!
//! | signal  | what the daemon does                                                          |
//! |---------|-------------------------------------------------------------------------------|
//! | SIGTERM | exits and leaves the apps running: the next daemon adopts them, and the       |
//! |         | router's socket (held by the keeper) queues visitors until it is back         |
//! | SIGINT  | stops every app, tells the keeper to close the router's socket, and exits     |

mod api_tls;
mod auth;
mod basic_auth;
mod deploy;
mod error;
mod health;
mod http;
mod keeper;
mod layout;
mod openapi;
mod ownership;
mod processes;
mod pull;
mod releases;
mod rename;
mod repo;
mod state;
mod users;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use berth_store::{AppState, Store};
use berth_supervise::RunAs;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

pub use http::openapi_document;
pub use layout::Layout;
pub use repo::shell_quote;
use state::{Daemon, Settings};

/// How long the router waits for the apps to be restored at start before it serves anyway.
const RESTORE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub root: PathBuf,
    pub http: SocketAddr,
    /// Where the router serves HTTPS (HTTP/2 and HTTP/1.1), if anywhere.
    pub https: Option<SocketAddr>,
    pub domain: String,
    /// Certificates from an ACME CA for every app's names, when set.
    pub acme: Option<AcmeOptions>,
    /// Where the API is served on TCP (bearer tokens required), if anywhere.
    pub api: Option<SocketAddr>,
    /// The API's host name: the TCP API speaks HTTPS with its certificate when set.
    pub api_host: Option<String>,
    /// The berth binary that git hooks run.
    pub exe: PathBuf,
}

/// Where certificates come from.
#[derive(Debug, Clone, Default)]
pub struct AcmeOptions {
    /// A directory URL or a piku `ACME_ROOT_CA` name; Let's Encrypt when empty.
    pub directory: String,
    pub email: Option<String>,
    /// A CA certificate (PEM) to trust for the ACME server's own HTTPS (a private CA).
    pub ca_file: Option<PathBuf>,
    /// How the CA is to validate names: `http-01` (the default) or `tls-alpn-01`.
    pub challenge: Option<String>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(options: DaemonOptions) -> anyhow::Result<()> {
    let layout = Layout::new(&options.root);
    layout
        .create()
        .with_context(|| format!("cannot create Berth's tree in {}", options.root.display()))?;
    let socket = layout.socket();
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        bail!(
            "a Berth daemon is already running with root {} (its socket {} answers); stop it first",
            options.root.display(),
            socket.display()
        );
    }
    // A socket file nobody answers on is left over from a daemon that was killed, and so is
    // its API address (written again once this daemon's TCP API listens).
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(layout.run_dir().join("api.addr"));

    let api_host = match &options.api_host {
        None => None,
        Some(_) if options.api.is_none() => {
            bail!("--api-host needs --api ADDR:PORT, the address the API listens on")
        }
        Some(host) => Some(
            berth_router::normalize_host_pattern(host)
                .filter(|name| !name.starts_with("*."))
                .with_context(|| {
                    format!("--api-host {host:?} is not a host name (like api.example.com)")
                })?,
        ),
    };
    let store = Store::open(&layout.database())
        .with_context(|| format!("cannot open the database {}", layout.database().display()))?;
    let git_owner = git_owner(&layout)?;
    let app_users = nix::unistd::geteuid().is_root();
    let (cgroups, warning) = berth_supervise::Cgroups::detect("berth");
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }

    let (http_listener, https_listener, inherited) = router_listeners(&layout, &options)?;
    // Duplicates, for the daemon to give the keeper again with the app ports.
    let mut router_sockets = vec![std::os::fd::OwnedFd::from(http_listener.try_clone()?)];
    if let Some(listener) = &https_listener {
        router_sockets.push(listener.try_clone()?.into());
    }
    let http_addr = http_listener.local_addr()?;
    let https_addr = https_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let certs =
        Arc::new(berth_tls::CertStore::open(layout.root().join("certs")).with_context(|| {
            format!("cannot open the certificates in {}", layout.root().join("certs").display())
        })?);
    let http01 = berth_tls::Http01Tokens::new();
    let api_listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    // Only the daemon's user and group (the git user's group) may use the API.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))?;
    if let Some(owner) = git_owner {
        nix::unistd::chown(&socket, None, Some(nix::unistd::Gid::from_raw(owner.gid)))?;
    }
    std::fs::write(layout.http_addr_file(), format!("{http_addr}\n"))?;
    match https_addr {
        Some(addr) => std::fs::write(layout.https_addr_file(), format!("{addr}\n"))?,
        None => {
            let _ = std::fs::remove_file(layout.https_addr_file());
        }
    }

    let routes = berth_router::shared_routes();
    let settings = Settings {
        https_addr,
        layout: layout.clone(),
        domain: options.domain,
        http_addr,
        git_owner,
        app_users,
        cgroups: Arc::new(cgroups),
        exe: options.exe,
        api_host: api_host.clone(),
    };
    let daemon = Arc::new(Daemon::new(settings, store, routes.clone()));
    daemon.set_sockets(router_sockets, inherited);
    // Before any route is published: a protected app must never be served open.
    daemon
        .load_basic_auth()
        .map_err(|e| anyhow::anyhow!("cannot read the apps' basic-auth users: {}", e.message))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    // Apps first, router second: until the route table holds the adopted instances, a request
    // would find no app (404). Visitors wait in the socket's backlog meanwhile, but not for
    // longer than an app that is slow to start would make them.
    let mut restore = tokio::spawn(restore_apps(daemon.clone()));
    if tokio::time::timeout(RESTORE_WAIT, &mut restore).await.is_err() {
        tracing::warn!("apps are still starting; serving the others now");
    }
    // The app ports too (those the keeper held waited in their backlog meanwhile).
    daemon.open_stored_ports().await;
    let challenges: Arc<dyn berth_router::Http01Challenges> = {
        let tokens = http01.clone();
        Arc::new(move |token: &str| tokens.key_authorization(token))
    };
    // The router runs on a single-threaded runtime per core (nginx's worker model), apart
    // from the daemon's own runtime: about twice the requests of one shared runtime here.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut router_threads = {
        let (routes, shutdown) = (routes.clone(), shutdown.clone());
        berth_router::spawn_per_core(http_listener, cores, move |listener| {
            berth_router::serve_with_challenges(
                listener,
                routes.clone(),
                challenges.clone(),
                shutdown(),
            )
        })?
    };
    if let Some(listener) = https_listener {
        let config = berth_tls::server_config(certs.clone());
        let (routes, shutdown) = (routes.clone(), shutdown.clone());
        router_threads.extend(berth_router::spawn_per_core(listener, cores, move |listener| {
            berth_router::serve_tls(listener, routes.clone(), config.clone(), shutdown())
        })?);
    }
    if let Some(acme) = &options.acme {
        let directory =
            berth_tls::directory_url(&acme.directory).map_err(|e| anyhow::anyhow!("{e}"))?;
        let method = match acme.challenge.as_deref() {
            None => berth_tls::ChallengeMethod::Http01,
            Some(text) => text
                .parse::<berth_tls::ChallengeMethod>()
                .map_err(|e| anyhow::anyhow!("--acme-challenge: {e}"))?,
        };
        // A public CA signs only names in public DNS: asking it for `APP.localhost` would
        // only count against its rate limits.
        let public_only = berth_tls::is_public_ca(&directory);
        let config = berth_tls::AcmeConfig {
            directory_url: directory,
            contact_email: acme.email.clone(),
            trust_root_pem: acme.ca_file.clone(),
        };
        let client = Arc::new(berth_tls::AcmeClient::new(config, certs.clone(), http01.clone()));
        let source = {
            let daemon = daemon.clone();
            move || daemon.certificate_requests(public_only)
        };
        let manager_config = berth_tls::ManagerConfig { method, ..Default::default() };
        let manager = berth_tls::spawn_manager_with(client, manager_config, source, shutdown());
        daemon.set_acme(manager);
    }
    daemon.set_certs(certs.clone());
    if let Some(addr) = options.api {
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot serve the API on {addr}; choose another address with --api")
        })?;
        std::fs::write(layout.run_dir().join("api.addr"), format!("{}\n", listener.local_addr()?))?;
        let guarded = http::router(daemon.clone())
            .layer(axum::middleware::from_fn_with_state(daemon.clone(), auth::require_token));
        let stop = shutdown();
        match &api_host {
            Some(host) => {
                let url = api_tls::api_url(host, listener.local_addr()?.port());
                tracing::info!("the API is served over HTTPS at {url}");
                let listener = api_tls::listen(listener, certs.clone(), url, shutdown())?;
                tokio::spawn(async move {
                    axum::serve(listener, guarded).with_graceful_shutdown(stop).await
                });
            }
            None => {
                tokio::spawn(async move {
                    axum::serve(listener, guarded).with_graceful_shutdown(stop).await
                });
            }
        }
    }
    let api = http::router(daemon.clone());
    let api_task = tokio::spawn(async move {
        axum::serve(api_listener, api).with_graceful_shutdown(shutdown()).await
    });
    tracing::info!(
        "berth daemon running: root {}, API on {}, apps at http://APP.{}:{}/",
        layout.root().display(),
        socket.display(),
        daemon.settings.domain,
        http_addr.port()
    );

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let stop_apps = tokio::select! {
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM: exiting; the apps keep running for the next daemon");
            false
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT: stopping every app and exiting");
            true
        }
    };
    let _ = shutdown_tx.send(true);
    if stop_apps {
        daemon.stop_all().await;
        keeper::quit(&layout.keeper_socket());
    }
    // Open API streams (a deploy in progress) get a moment to finish, not forever.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = tokio::task::spawn_blocking(move || {
            for thread in router_threads {
                let _ = thread.join();
            }
        })
        .await;
        let _ = api_task.await;
    })
    .await;
    let _ = std::fs::remove_file(&socket);
    if stop_apps {
        let _ = std::fs::remove_file(layout.http_addr_file());
    } else {
        // Last, once a deploy in progress has had its moment to finish.
        daemon.leave_running();
    }
    Ok(())
}

/// `berth keeper`: holds the router's socket across daemon restarts.
pub fn run_keeper(socket: &std::path::Path) -> std::io::Result<()> {
    keeper::serve(socket)
}

/// The router's listening sockets (HTTP, and HTTPS when asked for): the ones the keeper
/// holds from an earlier daemon when they listen where asked, else new ones. Also the other
/// sockets the keeper held (app ports'). The daemon gives the keeper its whole set once the
/// app ports are open (`Daemon::open_stored_ports`).
fn router_listeners(
    layout: &Layout,
    options: &DaemonOptions,
) -> anyhow::Result<(
    std::net::TcpListener,
    Option<std::net::TcpListener>,
    Vec<std::net::TcpListener>,
)> {
    let keeper_socket = layout.keeper_socket();
    let mut kept: Vec<std::net::TcpListener> =
        keeper::fetch(&keeper_socket).into_iter().map(std::net::TcpListener::from).collect();
    let mut take = |wanted: SocketAddr| -> anyhow::Result<(std::net::TcpListener, bool)> {
        let matches = |l: &std::net::TcpListener| {
            l.local_addr().is_ok_and(|a| {
                a.ip() == wanted.ip() && (wanted.port() == 0 || a.port() == wanted.port())
            })
        };
        if let Some(index) = kept.iter().position(matches) {
            return Ok((kept.remove(index), true));
        }
        let listener = std::net::TcpListener::bind(wanted).with_context(|| {
            format!("cannot listen on {wanted}; choose another address with --http or --https")
        })?;
        Ok((listener, false))
    };
    let (http, http_kept) = take(options.http)?;
    let https = options.https.map(&mut take).transpose()?;
    if http_kept && https.as_ref().is_none_or(|(_, kept)| *kept) {
        tracing::info!("took the router's sockets back from the keeper");
    }
    Ok((http, https.map(|(listener, _)| listener), kept))
}

/// When the daemon runs as root, the user that owns `$BERTH_ROOT` (the `berth` user of a root
/// install) owns the git repos and may use the API.
fn git_owner(layout: &Layout) -> anyhow::Result<Option<RunAs>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let meta = std::fs::metadata(layout.root())?;
    Ok((meta.uid() != 0).then_some(RunAs { uid: meta.uid(), gid: meta.gid() }))
}

/// Brings back every app that was running when the daemon last stopped: adopts the processes
/// an earlier daemon left running, starts what is missing, and stops leftovers no app wants.
async fn restore_apps(daemon: Arc<Daemon>) {
    let apps = match daemon.store().apps() {
        Ok(apps) => apps,
        Err(err) => {
            tracing::error!(%err, "cannot list apps to restore");
            return;
        }
    };
    let mut tasks = Vec::new();
    for app in apps {
        let (AppState::Running, Some(release)) = (app.state, app.current_release) else { continue };
        let daemon = daemon.clone();
        tasks.push(tokio::spawn(async move {
            let lock = daemon.app_lock(&app.name);
            let _guard = lock.lock().await;
            if let Err(err) = daemon.adopt_or_start(&app.name, release).await {
                tracing::error!(app = app.name, "could not start: {err}");
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    daemon.restore_previews().await;
    daemon.stop_strays().await;
}
