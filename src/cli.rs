//! The commands people run on the server, directly or over ssh (`ssh berth@host ps myapp`):
//! each is a request to the daemon's API and a human-readable rendering of the answer.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
use berth_api::{
    AddCertificate, AppDetail, AppSummary, AuthPassword, AuthUser, Certificate, Client,
    ConfigUpdate, ConfigVars, DomainRequest, Domains, Done, KeepRequest, LockRequest, Logs,
    NewName, ReleaseInfo, RollbackRequest, RunRequest, Scale, TokenInfo, TokenRequest,
};
use clap::{CommandFactory, Parser, Subcommand};
use http::Method;

use crate::{EXIT_FAILURE, EXIT_USAGE};

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// List apps.
    Apps,
    /// Show an app's processes: type, pid, port, state, uptime, restarts, memory.
    Ps { app: String },
    /// Set how many instances of each process type run (TYPE=N ...), or show it.
    #[command(name = "ps:scale")]
    PsScale {
        app: String,
        #[arg(value_name = "TYPE=N")]
        counts: Vec<String>,
    },
    /// Show the newest lines of an app's logs (PROCESS: web, worker… or build).
    Logs {
        app: String,
        process: Option<String>,
        /// How many of the newest lines to show.
        #[arg(short = 'n', long = "tail", visible_alias = "lines", default_value_t = 100)]
        lines: usize,
        /// Keep printing new lines as they come, until the session ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Run a one-off command in the app's directory and environment (`run APP -- CMD ARGS`).
    Run {
        app: String,
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Show an app's config vars (values of keys that look secret are masked).
    #[command(after_help = "Example: berth config myapp --reveal")]
    Config {
        app: String,
        /// Show secret-looking values too.
        #[arg(long)]
        reveal: bool,
    },
    /// Show the environment a process of the app really gets, after every layer (Berth's
    /// variables < build < ENV < config:set < per process).
    #[command(name = "config:live", after_help = "Example: berth config:live myapp worker")]
    ConfigLive {
        app: String,
        /// The process type (web by default).
        process: Option<String>,
        #[arg(long)]
        reveal: bool,
    },
    /// Set config vars from a dotenv file on standard input, as one change.
    #[command(
        name = "config:import",
        after_help = "Example: ssh berth@server config:import myapp < .env"
    )]
    ConfigImport {
        app: String,
        /// Do not restart the app; the change applies at its next restart or deploy.
        #[arg(long)]
        no_restart: bool,
    },
    /// Everything about an app: processes, names, releases, config keys.
    #[command(name = "apps:info")]
    AppsInfo { app: String },
    /// Print one config var.
    #[command(name = "config:get")]
    ConfigGet { app: String, key: String },
    /// Set config vars (KEY=VALUE …) and restart the app.
    #[command(
        name = "config:set",
        after_help = "Example: berth config:set myapp DEBUG=0 'GREETING=Hello there'"
    )]
    ConfigSet {
        app: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Do not restart the app; the change applies at its next restart or deploy.
        #[arg(long)]
        no_restart: bool,
    },
    /// Remove config vars and restart the app.
    #[command(name = "config:unset", after_help = "Example: berth config:unset myapp DEBUG")]
    ConfigUnset {
        app: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        #[arg(long)]
        no_restart: bool,
    },
    /// Restart an app's processes.
    Restart { app: String },
    /// Stop an app's processes (its URL answers 502 until it starts).
    Stop { app: String },
    /// Start a stopped app.
    Start { app: String },
    /// Remove an app: processes, repository, releases, logs and config (data/APP is kept).
    Destroy {
        app: String,
        /// Do not ask for the app's name again.
        #[arg(long)]
        force: bool,
    },
    /// List an app's releases (number, commit, age, who, status; `*` marks the current one).
    Releases { app: String },
    /// Make an earlier release current again, code and config, without rebuilding.
    Rollback {
        app: String,
        /// The release (`5` or `v5`); the one before the current when left out.
        release: Option<String>,
    },
    /// Keep the trees of the N newest releases (default 5); older ones are pruned.
    #[command(name = "releases:keep")]
    ReleasesKeep { app: String, count: i64 },
    /// Run an earlier or newer release beside the current one, at vN.APP.<domain>.
    #[command(name = "releases:start")]
    ReleasesStart { app: String, release: String },
    /// Stop the preview of a release.
    #[command(name = "releases:stop")]
    ReleasesStop { app: String, release: String },
    /// Make a release current (switched over without dropping a request).
    #[command(name = "releases:promote")]
    ReleasesPromote { app: String, release: String },
    /// List the names an app answers at.
    Domains { app: String },
    /// Make an app answer at another name (www.example.com, *.example.com).
    #[command(name = "domains:add")]
    DomainsAdd { app: String, name: String },
    /// Stop an app answering at a name added with domains:add.
    #[command(name = "domains:remove")]
    DomainsRemove { app: String, name: String },
    /// List the users who may sign in to an app; with one or more, the router asks every
    /// visitor for a user name and password (HTTP basic auth).
    Auth { app: String },
    /// Add a user who may sign in to an app, or change their password. The password is read
    /// from standard input (one line), so that it is never in a command line or an ssh log.
    #[command(
        name = "auth:set",
        after_help = "Example: echo \"$PASSWORD\" | ssh berth@server auth:set myapp alice\n\
                      To type it, hidden: ssh -t berth@server auth:set myapp alice\n\n\
                      The app asks for a password at once, without a restart; the app still \
                      gets the Authorization header, to tell who signed in."
    )]
    AuthSet {
        app: String,
        user: String,
        /// Anything more is a password given where it must not be; refused.
        #[arg(hide = true)]
        extra: Vec<String>,
    },
    /// Remove a user; an app without users is open to every visitor again.
    #[command(name = "auth:unset", after_help = "Example: berth auth:unset myapp alice")]
    AuthUnset { app: String, user: String },
    /// Show the certificates the router serves for an app: names, issuer, expiry.
    Certs { app: String },
    /// Serve a certificate you bring (PEM files on the server, or `-` to read the chain and
    /// the key from standard input).
    #[command(name = "certs:add")]
    CertsAdd {
        app: String,
        /// The certificate chain, leaf first, or `-`.
        cert: String,
        /// The private key (left out with `-`).
        key: Option<String>,
    },
    /// List the public ports an app answers on by itself.
    Ports { app: String },
    /// Give an app a public port of its own: every request there reaches it.
    #[command(name = "ports:add", after_help = "Example: berth ports:add myapp 8081")]
    PortsAdd { app: String, port: String },
    /// Take a port away from an app.
    #[command(name = "ports:remove")]
    PortsRemove { app: String, port: String },
    /// Rename an app: its repository, releases, config, domains and data follow.
    ///
    /// Everything of the app takes the new name: repository, releases, config, scale, domains,
    /// ports, logs and data. Its processes stop and start again under the new name, at
    /// NEW_NAME.<domain>; push to NEW_NAME from then on. Refused while the app is locked or
    /// deploying; when it does not start under the new name, the rename is undone.
    #[command(name = "apps:rename", after_help = "Example: berth apps:rename myapp shop")]
    AppsRename {
        app: String,
        #[arg(value_name = "NEW_NAME")]
        new_name: String,
    },
    /// Make a new app from an app's config, scale and code (not its domains).
    ///
    /// The new app gets the app's config, scale and a copy of its repository, and is deployed
    /// from the app's current commit. The app's domains and ports stay its own.
    #[command(name = "apps:clone", after_help = "Example: berth apps:clone myapp myapp-staging")]
    AppsClone {
        app: String,
        #[arg(value_name = "NEW_NAME")]
        new_name: String,
    },
    /// Refuse pushes to an app until it is unlocked.
    #[command(name = "apps:lock")]
    AppsLock {
        app: String,
        /// Why, shown to whoever pushes.
        reason: Vec<String>,
    },
    /// Allow pushes again.
    #[command(name = "apps:unlock")]
    AppsUnlock { app: String },
    /// List the API tokens.
    Tokens,
    /// Create an API token for scripts and CI (shown once; admin keys only over ssh).
    #[command(name = "tokens:create", after_help = "Example: berth tokens:create ci")]
    TokensCreate { name: String },
    /// Revoke an API token.
    #[command(name = "tokens:revoke")]
    TokensRevoke { name: String },
    /// List the keys that may push and run commands (name, fingerprint, admin).
    Keys,
    /// Authorise another key (admin keys only): `keys:add NAME < key.pub`.
    #[command(name = "keys:add", after_help = "Example: ssh berth@server keys:add bob < bob.pub")]
    KeysAdd { name: String },
    /// Remove a key added with keys:add (admin keys only).
    #[command(name = "keys:remove")]
    KeysRemove { name: String },
    /// Show the commands, or one command's usage and an example.
    Help { command: Option<String> },
}

