//! The daemon: wires the store, the supervisor, the router and the API together, owns
//! shutdown and signals.
//!
//! | signal          | what the daemon does                                            |
//! |-----------------|-----------------------------------------------------------------|
//! | SIGTERM, SIGINT | stops accepting, stops every app's processes, removes its socket |

mod deploy;
mod error;
mod http;
mod layout;
mod ownership;
mod processes;
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

pub use layout::Layout;
pub use repo::shell_quote;
use state::{Daemon, Settings};

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub root: PathBuf,
    pub http: SocketAddr,
    pub domain: String,
    /// The berth binary that git hooks run.
    pub exe: PathBuf,
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
    // A socket file nobody answers on is left over from a daemon that was killed.
    let _ = std::fs::remove_file(&socket);

    let store = Store::open(&layout.database())
        .with_context(|| format!("cannot open the database {}", layout.database().display()))?;
    let git_owner = git_owner(&layout)?;
    let app_users = nix::unistd::geteuid().is_root();
    let (cgroups, warning) = berth_supervise::Cgroups::detect("berth");
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }

    let http_listener = TcpListener::bind(options.http).await.with_context(|| {
        format!("cannot listen for HTTP on {}; choose another address with --http", options.http)
    })?;
    let http_addr = http_listener.local_addr()?;
    let api_listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    // Only the daemon's user and group (the git user's group) may use the API.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))?;
    if let Some(owner) = git_owner {
        nix::unistd::chown(&socket, None, Some(nix::unistd::Gid::from_raw(owner.gid)))?;
    }
    std::fs::write(layout.http_addr_file(), format!("{http_addr}\n"))?;

    let routes = berth_router::shared_routes();
    let settings = Settings {
        layout: layout.clone(),
        domain: options.domain,
        http_addr,
        git_owner,
        app_users,
        cgroups: Arc::new(cgroups),
        exe: options.exe,
    };
    let daemon = Arc::new(Daemon::new(settings, store, routes.clone()));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let router_task = tokio::spawn(berth_router::serve(http_listener, routes, shutdown()));
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
    restore_apps(&daemon);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = shutdown_tx.send(true);
    daemon.stop_all().await;
    // Open API streams (a deploy in progress) get a moment to finish, not forever.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = router_task.await;
        let _ = api_task.await;
    })
    .await;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(layout.http_addr_file());
    Ok(())
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

/// Starts every app that was running when the daemon last stopped.
fn restore_apps(daemon: &Arc<Daemon>) {
    let apps = match daemon.store().apps() {
        Ok(apps) => apps,
        Err(err) => {
            tracing::error!(%err, "cannot list apps to restore");
            return;
        }
    };
    for app in apps {
        if app.state != AppState::Running || app.current_release.is_none() {
            continue;
        }
        let daemon = daemon.clone();
        tokio::spawn(async move {
            match daemon.restart(&app.name).await {
                Ok(()) => tracing::info!(app = app.name, "started"),
                Err(err) => tracing::error!(app = app.name, "could not start: {}", err.message),
            }
        });
    }
}
