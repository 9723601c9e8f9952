//! The API's handlers (axum), served on `run/berth.sock`. Every client goes through these:
//! the CLI on the server, the ssh entry and the git hook.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_api::{
    AddCertificate, AppDetail, AppSummary, AuthPassword, AuthUser, Certificate, ConfigUpdate,
    ConfigVars, CreateApp, DeployRequest, DomainRequest, Domains, Done, JobEvent, KeepRequest,
    LockRequest, LogEntry, Logs, NewName, ReleaseInfo, RepoInfo, RepoRequest, RollbackRequest,
    RunRequest, Scale, TokenInfo, TokenRequest,
};
use berth_procfile::validate_app_name;
use berth_store::AppState;
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::deploy::{JobOutput, deploy};
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::processes::MAX_INSTANCES;
use crate::repo::ensure_repo;
use crate::state::{Daemon, now};
use berth_supervise::logs;

type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router(daemon: Arc<Daemon>) -> Router {
    let fallback = axum::routing::any(|| async {
        ApiError::not_found("no such API endpoint; GET /openapi.json lists them")
    });
    crate::openapi::build(ENDPOINTS, fallback).with_state(daemon)
}

/// The OpenAPI document of the API (also served at `GET /openapi.json`).
pub fn openapi_document() -> serde_json::Value {
    crate::openapi::document(ENDPOINTS)
}

use crate::openapi::{Answer, Endpoint};
use axum::routing::{delete, patch, put};
use schemars::{JsonSchema, Schema, SchemaGenerator};