/// The CLI as reached over ssh: only the server commands.
#[derive(Debug, Parser)]
#[command(name = "berth", disable_help_subcommand = true, disable_version_flag = true)]
struct SshCli {
    /// Print what read commands show as JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ServerCommand,
}

/// The names of the commands ssh users may run.
pub fn command_names() -> Vec<String> {
    SshCli::command().get_subcommands().map(|c| c.get_name().to_owned()).collect()
}

/// Runs CLI arguments received over ssh. Anything that is not a Berth command is refused.
pub fn run_ssh_args(root: &Path, args: &[String], who: Option<String>) -> anyhow::Result<u8> {
    let first = args.iter().map(String::as_str).find(|a| *a != "--json").unwrap_or("help");
    if matches!(first, "--help" | "-h") {
        return run(root, ServerCommand::Help { command: None }, who, false);
    }
    let names = command_names();
    if !names.iter().any(|name| name == first) {
        let closest = names.iter().min_by_key(|name| edit_distance(first, name));
        let hint = match closest.filter(|name| edit_distance(first, name) <= 2) {
            Some(name) => format!(" (did you mean `{name}`?)"),
            None => String::new(),
        };
        eprintln!(
            "berth: `{first}` is not a Berth command{hint}; this account runs only Berth's \
             commands, never a shell (`ssh <server> help` lists them)"
        );
        return Ok(EXIT_USAGE);
    }
    let argv = std::iter::once("berth".to_owned()).chain(args.iter().cloned());
    match SshCli::try_parse_from(argv) {
        Ok(cli) => run(root, cli.command, who, cli.json),
        Err(err) => {
            let code = if err.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = err.print();
            Ok(code)
        }
    }
}

/// The commands `help` lists, in groups as piku's help has them by prefix; every server
/// command is in exactly one (a unit test holds this).
const HELP_GROUPS: &[(&str, &[&str])] = &[
    (
        "Apps",
        &["apps", "apps:info", "apps:rename", "apps:clone", "apps:lock", "apps:unlock", "destroy"],
    ),
    ("Processes", &["ps", "ps:scale", "restart", "stop", "start", "run", "logs"]),
    (
        "Config",
        &["config", "config:get", "config:set", "config:unset", "config:import", "config:live"],
    ),
    (
        "Releases",
        &[
            "releases",
            "rollback",
            "releases:keep",
            "releases:start",
            "releases:stop",
            "releases:promote",
        ],
    ),
    (
        "Names and certificates",
        &[
            "domains",
            "domains:add",
            "domains:remove",
            "ports",
            "ports:add",
            "ports:remove",
            "certs",
            "certs:add",
        ],
    ),
    (
        "Access",
        &[
            "auth",
            "auth:set",
            "auth:unset",
            "keys",
            "keys:add",
            "keys:remove",
            "tokens",
            "tokens:create",
            "tokens:revoke",
        ],
    ),
    ("Help", &["help"]),
];

