//! Request and response bodies of the daemon's API (JSON; deploy output is NDJSON).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The body of every error response: a message for a person, naming the problem and the fix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// One line of `GET /apps`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct AppSummary {
    pub name: String,
    /// "running" or "stopped": what the user asked for.
    pub state: String,
    /// The current release, if the app was ever deployed.
    pub release: Option<i64>,
    pub url: String,
    pub instances: usize,
}

/// `GET /apps/{app}`: the app and every instance of its processes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct AppDetail {
    pub name: String,
    pub state: String,
    pub release: Option<i64>,
    pub commit: Option<String>,
    pub url: String,
    pub hosts: Vec<String>,
    pub processes: Vec<InstanceInfo>,
    /// The cron lines that are scheduled now.
    #[serde(default)]
    pub crons: Vec<CronInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct CronInfo {
    pub name: String,
    pub schedule: String,
    /// The command, or `GET /path` for a web-cron.
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct InstanceInfo {
    pub process_type: String,
    pub index: u32,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// "running", "crashed" (waiting to restart) or "stopped".
    pub state: String,
    pub uptime_secs: Option<u64>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Resident memory of the instance's processes (its whole process group).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

/// `GET/PATCH /apps/{app}/scale`: instances per process type.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Scale {
    pub counts: BTreeMap<String, u32>,
}

/// `PATCH /apps/{app}/config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigUpdate {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
    /// Restart the app with the change (the default), or let it apply at the next restart.
    #[serde(default = "yes")]
    pub restart: bool,
}

fn yes() -> bool {
    true
}

/// `GET /apps/{app}/config` and the answer to a config update.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ConfigVars {
    pub vars: BTreeMap<String, String>,
    /// Whether the app's processes were restarted to pick the change up.
    #[serde(default)]
    pub restarted: bool,
}

/// `GET /apps/{app}/logs?process=TYPE&lines=N`: the newest lines of the app's instances,
/// interleaved by time. With `follow=1` the answer is a stream of [`JobEvent::Line`]s instead,
/// each a [`LogEntry`] as [`LogEntry::display`] writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Logs {
    pub lines: Vec<LogEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct LogEntry {
    /// Which log: `web.1`, `build/3`.
    pub source: String,
    pub timestamp: Option<String>,
    pub text: String,
}

impl LogEntry {
    /// `2026-11-22T13:05:01.123Z web.1 | text`, as `berth logs` shows it.
    pub fn display(&self) -> String {
        match &self.timestamp {
            Some(ts) => format!("{ts} {} | {}", self.source, self.text),
            None => format!("{} | {}", self.source, self.text),
        }
    }
}

/// `POST /apps/{app}/deploys`: deploy a commit that is in the app's repository.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub commit: String,
    /// The ref that was pushed, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// Git's quarantine variables while a `pre-receive` hook runs (see `berth-build`).
    #[serde(default)]
    pub git_env: Vec<(String, String)>,
    /// Who asked: an ssh key fingerprint, or "api".
    #[serde(default)]
    pub pushed_by: String,
    /// Where the ref was before the push (all zeros for a new branch), for a push: a push
    /// that waited for another one is refused when the branch moved meanwhile.
    #[serde(default)]
    pub old_commit: Option<String>,
}

/// `POST /apps/{app}/repo`: make sure the app and its repository exist before a push.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoRequest {
    /// Create the app when it does not exist (a push), or fail (a fetch).
    pub create: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct RepoInfo {
    pub path: String,
    pub created: bool,
}

/// `POST /apps/{app}/run`: a one-off command in the app's directory and environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Run by `/bin/sh -c`.
    pub command: String,
}

/// One line of `GET /apps/{app}/releases`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ReleaseInfo {
    pub number: i64,
    pub commit: String,
    pub created_at: i64,
    /// Who made it: an ssh key's fingerprint, `api` or `local`.
    pub pushed_by: String,
    /// "building", "failed" or "succeeded".
    pub status: String,
    /// "push" or "config".
    pub kind: String,
    /// The release whose build it runs (itself for a push).
    pub build_of: i64,
    pub current: bool,
    /// Whether it can be made current (it deployed and its tree was not pruned).
    pub available: bool,
}

/// `POST /apps/{app}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to make current; the one before the current when absent.
    #[serde(default)]
    pub release: Option<i64>,
}

/// `PUT /apps/{app}/keep`: how many release trees to keep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepRequest {
    pub keep: i64,
}

/// `PUT /apps/{app}/lock`: refuse deploys until unlocked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /apps/{app}/domains`: the names an app answers at, by where they come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Domains {
    /// `APP.<base domain>`.
    pub default: String,
    /// From NGINX_SERVER_NAME in the current release.
    pub from_env: Vec<String>,
    /// Added with `domains:add`.
    pub added: Vec<String>,
}

/// `POST /apps/{app}/domains`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainRequest {
    pub name: String,
}

/// One user of `GET /apps/{app}/auth`: who may sign in to the app through the router's
/// basic auth.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct AuthUser {
    pub user: String,
    /// When the user was added (Unix seconds).
    pub created_at: i64,
}

/// `PUT /apps/{app}/auth/{user}`: the user's password, which the daemon keeps only as a
/// salted slow hash.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthPassword {
    pub password: String,
}

/// Never shows the password, so that a debug log cannot leak it.
impl std::fmt::Debug for AuthPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthPassword").field("password", &"<hidden>").finish()
    }
}

/// One certificate of `GET /apps/{app}/certs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Certificate {
    pub names: Vec<String>,
    pub issuer: String,
    /// When it expires, as an HTTP date.
    pub expires: String,
    /// "acme" or "user".
    pub origin: String,
}

/// `POST /apps/{app}/certs`: a certificate the user brings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddCertificate {
    /// The chain, leaf first (PEM).
    pub cert_pem: String,
    /// The leaf's private key (PEM).
    pub key_pem: String,
}

/// `POST /apps`: create an app, and deploy it from a git repository when one is given (the
/// procserver model: pull, not push).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    pub name: String,
    #[serde(default)]
    pub repo: Option<RepoSource>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub scale: BTreeMap<String, u32>,
    #[serde(default)]
    pub domains: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoSource {
    pub url: String,
    #[serde(default = "main_branch")]
    pub branch: String,
}

fn main_branch() -> String {
    "main".to_owned()
}

/// `POST /apps/{app}/rename` and `POST /apps/{app}/clone`: the name the app (or its copy)
/// gets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewName {
    pub name: String,
}

/// `POST /tokens`: a new API token; the answer is the only time it is shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct TokenInfo {
    pub name: String,
    pub created_at: i64,
    /// Only in the answer to `POST /tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A plain acknowledgement with a message for the user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Done {
    pub message: String,
}

/// One line of a streamed job (NDJSON): output lines, then exactly one `End`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    Line {
        text: String,
    },
    End {
        ok: bool,
        error: Option<String>,
        /// The exit status of the command, for jobs that run one (`run`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
}