fn s<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// Every endpoint: the router and the OpenAPI document are both built from this table.
static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "GET",
        path: "/apps",
        summary: "List apps",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Vec<AppSummary>>),
        handler: || get(list_apps),
    },
    Endpoint {
        method: "POST",
        path: "/apps",
        summary: "Create an app, and deploy it from a git repository when one is given",
        query: &[],
        body: Some(s::<CreateApp>),
        answer: Answer::Created(s::<Done>),
        handler: || post(create_app),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}",
        summary: "An app and its processes",
        query: &[],
        body: None,
        answer: Answer::Json(s::<AppDetail>),
        handler: || get(show_app),
    },
    Endpoint {
        method: "PUT",
        path: "/apps/{app}",
        summary: "Change an app's config, scale, domains or repository, and redeploy a pulled app",
        query: &[],
        body: Some(s::<CreateApp>),
        answer: Answer::Stream,
        handler: || put(update_app),
    },
    Endpoint {
        method: "DELETE",
        path: "/apps/{app}",
        summary: "Destroy an app (data/APP is kept)",
        query: &[("confirm", "the app's name again")],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || delete(destroy_app),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/rename",
        summary: "Give an app a new name; its repository, releases, config, scale, domains, \
                  ports, logs and data follow, and its processes start again under the new name",
        query: &[],
        body: Some(s::<NewName>),
        answer: Answer::Json(s::<Done>),
        handler: || post(rename_app),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/clone",
        summary: "Make a new app with an app's config, scale and a copy of its repository, \
                  deployed from its current commit (its domains and ports stay its own)",
        query: &[],
        body: Some(s::<NewName>),
        answer: Answer::Created(s::<Done>),
        handler: || post(clone_app),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/repo",
        summary: "Make sure the app and its repository exist (before a push)",
        query: &[],
        body: Some(s::<RepoRequest>),
        answer: Answer::Json(s::<RepoInfo>),
        handler: || post(prepare_repo),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/deploys",
        summary: "Deploy a commit of the app's repository",
        query: &[],
        body: Some(s::<DeployRequest>),
        answer: Answer::Stream,
        handler: || post(start_deploy),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/redeploy",
        summary: "Pull again and deploy, or rebuild the current commit",
        query: &[],
        body: None,
        answer: Answer::Stream,
        handler: || post(redeploy),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}/config",
        summary: "The app's config vars",
        query: &[],
        body: None,
        answer: Answer::Json(s::<ConfigVars>),
        handler: || get(get_config),
    },
    Endpoint {
        method: "PATCH",
        path: "/apps/{app}/config",
        summary: "Set and unset config vars (a new release)",
        query: &[],
        body: Some(s::<ConfigUpdate>),
        answer: Answer::Json(s::<ConfigVars>),
        handler: || patch(update_config),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}/config/live",
        summary: "The environment a process really gets",
        query: &[("process", "the process type, web by default")],
        body: None,
        answer: Answer::Json(s::<Vec<(String, String)>>),
        handler: || get(live_config),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/start",
        summary: "Start a stopped app",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || post(start_app),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/stop",
        summary: "Stop an app's processes",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || post(stop_app),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/restart",
        summary: "Restart an app, one instance after another",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || post(restart_app),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}/logs",
        summary: "The newest log lines, interleaved by time",
        query: &[
            ("process", "a process type, router or build"),
            ("lines", "how many"),
            ("follow", "1 to stream new lines"),
        ],
        body: None,
        answer: Answer::JsonOrStream(s::<Logs>),
        handler: || get(get_logs),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}/logs/{kind}",
        summary: "procserver's logs: stdout, stderr or build",
        query: &[("lines", "how many"), ("follow", "1 to stream new lines")],
        body: None,
        answer: Answer::JsonOrStream(s::<Logs>),
        handler: || get(logs_by_kind),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}/scale",
        summary: "Instances per process type",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Scale>),
        handler: || get(get_scale),
    },
    Endpoint {
        method: "PATCH",
        path: "/apps/{app}/scale",
        summary: "Scale process types",
        query: &[],
        body: Some(s::<Scale>),
        answer: Answer::Json(s::<Scale>),
        handler: || patch(update_scale),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/run",
        summary: "Run a one-off command; its output and exit status stream back",
        query: &[],
        body: Some(s::<RunRequest>),
        answer: Answer::Stream,
        handler: || post(run_command),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}/domains",
        summary: "The names an app answers at",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Domains>),
        handler: || get(list_domains),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/domains",
        summary: "Add a name",
        query: &[],
        body: Some(s::<DomainRequest>),
        answer: Answer::Json(s::<Done>),
        handler: || post(add_domain),
    },
    Endpoint {
        method: "DELETE",
        path: "/apps/{app}/domains/{name}",
        summary: "Remove a name",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || delete(remove_domain),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}/auth",
        summary: "The users who may sign in to an app (router basic auth)",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Vec<AuthUser>>),
        handler: || get(list_auth_users),
    },
    Endpoint {
        method: "PUT",
        path: "/apps/{app}/auth/{user}",
        summary: "Add a user or change their password; the app asks for one at once",
        query: &[],
        body: Some(s::<AuthPassword>),
        answer: Answer::Json(s::<Done>),
        handler: || put(set_auth_user),
    },
    Endpoint {
        method: "DELETE",
        path: "/apps/{app}/auth/{user}",
        summary: "Remove a user; without users the app is open again",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || delete(remove_auth_user),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}/certs",
        summary: "The certificates served for an app",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Vec<Certificate>>),
        handler: || get(list_certs),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/certs",
        summary: "Serve a certificate you bring",
        query: &[],
        body: Some(s::<AddCertificate>),
        answer: Answer::Json(s::<Done>),
        handler: || post(add_cert),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}/ports",
        summary: "An app's own public ports",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Vec<u16>>),
        handler: || get(list_ports),
    },
    Endpoint {
        method: "PUT",
        path: "/apps/{app}/ports/{port}",
        summary: "Give an app a port",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || put(add_port),
    },
    Endpoint {
        method: "DELETE",
        path: "/apps/{app}/ports/{port}",
        summary: "Take a port away",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || delete(remove_port),
    },
    Endpoint {
        method: "GET",
        path: "/apps/{app}/releases",
        summary: "Release history, newest first",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Vec<ReleaseInfo>>),
        handler: || get(list_releases),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/releases/{release}/preview",
        summary: "Run a release beside the current one at vN.APP.<domain>",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || post(start_preview),
    },
    Endpoint {
        method: "DELETE",
        path: "/apps/{app}/releases/{release}/preview",
        summary: "Stop a preview",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || delete(stop_preview),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/releases/{release}/promote",
        summary: "Make a release current",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || post(promote),
    },
    Endpoint {
        method: "POST",
        path: "/apps/{app}/rollback",
        summary: "Make an earlier release current again, code and config",
        query: &[],
        body: Some(s::<RollbackRequest>),
        answer: Answer::Json(s::<Done>),
        handler: || post(rollback),
    },
    Endpoint {
        method: "PUT",
        path: "/apps/{app}/keep",
        summary: "How many release trees to keep",
        query: &[],
        body: Some(s::<KeepRequest>),
        answer: Answer::Json(s::<Done>),
        handler: || put(set_keep),
    },
    Endpoint {
        method: "PUT",
        path: "/apps/{app}/lock",
        summary: "Refuse deploys until unlocked",
        query: &[],
        body: Some(s::<LockRequest>),
        answer: Answer::Json(s::<Done>),
        handler: || put(lock_app),
    },
    Endpoint {
        method: "DELETE",
        path: "/apps/{app}/lock",
        summary: "Allow deploys again",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || delete(unlock_app),
    },
    Endpoint {
        method: "GET",
        path: "/tokens",
        summary: "API tokens",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Vec<TokenInfo>>),
        handler: || get(list_tokens),
    },
    Endpoint {
        method: "POST",
        path: "/tokens",
        summary: "Create an API token (shown once)",
        query: &[],
        body: Some(s::<TokenRequest>),
        answer: Answer::Json(s::<TokenInfo>),
        handler: || post(create_token),
    },
    Endpoint {
        method: "DELETE",
        path: "/tokens/{name}",
        summary: "Revoke an API token",
        query: &[],
        body: None,
        answer: Answer::Json(s::<Done>),
        handler: || delete(revoke_token),
    },
];

fn app_name(raw: &str) -> Result<String, ApiError> {
    Ok(validate_app_name(raw)?)
}

async fn list_apps(State(daemon): State<Arc<Daemon>>) -> ApiResult<Vec<AppSummary>> {
    let apps = daemon.store().apps()?;
    Ok(Json(
        apps.into_iter()
            .map(|app| AppSummary {
                instances: daemon.instance_infos(&app.name).0,
                url: daemon.url(&app.name),
                state: state_name(app.state).to_owned(),
                release: app.current_release,
                name: app.name,
            })
            .collect(),
    ))
}

fn state_name(state: AppState) -> &'static str {
    match state {
        AppState::Running => "running",
        AppState::Stopped => "stopped",
    }
}

async fn show_app(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
) -> ApiResult<AppDetail> {
    let app = app_name(&app)?;
    let (record, commit) = {
        let store = daemon.store();
        let record = store.app(&app)?;
        let commit = match record.current_release {
            Some(n) => store.release(&app, n)?.map(|r| r.commit),
            None => None,
        };
        (record, commit)
    };
    let (_, processes, hosts) = daemon.instance_infos(&app);
    let crons = daemon.cron_infos(&app);
    Ok(Json(AppDetail {
        url: daemon.url(&app),
        name: app,
        state: state_name(record.state).to_owned(),
        release: record.current_release,
        commit,
        hosts,
        processes,
        crons,
    }))
}