/// `help` without a command: the commands by group, each with its one-line description.
fn grouped_help() -> String {
    let cli = SshCli::command();
    let about = |name: &str| {
        let sub = cli.find_subcommand(name);
        sub.and_then(|sub| sub.get_about()).map(ToString::to_string).unwrap_or_default()
    };
    let width = HELP_GROUPS.iter().flat_map(|(_, names)| names.iter()).map(|n| n.len()).max();
    let width = width.unwrap_or(0) + 2;
    let mut out = String::from(
        "Berth's commands, run over ssh: `ssh berth@SERVER COMMAND APP ...`, or `berth COMMAND` \
         in an app's repository\n",
    );
    for (group, names) in HELP_GROUPS {
        out.push_str(&format!("\n{group}:\n"));
        for name in *names {
            out.push_str(&format!("  {name:<width$}{}\n", about(name)));
        }
    }
    out.push_str(
        "\n--json prints what read commands show as JSON. `help COMMAND` shows a command's \
         usage and an example.\n",
    );
    out
}

/// Levenshtein distance, for suggesting the command a user meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push((previous[j] + cost).min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

pub fn run(
    root: &Path,
    command: ServerCommand,
    who: Option<String>,
    json: bool,
) -> anyhow::Result<u8> {
    if let ServerCommand::Help { command } = &command {
        let mut cli = SshCli::command().override_usage("berth <COMMAND> [APP] [ARGS]");
        match command {
            None => print!("{}", grouped_help()),
            Some(name) => match cli.find_subcommand_mut(name) {
                Some(sub) => println!("{}", sub.render_long_help()),
                None => {
                    eprintln!("berth: there is no command `{name}` (`help` lists them)");
                    return Ok(EXIT_USAGE);
                }
            },
        }
        return Ok(0);
    }
    let client = Client::new(root.join("run").join("berth.sock")).with_who(who);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match runtime.block_on(execute(&client, command, json)) {
        Ok(code) => Ok(code),
        Err(err) => match err.downcast::<berth_api::ClientError>() {
            Ok(err) => {
                eprintln!("berth: {err}");
                Ok(EXIT_FAILURE)
            }
            Err(err) => Err(err),
        },
    }
}

fn app_path(app: &str, rest: &str) -> anyhow::Result<String> {
    let app = berth_procfile::validate_app_name(app)?;
    Ok(format!("/apps/{app}{rest}"))
}