#[derive(Debug, Deserialize)]
struct DestroyQuery {
    #[serde(default)]
    confirm: Option<String>,
}

async fn destroy_app(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiQuery(query): ApiQuery<DestroyQuery>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    daemon.store().app(&app)?;
    if query.confirm.as_deref() != Some(app.as_str()) {
        return Err(ApiError::bad_request(format!(
            "destroying {app} needs confirmation: repeat the app name (`?confirm={app}`)"
        )));
    }
    let lock = daemon.app_lock(&app);
    let _guard = lock.lock().await;
    daemon.remove_app(&app).await;
    for port in daemon.app_ports(&app)? {
        daemon.close_app_port(port);
    }
    daemon.store().delete_app(&app)?;
    // After the store forgot them: an app of the same name starts without users.
    daemon.forget_basic_auth(&app);
    let layout = &daemon.settings.layout;
    let dirs = [
        layout.repo(&app),
        layout.releases(&app),
        layout.cache(&app),
        layout.logs(&app),
        layout.home(&app),
    ];
    for dir in dirs {
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%err, "could not remove {}", dir.display());
        }
    }
    if let Err(err) = daemon.remove_app_user(&app) {
        tracing::warn!("could not remove the user of {app}: {err}");
    }
    let data = layout.data(&app);
    let mut message = format!("{app} was destroyed");
    if data.exists() {
        message.push_str(&format!("; its data directory {} was kept", data.display()));
    }
    Ok(Json(Done { message }))
}

async fn rename_app(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<NewName>,
) -> ApiResult<Done> {
    let old = app_name(&app)?;
    let new = app_name(&request.name)?;
    let message = daemon.rename_app(&old, &new).await?;
    Ok(Json(Done { message }))
}

async fn clone_app(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    headers: axum::http::HeaderMap,
    ApiJson(request): ApiJson<NewName>,
) -> Result<Response, ApiError> {
    let source = app_name(&app)?;
    let new = app_name(&request.name)?;
    // A push to the source moves its repository: it is copied between pushes.
    let lock = daemon.app_lock(&source);
    let turn = lock.lock_owned().await;
    let (commit, notes) = {
        let (daemon, source, new) = (daemon.clone(), source.clone(), new.clone());
        tokio::task::spawn_blocking(move || daemon.clone_app(&source, &new))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??
    };
    drop(turn);
    let body = match commit {
        Some(commit) => stream_deploy(daemon, new, commit, who(&headers), notes),
        None => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let out = JobOutput::new(tx);
            for note in notes {
                out.step(note);
            }
            out.end(Ok(()));
            ndjson(rx)
        }
    };
    Ok((axum::http::StatusCode::CREATED, body).into_response())
}

async fn prepare_repo(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<RepoRequest>,
) -> ApiResult<RepoInfo> {
    let app = app_name(&app)?;
    let exists = daemon.store().app(&app).is_ok();
    if !exists {
        if !request.create {
            return Err(ApiError::not_found(format!(
                "there is no app named {app}: push to it first to create it"
            )));
        }
        match daemon.store().create_app(&app, now()) {
            Ok(()) | Err(berth_store::Error::AppExists(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    let created = ensure_repo(&daemon.settings, &app).map_err(ApiError::internal)?;
    Ok(Json(RepoInfo { path: daemon.settings.layout.repo(&app).display().to_string(), created }))
}

async fn start_deploy(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<DeployRequest>,
) -> Result<Response, ApiError> {
    let app = app_name(&app)?;
    daemon.store().app(&app)?;
    if request.commit.is_empty() || !request.commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "{:?} is not a commit id; give the full hexadecimal id",
            request.commit
        )));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let out = Arc::new(JobOutput::new(tx));
    // The job runs in its own task: a client that goes away does not cut a deploy in half.
    tokio::spawn(deploy(daemon, app, request, out));
    Ok(ndjson(rx))
}

async fn get_config(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
) -> ApiResult<ConfigVars> {
    let app = app_name(&app)?;
    let vars = daemon.store().config(&app)?;
    Ok(Json(ConfigVars { vars: vars.into_iter().collect(), restarted: false }))
}

fn check_config_key(key: &str) -> Result<(), ApiError> {
    let mut chars = key.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid config key {key:?}: keys are letters, digits and underscores, not starting \
             with a digit (for example DATABASE_URL)"
        )))
    }
}

/// Refuses router knobs (BERTH_ALLOW_IPS, BERTH_MAX_BODY_SIZE...) with a bad value before
/// anything is stored, even for an app that is not running: it would fail at its next start.
fn check_route_knobs(set: &[(String, String)]) -> Result<(), ApiError> {
    crate::state::RouteOptions::from_env(set)
        .map(drop)
        .map_err(|e| ApiError::bad_request(format!("{e}; nothing was changed")))
}

async fn update_config(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    headers: axum::http::HeaderMap,
    ApiJson(update): ApiJson<ConfigUpdate>,
) -> ApiResult<ConfigVars> {
    let app = app_name(&app)?;
    for key in update.set.keys().chain(&update.unset) {
        check_config_key(key)?;
    }
    let set: Vec<(String, String)> = update.set.into_iter().collect();
    check_route_knobs(&set)?;
    let restarted =
        daemon.change_config(&app, &set, &update.unset, &who(&headers), update.restart).await?;
    let vars: BTreeMap<String, String> = daemon.store().config(&app)?.into_iter().collect();
    Ok(Json(ConfigVars { vars, restarted }))
}

/// Who asks, as the ssh entry tells (the key's fingerprint), for release history.
fn who(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(berth_api::WHO_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .unwrap_or("local")
        .to_owned()
}

async fn list_releases(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
) -> ApiResult<Vec<ReleaseInfo>> {
    let app = app_name(&app)?;
    Ok(Json(daemon.release_infos(&app)?))
}

async fn rollback(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<RollbackRequest>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let started = std::time::Instant::now();
    let target =
        daemon.rollback(&app, request.release, &|line| tracing::info!(app, "{line}")).await?;
    let commit = daemon.store().release(&app, target)?.map(|r| r.commit).unwrap_or_default();
    Ok(Json(Done {
        message: format!(
            "{app} is back on v{target} (commit {}), with the config it ran with ({:.1} s)",
            &commit[..commit.len().min(7)],
            started.elapsed().as_secs_f64()
        ),
    }))
}

async fn set_keep(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<KeepRequest>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    if !(1..=1000).contains(&request.keep) {
        return Err(ApiError::bad_request(format!(
            "keep {} releases? give a number from 1 to 1000 (the default is 5)",
            request.keep
        )));
    }
    daemon.store().set_keep_releases(&app, request.keep)?;
    daemon.prune_releases(&app);
    Ok(Json(Done {
        message: format!("{app} keeps the trees of its {} newest releases", request.keep),
    }))
}

async fn lock_app(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<LockRequest>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let reason = request
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "locked by hand".to_owned());
    daemon.store().set_lock(&app, Some(&reason))?;
    Ok(Json(Done {
        message: format!(
            "{app} is locked ({reason}): pushes are refused until `apps:unlock {app}`"
        ),
    }))
}

async fn unlock_app(State(daemon): State<Arc<Daemon>>, Path(app): Path<String>) -> ApiResult<Done> {
    let app = app_name(&app)?;
    daemon.store().set_lock(&app, None)?;
    Ok(Json(Done { message: format!("{app} is unlocked: pushes deploy again") }))
}

async fn start_app(State(daemon): State<Arc<Daemon>>, Path(app): Path<String>) -> ApiResult<Done> {
    let app = app_name(&app)?;
    daemon.store().set_app_state(&app, AppState::Running)?;
    daemon.restart(&app).await?;
    Ok(Json(Done { message: format!("{app} is running at {}", daemon.url(&app)) }))
}

async fn stop_app(State(daemon): State<Arc<Daemon>>, Path(app): Path<String>) -> ApiResult<Done> {
    let app = app_name(&app)?;
    daemon.store().set_app_state(&app, AppState::Stopped)?;
    let lock = daemon.app_lock(&app);
    let _guard = lock.lock().await;
    daemon.stop_app(&app).await;
    Ok(Json(Done { message: format!("{app} is stopped; `berth start {app}` starts it again") }))
}