async fn execute(client: &Client, command: ServerCommand, json: bool) -> anyhow::Result<u8> {
    let mut stdout = std::io::stdout().lock();
    if json {
        // Read commands print what the API answered, for scripts.
        let path = match &command {
            ServerCommand::Apps => Some("/apps".to_owned()),
            ServerCommand::Ps { app } | ServerCommand::AppsInfo { app } => Some(app_path(app, "")?),
            ServerCommand::Releases { app } => Some(app_path(app, "/releases")?),
            ServerCommand::Config { app, .. } => Some(app_path(app, "/config")?),
            ServerCommand::Domains { app } => Some(app_path(app, "/domains")?),
            ServerCommand::Certs { app } => Some(app_path(app, "/certs")?),
            ServerCommand::Auth { app } => Some(app_path(app, "/auth")?),
            ServerCommand::PsScale { app, counts } if counts.is_empty() => {
                Some(app_path(app, "/scale")?)
            }
            ServerCommand::Logs { app, lines, follow: false, process } => Some(app_path(
                app,
                &format!(
                    "/logs?lines={lines}{}",
                    process
                        .as_ref()
                        .map(|p| format!("&process={}", encode_query(p)))
                        .unwrap_or_default()
                ),
            )?),
            _ => None,
        };
        if let Some(path) = path {
            let value: serde_json::Value = client.get(&path).await?;
            writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?)?;
            return Ok(0);
        }
    }
    match command {
        ServerCommand::Help { .. } => unreachable!("handled before connecting"),
        ServerCommand::Keys | ServerCommand::KeysAdd { .. } | ServerCommand::KeysRemove { .. } => {
            eprintln!(
                "berth: keys are managed over ssh (`ssh berth@server keys`), or on the server as \
                 the berth user with setup:ssh"
            );
            return Ok(EXIT_USAGE);
        }
        ServerCommand::ConfigLive { app, process, reveal } => {
            let process = process.unwrap_or_else(|| "web".to_owned());
            let path = app_path(&app, &format!("/config/live?process={}", encode_query(&process)))?;
            let vars: Vec<(String, String)> = client.get(&path).await?;
            for (key, value) in vars {
                writeln!(stdout, "{key}={}", shown(&key, &value, reveal))?;
            }
        }
        ServerCommand::ConfigImport { app, no_restart } => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            let parsed = berth_procfile::parse_env(&text, &|_| None);
            if parsed.has_errors() {
                for error in parsed.errors() {
                    eprintln!("berth: {error}");
                }
                return Ok(EXIT_USAGE);
            }
            let set: BTreeMap<String, String> = parsed.value.into_iter().collect();
            let keys: Vec<String> = set.keys().cloned().collect();
            let update = ConfigUpdate { set, unset: Vec::new(), restart: !no_restart };
            let result: ConfigVars =
                client.send(Method::PATCH, &app_path(&app, "/config")?, &update).await?;
            writeln!(stdout, "imported {} on {app}{}", keys.join(", "), restarted_note(&result))?;
        }
        ServerCommand::AppsInfo { app } => {
            let detail: AppDetail = client.get(&app_path(&app, "")?).await?;
            render_ps(&mut stdout, &detail)?;
            let releases: Vec<ReleaseInfo> = client.get(&app_path(&app, "/releases")?).await?;
            let config: ConfigVars = client.get(&app_path(&app, "/config")?).await?;
            let scale: Option<Scale> = client.get(&app_path(&app, "/scale")?).await.ok();
            writeln!(
                stdout,
                "releases: {} ({} available for rollback)",
                releases.len(),
                releases.iter().filter(|r| r.available && !r.current).count()
            )?;
            writeln!(
                stdout,
                "config keys: {}",
                config.vars.keys().cloned().collect::<Vec<_>>().join(", ")
            )?;
            if let Some(scale) = scale {
                let counts: Vec<String> =
                    scale.counts.iter().map(|(t, n)| format!("{t}={n}")).collect();
                writeln!(stdout, "scale: {}", counts.join(" "))?;
            }
        }
        ServerCommand::Releases { app } => {
            let releases: Vec<ReleaseInfo> = client.get(&app_path(&app, "/releases")?).await?;
            if releases.is_empty() {
                writeln!(stdout, "{app} has no releases yet: push to it")?;
                return Ok(0);
            }
            let now = unix_now();
            let rows = releases.iter().map(|r| {
                let what = match r.kind.as_str() {
                    "config" => format!("config (build of v{})", r.build_of),
                    _ => "push".to_owned(),
                };
                let status = if r.status == "succeeded" && !r.available {
                    "pruned".to_owned()
                } else {
                    r.status.clone()
                };
                vec![
                    format!("{}v{}", if r.current { "*" } else { " " }, r.number),
                    r.commit[..r.commit.len().min(7)].to_owned(),
                    format!("{} ago", format_duration((now - r.created_at).max(0) as u64)),
                    r.pushed_by.clone(),
                    what,
                    status,
                ]
            });
            write_table(
                &mut stdout,
                &[" RELEASE", "COMMIT", "WHEN", "WHO", "WHAT", "STATUS"],
                rows,
            )?;
        }
        ServerCommand::Rollback { app, release } => {
            let release = match release {
                None => None,
                Some(text) => match text.trim_start_matches('v').parse::<i64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        eprintln!(
                            "berth: `{text}` is not a release number (for example `rollback {app} 4`)"
                        );
                        return Ok(EXIT_USAGE);
                    }
                },
            };
            let done: Done = client
                .send(Method::POST, &app_path(&app, "/rollback")?, &RollbackRequest { release })
                .await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::ReleasesStart { app, release } => {
            let path = app_path(&app, &format!("/releases/{}/preview", encode_query(&release)))?;
            let done: Done = client.send(Method::POST, &path, &()).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::ReleasesStop { app, release } => {
            let path = app_path(&app, &format!("/releases/{}/preview", encode_query(&release)))?;
            let done: Done = client.send(Method::DELETE, &path, &()).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::ReleasesPromote { app, release } => {
            let path = app_path(&app, &format!("/releases/{}/promote", encode_query(&release)))?;
            let done: Done = client.send(Method::POST, &path, &()).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::Domains { app } => {
            let domains: Domains = client.get(&app_path(&app, "/domains")?).await?;
            writeln!(stdout, "{}  (default)", domains.default)?;
            for name in &domains.from_env {
                writeln!(stdout, "{name}  (NGINX_SERVER_NAME)")?;
            }
            for name in &domains.added {
                writeln!(stdout, "{name}  (domains:add)")?;
            }
        }
        ServerCommand::DomainsAdd { app, name } => {
            let done: Done = client
                .send(Method::POST, &app_path(&app, "/domains")?, &DomainRequest { name })
                .await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::DomainsRemove { app, name } => {
            let path = app_path(&app, &format!("/domains/{}", encode_query(&name)))?;
            let done: Done = client.send(Method::DELETE, &path, &()).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::Auth { app } => {
            let users: Vec<AuthUser> = client.get(&app_path(&app, "/auth")?).await?;
            if users.is_empty() {
                writeln!(
                    stdout,
                    "{app} asks for no password; add a user with `auth:set {app} USER` and the \
                     password on standard input"
                )?;
                return Ok(0);
            }
            let now = unix_now();
            let rows = users.iter().map(|u| {
                let age = format_duration((now - u.created_at).max(0) as u64);
                vec![u.user.clone(), format!("{age} ago")]
            });
            write_table(&mut stdout, &["USER", "ADDED"], rows)?;
        }
        ServerCommand::AuthSet { app, user, extra } => {
            if !extra.is_empty() {
                // Not repeated: it may be a real password, already in a shell history.
                eprintln!(
                    "berth: auth:set takes the password on standard input, not as an argument \
                     (echo \"$PASSWORD\" | ssh berth@server auth:set {app} {user}); if that was \
                     a real password, choose another"
                );
                return Ok(EXIT_USAGE);
            }
            let password = match read_password(&user)? {
                Ok(password) => password,
                Err(problem) => {
                    eprintln!("berth: {problem}");
                    return Ok(EXIT_USAGE);
                }
            };
            let path = app_path(&app, &format!("/auth/{}", encode_query(&user)))?;
            let done: Done = client.send(Method::PUT, &path, &AuthPassword { password }).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::AuthUnset { app, user } => {
            let path = app_path(&app, &format!("/auth/{}", encode_query(&user)))?;
            let done: Done = client.send(Method::DELETE, &path, &()).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::Certs { app } => {
            let certs: Vec<Certificate> = client.get(&app_path(&app, "/certs")?).await?;
            if certs.is_empty() {
                writeln!(
                    stdout,
                    "{app} has no certificate yet; the router serves a self-signed one meanwhile"
                )?;
            }
            let rows = certs.iter().map(|c| {
                vec![c.names.join(","), c.issuer.clone(), c.expires.clone(), c.origin.clone()]
            });
            write_table(&mut stdout, &["NAMES", "ISSUER", "EXPIRES", "FROM"], rows)?;
        }
        ServerCommand::CertsAdd { app, cert, key } => {
            let request = match (cert.as_str(), key) {
                ("-", None) => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                    split_pem_bundle(&text)?
                }
                (cert, Some(key)) => AddCertificate {
                    cert_pem: std::fs::read_to_string(cert)
                        .with_context(|| format!("cannot read {cert}"))?,
                    key_pem: std::fs::read_to_string(&key)
                        .with_context(|| format!("cannot read {key}"))?,
                },
                (_, None) => {
                    eprintln!(
                        "berth: give the certificate and the key files, or `-` to send both on stdin"
                    );
                    return Ok(EXIT_USAGE);
                }
            };
            let done: Done =
                client.send(Method::POST, &app_path(&app, "/certs")?, &request).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::Ports { app } => {
            let ports: Vec<u16> = client.get(&app_path(&app, "/ports")?).await?;
            if ports.is_empty() {
                writeln!(stdout, "{app} has no port of its own (`ports:add {app} PORT`)")?;
            }
            for port in ports {
                writeln!(stdout, "{port}")?;
            }
        }
        ServerCommand::PortsAdd { app, port } => {
            let path = app_path(&app, &format!("/ports/{}", encode_query(&port)))?;
            let done: Done = client.send(Method::PUT, &path, &()).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::PortsRemove { app, port } => {
            let path = app_path(&app, &format!("/ports/{}", encode_query(&port)))?;
            let done: Done = client.send(Method::DELETE, &path, &()).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::Tokens => {
            let tokens: Vec<TokenInfo> = client.get("/tokens").await?;
            if tokens.is_empty() {
                writeln!(stdout, "no API tokens (`tokens:create NAME` makes one)")?;
            }
            for token in tokens {
                writeln!(stdout, "{}", token.name)?;
            }
        }
        ServerCommand::TokensCreate { name } => {
            let token: TokenInfo =
                client.send(Method::POST, "/tokens", &TokenRequest { name }).await?;
            writeln!(
                stdout,
                "{}\n(the token {}: keep it now, it is not shown again; send it as `Authorization: Bearer TOKEN`)",
                token.token.unwrap_or_default(),
                token.name
            )?;
        }
        ServerCommand::TokensRevoke { name } => {
            let path = format!("/tokens/{}", encode_query(&name));
            let done: Done = client.send(Method::DELETE, &path, &()).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::ReleasesKeep { app, count } => {
            let done: Done = client
                .send(Method::PUT, &app_path(&app, "/keep")?, &KeepRequest { keep: count })
                .await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::AppsLock { app, reason } => {
            let reason = (!reason.is_empty()).then(|| reason.join(" "));
            let done: Done = client
                .send(Method::PUT, &app_path(&app, "/lock")?, &LockRequest { reason })
                .await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::AppsRename { app, new_name } => {
            let path = app_path(&app, "/rename")?;
            let done: Done = client.send(Method::POST, &path, &NewName { name: new_name }).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::AppsClone { app, new_name } => {
            let path = app_path(&app, "/clone")?;
            let result = client
                .stream(Method::POST, &path, &NewName { name: new_name }, echo_lines(&mut stdout))
                .await?;
            if let Err(error) = result {
                eprintln!("berth: {error}");
                return Ok(EXIT_FAILURE);
            }
        }
        ServerCommand::AppsUnlock { app } => {
            let done: Done = client.send(Method::DELETE, &app_path(&app, "/lock")?, &()).await?;
            writeln!(stdout, "{}", done.message)?;
        }
        ServerCommand::Apps => {
            let apps: Vec<AppSummary> = client.get("/apps").await?;
            if apps.is_empty() {
                writeln!(stdout, "no apps yet: push one with `git push berth@<server>:APP main`")?;
                return Ok(0);
            }
            let rows = apps.iter().map(|a| {
                vec![
                    a.name.clone(),
                    a.state.clone(),
                    a.release.map(|n| format!("v{n}")).unwrap_or_else(|| "-".into()),
                    a.instances.to_string(),
                    a.url.clone(),
                ]
            });
            write_table(&mut stdout, &["APP", "STATE", "RELEASE", "PROCESSES", "URL"], rows)?;
        }
        ServerCommand::Ps { app } => {
            let detail: AppDetail = client.get(&app_path(&app, "")?).await?;
            render_ps(&mut stdout, &detail)?;
        }
        ServerCommand::PsScale { app, counts } => {
            let path = app_path(&app, "/scale")?;
            let scale: Scale = if counts.is_empty() {
                client.get(&path).await?
            } else {
                let mut update = Scale::default();
                for pair in &counts {
                    let parsed =
                        pair.split_once('=').and_then(|(t, n)| Some((t, n.parse::<u32>().ok()?)));
                    let Some((process_type, count)) = parsed else {
                        eprintln!(
                            "berth: `{pair}` is not TYPE=N (for example `ps:scale {app} web=2 worker=1`)"
                        );
                        return Ok(EXIT_USAGE);
                    };
                    update.counts.insert(process_type.to_owned(), count);
                }
                client.send(Method::PATCH, &path, &update).await?
            };
            let counts: Vec<String> =
                scale.counts.iter().map(|(t, n)| format!("{t}={n}")).collect();
            writeln!(stdout, "{app}: {}", counts.join(" "))?;
        }
        ServerCommand::Logs { app, process, lines, follow } => {
            let mut query = format!("/logs?lines={lines}");
            if let Some(process) = &process {
                query.push_str(&format!("&process={}", encode_query(process)));
            }
            if follow {
                query.push_str("&follow=1");
                let path = app_path(&app, &query)?;
                let result = client.stream_get(&path, echo_lines(&mut stdout)).await?;
                if let Err(error) = result {
                    eprintln!("berth: {error}");
                    return Ok(EXIT_FAILURE);
                }
                return Ok(0);
            }
            let logs: Logs = client.get(&app_path(&app, &query)?).await?;
            if logs.lines.is_empty() {
                writeln!(stdout, "{app} has no log lines yet")?;
            }
            for line in logs.lines {
                writeln!(stdout, "{}", line.display())?;
            }
        }
        ServerCommand::Run { app, command } => {
            let command = shell_command(&command);
            let path = app_path(&app, "/run")?;
            let (result, code) = client
                .stream_with_code(
                    Method::POST,
                    &path,
                    &RunRequest { command },
                    echo_lines(&mut stdout),
                )
                .await?;
            return Ok(match (result, code) {
                (Ok(()), _) => 0,
                (Err(_), Some(code)) => u8::try_from(code).unwrap_or(EXIT_FAILURE),
                (Err(error), None) => {
                    eprintln!("berth: {error}");
                    EXIT_FAILURE
                }
            });
        }
        ServerCommand::Config { app, reveal } => {
            let config: ConfigVars = client.get(&app_path(&app, "/config")?).await?;
            if config.vars.is_empty() {
                writeln!(
                    stdout,
                    "{app} has no config vars; set one with `config:set {app} KEY=VALUE`"
                )?;
            }
            for (key, value) in config.vars {
                writeln!(stdout, "{key}={}", shown(&key, &value, reveal))?;
            }
        }
        ServerCommand::ConfigGet { app, key } => {
            let config: ConfigVars = client.get(&app_path(&app, "/config")?).await?;
            match config.vars.get(&key) {
                Some(value) => writeln!(stdout, "{value}")?,
                None => {
                    eprintln!("berth: {app} has no config var {key} (`config {app}` lists them)");
                    return Ok(EXIT_FAILURE);
                }
            }
        }
        ServerCommand::ConfigSet { app, pairs, no_restart } => {
            let mut set = BTreeMap::new();
            for pair in &pairs {
                let Some((key, value)) = pair.split_once('=') else {
                    eprintln!(
                        "berth: `{pair}` is not KEY=VALUE (for example `config:set {app} DEBUG=1`)"
                    );
                    return Ok(EXIT_USAGE);
                };
                set.insert(key.to_owned(), value.to_owned());
            }
            let keys: Vec<String> = set.keys().cloned().collect();
            let update = ConfigUpdate { set, unset: Vec::new(), restart: !no_restart };
            let result: ConfigVars =
                client.send(Method::PATCH, &app_path(&app, "/config")?, &update).await?;
            writeln!(stdout, "set {} on {app}{}", keys.join(", "), restarted_note(&result))?;
        }
        ServerCommand::ConfigUnset { app, keys, no_restart } => {
            let update =
                ConfigUpdate { set: BTreeMap::new(), unset: keys.clone(), restart: !no_restart };
            let result: ConfigVars =
                client.send(Method::PATCH, &app_path(&app, "/config")?, &update).await?;
            writeln!(stdout, "unset {} on {app}{}", keys.join(", "), restarted_note(&result))?;
        }
        ServerCommand::Restart { app } => action(client, &mut stdout, &app, "/restart").await?,
        ServerCommand::Stop { app } => action(client, &mut stdout, &app, "/stop").await?,
        ServerCommand::Start { app } => action(client, &mut stdout, &app, "/start").await?,
        ServerCommand::Destroy { app, force } => {
            let path = app_path(&app, "")?;
            // Fail on a missing app before asking anything.
            let _: AppDetail = client.get(&path).await?;
            if !force && !confirm_name(&app)? {
                eprintln!("berth: destroy cancelled: the name did not match (or use --force)");
                return Ok(EXIT_FAILURE);
            }
            let done: Done =
                client.send(Method::DELETE, &format!("{path}?confirm={app}"), &()).await?;
            writeln!(stdout, "{}", done.message)?;
        }
    }
    Ok(0)
}

async fn action(
    client: &Client,
    stdout: &mut impl Write,
    app: &str,
    what: &str,
) -> anyhow::Result<()> {
    let done: Done = client.send(Method::POST, &app_path(app, what)?, &()).await?;
    writeln!(stdout, "{}", done.message)?;
    Ok(())
}

/// Whether a config key looks like it holds a secret.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    ["SECRET", "PASSWORD", "PASSWD", "TOKEN", "KEY", "PRIVATE", "CREDENTIAL", "AUTH", "_URL"]
        .iter()
        .any(|word| key.contains(word))
}

/// A value as `config` shows it: secret-looking ones masked unless revealed.
fn shown(key: &str, value: &str, reveal: bool) -> String {
    if reveal || !is_secret(key) || value.is_empty() {
        value.to_owned()
    } else {
        let visible: String = value.chars().take(3).collect();
        format!("{visible}… (masked; --reveal shows it)")
    }
}

fn restarted_note(result: &ConfigVars) -> &'static str {
    if result.restarted { "; restarted" } else { "" }
}

/// The shell command for `run`'s words: one word is a shell command line as it is
/// (`run app -- 'echo $PORT'`), several are quoted one by one (`run app -- ls -la 'a b'`).
fn shell_command(words: &[String]) -> String {
    let words: Vec<&String> = words.iter().skip_while(|w| *w == "--").collect();
    if let [only] = words.as_slice() {
        return (*only).clone();
    }
    let quote = |w: &String| {
        if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c))
        {
            w.clone()
        } else {
            format!("'{}'", w.replace('\'', "'\\''"))
        }
    };
    words.into_iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// Splits a PEM bundle (a chain and a key, in any order) into the two parts.
fn split_pem_bundle(text: &str) -> anyhow::Result<AddCertificate> {
    let mut cert_pem = String::new();
    let mut key_pem = String::new();
    let mut block = String::new();
    for line in text.lines() {
        block.push_str(line);
        block.push('\n');
        if line.starts_with("-----END ") {
            if line.contains("PRIVATE KEY") {
                key_pem.push_str(&block)
            } else {
                cert_pem.push_str(&block)
            }
            block.clear();
        }
    }
    anyhow::ensure!(!cert_pem.is_empty(), "no certificate in the PEM given on stdin");
    anyhow::ensure!(!key_pem.is_empty(), "no private key in the PEM given on stdin");
    Ok(AddCertificate { cert_pem, key_pem })
}

/// Seconds since the Unix epoch, for ages.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads a password for `user` from the first line of standard input (a prompt goes to a
/// terminal, if that is where it comes from); the inner error says what is wrong with it.
fn read_password(user: &str) -> anyhow::Result<Result<String, String>> {
    let stdin = std::io::stdin();
    // Typed on a terminal (here, or through `ssh -t`), the password is not shown.
    // (Hidden before the prompt shows, so that nothing typed after it is echoed.)
    let hidden = if nix::unistd::isatty(&stdin).unwrap_or(false) {
        let hidden = EchoOff::on(&stdin);
        eprint!("password for {user}: ");
        hidden
    } else {
        None
    };
    let context = "cannot read the password from standard input";
    let mut line = String::new();
    match &hidden {
        Some(hidden) => line = hidden.read_line().context(context)?,
        None => _ = stdin.lock().read_line(&mut line).context(context)?,
    }
    let interrupt = hidden.as_ref().and_then(|hidden| hidden.interrupt);
    drop(hidden);
    if interrupt.is_some_and(|key| line.ends_with(char::from(key))) {
        eprintln!();
        return Ok(Err("cancelled; the password was not changed".to_owned()));
    }
    Ok(password_from_line(&line))
}

/// A terminal that does not show what is typed on it, as long as this lives; the Enter key
/// still moves to the next line. `None` when the terminal cannot be set so.
///
/// Ctrl-C would kill the process before the terminal is given back its echo, and leave the
/// shell typing blind: instead it ends the line, with `interrupt` (the terminal's Ctrl-C
/// character) last, for the reader to cancel after the terminal is restored.
struct EchoOff<'a> {
    terminal: std::os::fd::BorrowedFd<'a>,
    before: nix::sys::termios::Termios,
    interrupt: Option<u8>,
}

impl<'a> EchoOff<'a> {
    fn on(terminal: &'a impl std::os::fd::AsFd) -> Option<EchoOff<'a>> {
        use nix::sys::termios::{
            LocalFlags, SetArg, SpecialCharacterIndices, tcgetattr, tcsetattr,
        };

        let terminal = terminal.as_fd();
        let before = tcgetattr(terminal).ok()?;
        let mut hidden = before.clone();
        hidden.local_flags.remove(LocalFlags::ECHO);
        hidden.local_flags.insert(LocalFlags::ECHONL);
        // 0 is _POSIX_VDISABLE: no key interrupts, and none needs catching.
        let interrupt = Some(before.control_chars[SpecialCharacterIndices::VINTR as usize])
            .filter(|&key| key != 0);
        if let Some(key) = interrupt {
            // No signal; the key ends the line as Enter does (VEOL is an extra line end).
            hidden.local_flags.remove(LocalFlags::ISIG);
            hidden.control_chars[SpecialCharacterIndices::VEOL as usize] = key;
        }
        tcsetattr(terminal, SetArg::TCSANOW, &hidden).ok()?;
        Some(EchoOff { terminal, before, interrupt })
    }

    /// The next line typed, with what ended it (a newline, or the interrupt key), or what
    /// was typed before the end of input (Ctrl-D). Read from the terminal itself: a
    /// `BufRead` line would wait on past the interrupt key for a newline.
    fn read_line(&self) -> std::io::Result<String> {
        let mut line = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = nix::unistd::read(self.terminal, &mut chunk)?;
            line.extend_from_slice(&chunk[..n]);
            let ended = |last: &u8| *last == b'\n' || Some(*last) == self.interrupt;
            if n == 0 || line.last().is_some_and(ended) {
                break;
            }
        }
        String::from_utf8(line).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "the password is not UTF-8")
        })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};

        let _ = tcsetattr(self.terminal, SetArg::TCSANOW, &self.before);
    }
}

/// The password in a line read from standard input, without its line ending.
fn password_from_line(line: &str) -> Result<String, String> {
    let password = line.strip_suffix('\n').unwrap_or(line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err("no password on standard input; send one, for example \
                    echo \"$PASSWORD\" | ssh berth@server auth:set APP USER"
            .to_owned());
    }
    Ok(password.to_owned())
}

/// Asks for the app's name on stdin (ssh passes it through), as Heroku does for destroy.
fn confirm_name(app: &str) -> anyhow::Result<bool> {
    eprint!(
        "This destroys {app}: its processes, repository, releases, logs and config.\n\
         Type the app's name to confirm: "
    );
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the confirmation")?;
    Ok(line.trim() == app)
}

/// Prints each line of a streamed answer (a deploy's output, a followed log) as it comes.
fn echo_lines(stdout: &mut impl Write) -> impl FnMut(&str) + '_ {
    move |line| {
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }
}

/// Percent-encodes a query value (process names are plain, but the user typed it).
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn render_ps(out: &mut impl Write, detail: &AppDetail) -> std::io::Result<()> {
    let release = match (&detail.release, &detail.commit) {
        (Some(n), Some(commit)) => {
            format!("release v{n} (commit {})", &commit[..commit.len().min(7)])
        }
        (Some(n), None) => format!("release v{n}"),
        _ => "never deployed".to_owned(),
    };
    writeln!(out, "{}: {}, {release}, {}", detail.name, detail.state, detail.url)?;
    if !detail.hosts.is_empty() {
        writeln!(out, "hosts: {}", detail.hosts.join(", "))?;
    }
    for cron in &detail.crons {
        writeln!(out, "cron {}: {} {}", cron.name, cron.schedule, cron.command)?;
    }
    if detail.processes.is_empty() {
        writeln!(out, "no processes are running")?;
        return Ok(());
    }
    let rows = detail.processes.iter().map(|p| {
        vec![
            format!("{}.{}", p.process_type, p.index),
            p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            p.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            p.state.clone(),
            p.uptime_secs.map(format_duration).unwrap_or_else(|| "-".into()),
            p.restarts.to_string(),
            p.memory_bytes.map(format_bytes).unwrap_or_else(|| "-".into()),
            p.last_exit.clone().unwrap_or_default(),
        ]
    });
    let header = ["PROCESS", "PID", "PORT", "STATE", "UPTIME", "RESTARTS", "MEMORY", "LAST EXIT"];
    write_table(out, &header, rows)
}

fn format_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b => format!("{}K", b / 1024),
    }
}