async fn restart_app(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    if daemon.store().app(&app)?.state == AppState::Stopped {
        return Err(ApiError::conflict(format!(
            "{app} is stopped; start it with `berth start {app}`"
        )));
    }
    daemon.restart(&app).await?;
    Ok(Json(Done { message: format!("{app} was restarted") }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct LogsQuery {
    process: Option<String>,
    lines: Option<usize>,
    #[serde(default)]
    follow: Option<String>,
}

/// How often a followed log is checked for new lines.
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

async fn get_logs(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let app = app_name(&app)?;
    daemon.store().app(&app)?;
    let lines = query.lines.unwrap_or(100).min(100_000);
    let follow = matches!(query.follow.as_deref(), Some("1" | "true" | "yes"));
    if query.process.as_deref() == Some("build") {
        let latest = daemon.store().releases(&app)?.into_iter().next();
        let lines = latest
            .map(|r| {
                let path = daemon.settings.layout.build_log(&app, r.number);
                let source = format!("build/{}", r.number);
                logs::tail_lines(&path, lines)
                    .into_iter()
                    .map(|text| LogEntry { source: source.clone(), timestamp: None, text })
                    .collect()
            })
            .unwrap_or_default();
        return Ok(Json(Logs { lines }).into_response());
    }
    let dir = daemon.settings.layout.logs(&app);
    let names = log_names(&dir, query.process.as_deref());
    if let Some(process) = &query.process
        && names.is_empty()
    {
        return Err(ApiError::not_found(format!(
            "{app} has no logs for a process named {process}; its Procfile names the processes"
        )));
    }
    let files: Vec<(String, Vec<String>)> = names
        .iter()
        .map(|name| (name.clone(), logs::tail_file(&dir.join(format!("{name}.log")), lines)))
        .collect();
    let tail: Vec<LogEntry> = logs::merge(files, lines).into_iter().map(entry).collect();
    if !follow {
        return Ok(Json(Logs { lines: tail }).into_response());
    }

    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    for line in &tail {
        let _ = events.send(JobEvent::Line { text: line.display() });
    }
    let process = query.process.clone();
    tokio::spawn(async move {
        let mut followers: BTreeMap<String, logs::Follower> = names
            .iter()
            .map(|name| (name.clone(), logs::Follower::at_end(&dir.join(format!("{name}.log")))))
            .collect();
        loop {
            tokio::select! {
                () = events.closed() => return,
                () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
            // Instances started since (a scale-up) are followed from their first line.
            for name in log_names(&dir, process.as_deref()) {
                followers.entry(name.clone()).or_insert_with(|| {
                    logs::Follower::from_start(&dir.join(format!("{name}.log")))
                });
            }
            let new: Vec<(String, Vec<String>)> =
                followers.iter_mut().map(|(name, f)| (name.clone(), f.poll())).collect();
            for line in logs::merge(new, usize::MAX) {
                if events.send(JobEvent::Line { text: entry(line).display() }).is_err() {
                    return;
                }
            }
        }
    });
    Ok(ndjson(rx))
}

fn entry(line: logs::LogLine) -> LogEntry {
    LogEntry { source: line.source, timestamp: line.timestamp, text: line.text }
}

/// The instance logs (`web.1`) in `dir`, of one process type when `process` is given.
fn log_names(dir: &std::path::Path, process: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    match process {
        Some(process) => names.retain(|name| {
            name == process || name.rsplit_once('.').map(|(t, _)| t) == Some(process)
        }),
        // The router's access log has a format of its own: shown when asked for by name.
        None => names.retain(|name| name != "router"),
    }
    names.sort();
    names
}

/// The scale of every long-running process type of the current release (1 unless set).
fn current_scale(daemon: &Daemon, app: &str) -> Result<(i64, Scale), ApiError> {
    let record = daemon.store().app(app)?;
    let Some(release) = record.current_release else {
        return Err(ApiError::conflict(format!(
            "{app} has no release yet, so no processes to scale: push to it first"
        )));
    };
    let (files, _) = daemon
        .release_env(app, release, &berth_build::BuildOutcome::default())
        .map_err(ApiError::internal)?;
    let set: BTreeMap<String, u32> = daemon.store().scale(app)?.into_iter().collect();
    let counts = files
        .procfile
        .entries
        .iter()
        .filter(|e| e.kind.is_long_running())
        .map(|e| (e.name.clone(), set.get(&e.name).copied().unwrap_or(1)))
        .collect();
    Ok((release, Scale { counts }))
}

async fn get_scale(State(daemon): State<Arc<Daemon>>, Path(app): Path<String>) -> ApiResult<Scale> {
    let app = app_name(&app)?;
    Ok(Json(current_scale(&daemon, &app)?.1))
}

async fn update_scale(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiJson(update): ApiJson<Scale>,
) -> ApiResult<Scale> {
    let app = app_name(&app)?;
    let (release, current) = current_scale(&daemon, &app)?;
    for (process_type, &count) in &update.counts {
        if !current.counts.contains_key(process_type) {
            let known: Vec<&str> = current.counts.keys().map(String::as_str).collect();
            return Err(ApiError::bad_request(format!(
                "{app} has no process type {process_type:?} to scale; its Procfile has: {}",
                known.join(", ")
            )));
        }
        if count > MAX_INSTANCES {
            return Err(ApiError::bad_request(format!(
                "{process_type}={count} is more than the {MAX_INSTANCES} instances Berth runs of one type"
            )));
        }
    }
    let counts: Vec<(String, u32)> = update.counts.into_iter().collect();
    daemon.store().set_scale(&app, &counts)?;
    if daemon.store().app(&app)?.state == AppState::Running {
        let lock = daemon.app_lock(&app);
        let _guard = lock.lock().await;
        daemon.apply_scale(&app, release).await.map_err(ApiError::unprocessable)?;
    }
    Ok(Json(current_scale(&daemon, &app)?.1))
}

/// How long a one-off command may run.
const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Turns job events into the NDJSON body of a streamed answer.
fn ndjson(rx: tokio::sync::mpsc::UnboundedReceiver<JobEvent>) -> Response {
    let body = Body::from_stream(UnboundedReceiverStream::new(rx).map(|event| {
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    }));
    ([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn run_command(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<RunRequest>,
) -> Result<Response, ApiError> {
    let app = app_name(&app)?;
    let record = daemon.store().app(&app)?;
    let Some(release) = record.current_release else {
        return Err(ApiError::conflict(format!(
            "{app} has no release to run commands in: push to it first"
        )));
    };
    if request.command.trim().is_empty() {
        return Err(ApiError::bad_request("no command given: `run APP -- COMMAND ARGS`"));
    }
    let build = daemon.stored_build(&app, release);
    let (_, env) = daemon.release_env(&app, release, &build).map_err(ApiError::internal)?;
    let spec = berth_supervise::TaskSpec {
        command: request.command,
        cwd: daemon.tree(&app, release),
        env,
        run_as: daemon.app_user(&app).map_err(ApiError::internal)?,
        timeout: RUN_TIMEOUT,
    };
    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
        let forward = {
            let events = events.clone();
            tokio::spawn(async move {
                while let Some(text) = lines_rx.recv().await {
                    let _ = events.send(JobEvent::Line { text });
                }
            })
        };
        // The command stops when the client goes away (the ssh session ended).
        let gone = {
            let events = events.clone();
            async move { events.closed().await }
        };
        let result = berth_supervise::run_command(&spec, lines_tx, gone).await;
        let _ = forward.await;
        let end = match result {
            Ok(exit) => {
                use std::os::unix::process::ExitStatusExt;
                let code = exit.code().or_else(|| exit.signal().map(|s| 128 + s));
                let error = (!exit.success()).then(|| {
                    format!("`{}` exited with status {}", spec.command, code.unwrap_or(1))
                });
                JobEvent::End { ok: exit.success(), error, exit_code: code }
            }
            Err(error) => JobEvent::End { ok: false, error: Some(error), exit_code: None },
        };
        let _ = events.send(end);
    });
    Ok(ndjson(rx))
}

/// `5` or `v5`.
fn release_number(raw: &str) -> Result<i64, ApiError> {
    raw.trim_start_matches('v').parse().map_err(|_| {
        ApiError::bad_request(format!("{raw:?} is not a release number (for example 4 or v4)"))
    })
}

async fn start_preview(
    State(daemon): State<Arc<Daemon>>,
    Path((app, n)): Path<(String, String)>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let n = release_number(&n)?;
    let host = daemon.start_preview(&app, n).await?;
    let port = daemon.settings.http_addr.port();
    let url = if port == 80 { format!("http://{host}/") } else { format!("http://{host}:{port}/") };
    Ok(Json(Done { message: format!("v{n} of {app} runs beside the current release at {url}") }))
}

async fn stop_preview(
    State(daemon): State<Arc<Daemon>>,
    Path((app, n)): Path<(String, String)>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let n = release_number(&n)?;
    daemon.stop_preview(&app, n).await?;
    Ok(Json(Done { message: format!("the preview of v{n} of {app} is stopped") }))
}

async fn promote(
    State(daemon): State<Arc<Daemon>>,
    Path((app, n)): Path<(String, String)>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let n = release_number(&n)?;
    daemon.promote(&app, n, &|line| tracing::info!(app, "{line}")).await?;
    Ok(Json(Done { message: format!("v{n} is the current release of {app}") }))
}

async fn list_domains(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
) -> ApiResult<Domains> {
    let app = app_name(&app)?;
    let record = daemon.store().app(&app)?;
    let from_env = match record.current_release {
        Some(release) => {
            let build = daemon.stored_build(&app, release);
            let (_, env) = daemon.release_env(&app, release, &build).map_err(ApiError::internal)?;
            Daemon::env_hosts(&env).unwrap_or_default()
        }
        None => Vec::new(),
    };
    Ok(Json(Domains {
        default: format!("{app}.{}", daemon.settings.domain),
        from_env,
        added: daemon.store().domains(&app)?,
    }))
}

async fn add_domain(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<DomainRequest>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let name = berth_router::normalize_host_pattern(&request.name).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{:?} is not a host name; give one like www.example.com or *.example.com",
            request.name
        ))
    })?;
    if let Some(other) = daemon.host_owner(&name).filter(|other| *other != app) {
        return Err(ApiError::conflict(format!(
            "{name} is already served by {other}; remove it there first (domains:remove {other} {name})"
        )));
    }
    daemon.store().add_domain(&app, &name)?;
    daemon.refresh_hosts(&app).map_err(ApiError::unprocessable)?;
    Ok(Json(Done { message: format!("{app} answers at {name} too") }))
}

async fn remove_domain(
    State(daemon): State<Arc<Daemon>>,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let name = berth_router::normalize_host_pattern(&name).unwrap_or(name);
    if !daemon.store().remove_domain(&app, &name)? {
        return Err(ApiError::not_found(format!(
            "{name} is not a domain added to {app} (`domains {app}` lists them; names from \
             NGINX_SERVER_NAME go away with the ENV line)"
        )));
    }
    daemon.refresh_hosts(&app).map_err(ApiError::unprocessable)?;
    Ok(Json(Done { message: format!("{app} no longer answers at {name}") }))
}

/// The names the app answers at now.
fn app_hosts(daemon: &Daemon, app: &str) -> Result<Vec<String>, ApiError> {
    let record = daemon.store().app(app)?;
    let Some(release) = record.current_release else {
        return Ok(vec![format!("{app}.{}", daemon.settings.domain)]);
    };
    let build = daemon.stored_build(app, release);
    let (_, env) = daemon.release_env(app, release, &build).map_err(ApiError::internal)?;
    daemon.hosts(app, &env).map_err(ApiError::unprocessable)
}

async fn list_auth_users(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
) -> ApiResult<Vec<AuthUser>> {
    let app = app_name(&app)?;
    let users = daemon.store().auth_users(Some(&app))?;
    Ok(Json(
        users
            .into_iter()
            .map(|record| AuthUser { user: record.user, created_at: record.created_at })
            .collect(),
    ))
}

async fn set_auth_user(
    State(daemon): State<Arc<Daemon>>,
    Path((app, user)): Path<(String, String)>,
    ApiJson(request): ApiJson<AuthPassword>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let added = daemon.set_auth_user(&app, &user, request.password).await?;
    let message = if added {
        format!("{user} may now sign in to {app}; visitors without a user and password get 401")
    } else {
        format!("{user}'s password for {app} is changed")
    };
    Ok(Json(Done { message }))
}

async fn remove_auth_user(
    State(daemon): State<Arc<Daemon>>,
    Path((app, user)): Path<(String, String)>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    daemon.remove_auth_user(&app, &user)?;
    let rest = match daemon.store().auth_users(Some(&app))?.len() {
        0 => format!("{app} no longer asks for a password"),
        n => format!("{n} user(s) may still sign in to {app}"),
    };
    Ok(Json(Done { message: format!("{user} may no longer sign in to {app}; {rest}") }))
}

async fn list_certs(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
) -> ApiResult<Vec<Certificate>> {
    let app = app_name(&app)?;
    let hosts = app_hosts(&daemon, &app)?;
    let Some(certs) = daemon.certs() else { return Ok(Json(Vec::new())) };
    let list = certs
        .info()
        .into_iter()
        .filter(|info| hosts.iter().any(|host| info.covers(host)))
        .map(|info| Certificate {
            expires: info.not_after_text(),
            origin: info.origin.to_string(),
            issuer: info.issuer,
            names: info.names,
        })
        .collect();
    Ok(Json(list))
}

async fn add_cert(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiJson(request): ApiJson<AddCertificate>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let hosts = app_hosts(&daemon, &app)?;
    let Some(certs) = daemon.certs() else {
        return Err(ApiError::conflict("this daemon serves no HTTPS (start it with --https)"));
    };
    let info = certs
        .insert(&[], request.cert_pem.as_bytes(), request.key_pem.as_bytes())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let covered: Vec<&String> = hosts.iter().filter(|h| info.covers(h)).collect();
    if covered.is_empty() {
        let _ = certs.remove(&info.names[0]);
        return Err(ApiError::bad_request(format!(
            "the certificate is for {}, none of which {app} answers at ({}); add the name first \
             with domains:add",
            info.names.join(", "),
            hosts.join(", ")
        )));
    }
    let names: Vec<&str> = covered.iter().map(|s| s.as_str()).collect();
    Ok(Json(Done {
        message: format!(
            "{app} serves this certificate for {} (issued by {}, valid until {})",
            names.join(", "),
            info.issuer,
            info.not_after_text()
        ),
    }))
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    process: Option<String>,
}

/// The environment a process of the app gets: a running instance's own, else what the
/// current release would give one.
async fn live_config(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    ApiQuery(query): ApiQuery<LiveQuery>,
) -> ApiResult<Vec<(String, String)>> {
    let app = app_name(&app)?;
    let process = query.process.unwrap_or_else(|| "web".to_owned());
    let record = daemon.store().app(&app)?;
    let Some(release) = record.current_release else {
        return Err(ApiError::conflict(format!("{app} has no release yet: push to it first")));
    };
    let mut env = match daemon.instance_env(&app, &process) {
        Some(env) => env,
        None => {
            let build = daemon.stored_build(&app, release);
            let (files, mut env) =
                daemon.release_env(&app, release, &build).map_err(ApiError::internal)?;
            if files.procfile.get(&process).is_none() {
                let names: Vec<&str> =
                    files.procfile.entries.iter().map(|e| e.name.as_str()).collect();
                return Err(ApiError::not_found(format!(
                    "{app} has no process type {process:?}; its Procfile has: {}",
                    names.join(", ")
                )));
            }
            env.push(("BERTH_PROCESS".to_owned(), format!("{process}.1")));
            env
        }
    };
    // Later layers win: keep the last value of each key, sorted.
    let map: BTreeMap<String, String> = env.drain(..).collect();
    Ok(Json(map.into_iter().collect()))
}

async fn list_ports(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
) -> ApiResult<Vec<u16>> {
    let app = app_name(&app)?;
    daemon.store().app(&app)?;
    Ok(Json(daemon.app_ports(&app)?))
}

fn port_number(raw: &str) -> Result<u16, ApiError> {
    raw.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::bad_request(format!("{raw:?} is not a port; give a number from 1 to 65535"))
    })
}

async fn add_port(
    State(daemon): State<Arc<Daemon>>,
    Path((app, port)): Path<(String, String)>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let port = port_number(&port)?;
    let router_ports = [Some(daemon.settings.http_addr.port()), daemon.https_port()];
    if router_ports.contains(&Some(port)) {
        return Err(ApiError::conflict(format!("port {port} is the router's own; pick another")));
    }
    if let Some(other) = daemon.store().add_port(&app, port)? {
        return Err(ApiError::conflict(format!(
            "port {port} belongs to {other} (ports:remove {other} {port})"
        )));
    }
    if let Err(err) = daemon.open_app_port(&app, port).await {
        daemon.store().remove_port(&app, port)?;
        return Err(ApiError::conflict(err));
    }
    Ok(Json(Done { message: format!("{app} answers on port {port} too, whatever the host name") }))
}

async fn remove_port(
    State(daemon): State<Arc<Daemon>>,
    Path((app, port)): Path<(String, String)>,
) -> ApiResult<Done> {
    let app = app_name(&app)?;
    let port = port_number(&port)?;
    if !daemon.store().remove_port(&app, port)? {
        return Err(ApiError::not_found(format!(
            "{app} has no port {port} (`ports {app}` lists them)"
        )));
    }
    daemon.close_app_port(port);
    Ok(Json(Done { message: format!("{app} no longer answers on port {port}") }))
}