fn format_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn write_table(
    out: &mut impl Write,
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// What the terminal shows (its master side reads) until it has shown `end`, or for at
    /// most 5 s: the tty layer echoes from a kernel worker, a moment after the typing.
    fn shown_until(master: &std::os::fd::OwnedFd, end: &[u8]) -> Vec<u8> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut shown = Vec::new();
        while !shown.ends_with(end) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(left.as_millis().max(1) as i32).unwrap();
            if poll(&mut fds, timeout).unwrap() == 0 {
                continue;
            }
            let mut buf = [0u8; 256];
            let n = nix::unistd::read(master, &mut buf).unwrap();
            shown.extend_from_slice(&buf[..n]);
        }
        shown
    }

    #[test]
    fn a_password_typed_on_a_terminal_is_not_shown() {
        use nix::sys::termios::{LocalFlags, tcgetattr};

        let pty = nix::pty::openpty(None, None).unwrap();
        let echoes = || tcgetattr(&pty.slave).unwrap().local_flags.contains(LocalFlags::ECHO);
        assert!(echoes(), "a new terminal shows typing");
        {
            let _hidden = EchoOff::on(&pty.slave).expect("a terminal can hide typing");
            assert!(!echoes());
            nix::unistd::write(&pty.master, b"s3cret\n").unwrap();
            // Only the line ending comes back, and the program gets the password.
            assert_eq!(shown_until(&pty.master, b"\r\n"), b"\r\n");
            let mut typed = [0u8; 16];
            let n = nix::unistd::read(&pty.slave, &mut typed).unwrap();
            assert_eq!(&typed[..n], b"s3cret\n");
        }
        assert!(echoes(), "the terminal shows typing again afterwards");
        nix::unistd::write(&pty.master, b"visible\n").unwrap();
        assert_eq!(shown_until(&pty.master, b"visible\r\n"), b"visible\r\n");
    }

    #[test]
    fn ctrl_c_at_a_hidden_prompt_ends_the_line_instead_of_killing_blind() {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use nix::sys::termios::{LocalFlags, tcgetattr};
        use std::os::fd::AsFd;

        let pty = nix::pty::openpty(None, None).unwrap();
        let flags = || tcgetattr(&pty.slave).unwrap().local_flags;
        assert!(flags().contains(LocalFlags::ISIG), "a new terminal turns Ctrl-C into SIGINT");
        {
            let hidden = EchoOff::on(&pty.slave).expect("a terminal can hide typing");
            assert_eq!(hidden.interrupt, Some(0x03), "Ctrl-C is the interrupt key by default");
            assert!(!flags().contains(LocalFlags::ISIG));
            // Half a password, then Ctrl-C: the line ends there, with the key last.
            nix::unistd::write(&pty.master, b"half\x03").unwrap();
            let mut ready = [PollFd::new(pty.slave.as_fd(), PollFlags::POLLIN)];
            assert_eq!(poll(&mut ready, PollTimeout::from(5000u16)).unwrap(), 1, "no line ended");
            assert_eq!(hidden.read_line().unwrap(), "half\x03");
            // A whole line, typed in two goes, comes back whole.
            nix::unistd::write(&pty.master, b"whole ").unwrap();
            nix::unistd::write(&pty.master, b"line\n").unwrap();
            assert_eq!(hidden.read_line().unwrap(), "whole line\n");
        }
        assert!(flags().contains(LocalFlags::ISIG), "Ctrl-C signals again afterwards");
        assert!(flags().contains(LocalFlags::ECHO));
    }

    #[test]
    fn help_groups_hold_every_command_once() {
        let mut grouped: Vec<&str> =
            super::HELP_GROUPS.iter().flat_map(|(_, names)| names.iter().copied()).collect();
        grouped.sort_unstable();
        let mut commands = super::command_names();
        commands.sort_unstable();
        assert_eq!(grouped, commands, "a command is missing from HELP_GROUPS, or listed twice");
        let help = super::grouped_help();
        assert!(help.contains("\nConfig:\n  config "), "{help}");
        assert!(help.contains("  auth:set "), "{help}");
    }

    use super::*;

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(format_duration(5), "5s");
        assert_eq!(format_duration(125), "2m5s");
        assert_eq!(format_duration(7260), "2h1m");
        assert_eq!(format_duration(90000), "1d1h");
        assert_eq!(format_bytes(512 * 1024), "512K");
        assert_eq!(format_bytes(25 * 1024 * 1024 + 512 * 1024), "25.5M");
        assert_eq!(format_bytes(3 << 30), "3.0G");
    }

    #[test]
    fn tables_align_columns() {
        let mut out = Vec::new();
        let rows = vec![vec!["a".to_owned(), "long value".to_owned(), "x".to_owned()]].into_iter();
        write_table(&mut out, &["NAME", "V", "LAST"], rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME  V           LAST\na     long value  x\n"
        );
    }

    #[test]
    fn ssh_users_get_only_server_commands() {
        let names = command_names();
        for expected in ["apps", "ps", "logs", "config:set", "destroy", "help"] {
            assert!(names.contains(&expected.to_owned()), "{expected} missing from {names:?}");
        }
        assert!(!names.contains(&"daemon".to_owned()));
        assert!(!names.contains(&"setup:ssh".to_owned()));
    }

    #[test]
    fn run_words_become_one_shell_command() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(shell_command(&words(&["echo $PORT && ls"])), "echo $PORT && ls");
        assert_eq!(
            shell_command(&words(&["--", "ls", "-la", "a b", "it's"])),
            "ls -la 'a b' 'it'\\''s'"
        );
        assert_eq!(
            shell_command(&words(&["python", "manage.py", "migrate"])),
            "python manage.py migrate"
        );
    }

    #[test]
    fn secrets_are_masked_and_typos_are_near() {
        assert_eq!(
            shown("DATABASE_URL", "postgres://u:p@h/db", false),
            "pos… (masked; --reveal shows it)"
        );
        assert_eq!(shown("SECRET_KEY", "abcdef", true), "abcdef");
        assert_eq!(shown("DEBUG", "1", false), "1");
        assert_eq!(edit_distance("confg", "config"), 1);
        assert_eq!(edit_distance("ps:scal", "ps:scale"), 1);
        assert_eq!(edit_distance("apps", "logs"), 3);
    }

    #[test]
    fn passwords_come_from_one_line_without_its_ending() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("s3cret\n", Ok("s3cret")),
            ("s3cret\r\n", Ok("s3cret")),
            ("s3cret", Ok("s3cret")),
            (" spaced out \n", Ok(" spaced out ")),
            ("\n", Err(())),
            ("\r\n", Err(())),
            ("", Err(())),
        ];
        for (line, expected) in cases {
            let got = password_from_line(line);
            assert_eq!(got.as_deref().map_err(|_| ()), *expected, "{line:?}");
        }
        assert!(password_from_line("").unwrap_err().contains("no password on standard input"));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query("web"), "web");
        assert_eq!(encode_query("a&b=c"), "a%26b%3Dc");
    }
}