/// Starts a deploy job of `commit` (already in the app's repository) and streams it.
/// `notes` come first, as steps (they go to the build log too).
fn stream_deploy(
    daemon: Arc<Daemon>,
    app: String,
    commit: String,
    who: String,
    notes: Vec<String>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let out = Arc::new(JobOutput::new(tx));
    for note in notes {
        out.step(note);
    }
    let request = DeployRequest {
        commit,
        git_ref: "refs/heads/main".to_owned(),
        git_env: Vec::new(),
        pushed_by: who,
        old_commit: None,
    };
    tokio::spawn(deploy(daemon, app, request, out));
    ndjson(rx)
}

/// Applies the config, scale and domains of a create or update request.
fn apply_settings(daemon: &Daemon, app: &str, request: &CreateApp) -> Result<(), ApiError> {
    for key in request.config.keys() {
        check_config_key(key)?;
    }
    let set: Vec<(String, String)> = request.config.clone().into_iter().collect();
    check_route_knobs(&set)?;
    daemon.store().update_config(app, &set, &[])?;
    let scale: Vec<(String, u32)> = request.scale.clone().into_iter().collect();
    if scale.iter().any(|(_, n)| *n > MAX_INSTANCES) {
        return Err(ApiError::bad_request(format!("at most {MAX_INSTANCES} instances of a type")));
    }
    daemon.store().set_scale(app, &scale)?;
    for name in &request.domains {
        let name = berth_router::normalize_host_pattern(name)
            .ok_or_else(|| ApiError::bad_request(format!("{name:?} is not a host name")))?;
        daemon.store().add_domain(app, &name)?;
    }
    Ok(())
}

/// Fetches the app's repository source, answering with the deploy's stream.
async fn pull_and_deploy(
    daemon: Arc<Daemon>,
    app: String,
    url: String,
    branch: String,
    who: String,
) -> Result<Response, ApiError> {
    let repo = daemon.settings.layout.repo(&app);
    let (fetch_url, fetch_branch) = (url.clone(), branch.clone());
    let commit =
        tokio::task::spawn_blocking(move || crate::pull::fetch(&repo, &fetch_url, &fetch_branch))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::unprocessable)?;
    daemon.store().set_repo_source(&app, &url, &branch)?;
    if let Some(owner) = daemon.settings.git_owner {
        let _ = crate::ownership::chown_tree(&daemon.settings.layout.repo(&app), owner);
    }
    Ok(stream_deploy(daemon, app, commit, who, Vec::new()))
}

async fn create_app(
    State(daemon): State<Arc<Daemon>>,
    headers: axum::http::HeaderMap,
    ApiJson(request): ApiJson<CreateApp>,
) -> Result<Response, ApiError> {
    let app = app_name(&request.name)?;
    daemon.store().create_app(&app, now())?;
    ensure_repo(&daemon.settings, &app).map_err(ApiError::internal)?;
    apply_settings(&daemon, &app, &request)?;
    match request.repo {
        Some(source) => {
            let body =
                pull_and_deploy(daemon, app, source.url, source.branch, who(&headers)).await?;
            Ok((axum::http::StatusCode::CREATED, body).into_response())
        }
        None => Ok((
            axum::http::StatusCode::CREATED,
            Json(Done { message: format!("{app} was created; push to it to deploy") }),
        )
            .into_response()),
    }
}

async fn update_app(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    headers: axum::http::HeaderMap,
    ApiJson(request): ApiJson<CreateApp>,
) -> Result<Response, ApiError> {
    let app = app_name(&app)?;
    daemon.store().app(&app)?;
    apply_settings(&daemon, &app, &request)?;
    let source = match request.repo {
        Some(source) => Some((source.url, source.branch)),
        None => daemon.store().repo_source(&app)?,
    };
    match source {
        Some((url, branch)) => {
            Ok(pull_and_deploy(daemon, app, url, branch, who(&headers)).await?.into_response())
        }
        None => {
            daemon.refresh_hosts(&app).map_err(ApiError::unprocessable)?;
            Ok(Json(Done { message: format!("{app} was updated") }).into_response())
        }
    }
}

/// Pulls again and deploys (a pull-deployed app), or builds the current commit again.
async fn redeploy(
    State(daemon): State<Arc<Daemon>>,
    Path(app): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let app = app_name(&app)?;
    let record = daemon.store().app(&app)?;
    let source = daemon.store().repo_source(&app)?;
    if let Some((url, branch)) = source {
        return pull_and_deploy(daemon, app, url, branch, who(&headers)).await;
    }
    let commit = record
        .current_release
        .and_then(|n| daemon.store().release(&app, n).ok().flatten())
        .map(|r| r.commit)
        .ok_or_else(|| {
            ApiError::conflict(format!("{app} has nothing to redeploy: push to it first"))
        })?;
    Ok(stream_deploy(daemon, app, commit, who(&headers), Vec::new()))
}

/// procserver's `GET /apps/{app}/logs/{stdout,stderr,build}`.
async fn logs_by_kind(
    State(daemon): State<Arc<Daemon>>,
    Path((app, kind)): Path<(String, String)>,
    ApiQuery(mut query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    match kind.as_str() {
        // Instances write stdout and stderr to one log, in the order they came.
        "stdout" | "stderr" => {}
        "build" => query.process = Some("build".to_owned()),
        other => {
            return Err(ApiError::not_found(format!(
                "no log named {other:?}: ask for stdout, stderr or build"
            )));
        }
    }
    get_logs(State(daemon), Path(app), ApiQuery(query)).await
}

async fn list_tokens(State(daemon): State<Arc<Daemon>>) -> ApiResult<Vec<TokenInfo>> {
    let tokens = daemon.store().tokens()?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|(name, created_at)| TokenInfo { name, created_at, token: None })
            .collect(),
    ))
}

async fn create_token(
    State(daemon): State<Arc<Daemon>>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> ApiResult<TokenInfo> {
    let name = request.name.trim();
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(ApiError::bad_request(format!(
            "invalid token name {name:?}: letters, digits, '.', '_' and '-' (for example ci-deploy)"
        )));
    }
    let token = crate::auth::new_token().map_err(|e| ApiError::internal(e.to_string()))?;
    let created_at = now();
    if !daemon.store().add_token(name, &crate::auth::hash(&token), created_at)? {
        return Err(ApiError::conflict(format!(
            "there is a token named {name} already; revoke it first"
        )));
    }
    Ok(Json(TokenInfo { name: name.to_owned(), created_at, token: Some(token) }))
}

async fn revoke_token(
    State(daemon): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> ApiResult<Done> {
    if !daemon.store().remove_token(&name)? {
        return Err(ApiError::not_found(format!(
            "there is no token named {name} (`tokens` lists them)"
        )));
    }
    Ok(Json(Done { message: format!("token {name} is revoked") }))
}
