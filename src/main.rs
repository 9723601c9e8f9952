//! The `berth` binary: parses the command line and dispatches to the daemon, the ssh entry,
//! the git hook or a CLI command (a client of the daemon's API); maps errors to exit codes.

mod cli;
mod client;
mod hook;
mod keys;
mod ssh;
mod ssh_command;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status of a command that failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status of a command that was refused or misused.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    disable_help_subcommand = true,
    about = "A self-hosted platform-as-a-service: git push, Procfile, router and API in one binary"
)]
struct Args {
    /// Berth's data directory (default: $BERTH_ROOT, else ~/.berth).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,

    /// Print what read commands show as JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Debug, Subcommand)]
enum TopCommand {
    /// Run the daemon: store, supervisor, router and API.
    Daemon {
        /// Where the router listens for HTTP.
        #[arg(long, value_name = "ADDR:PORT")]
        http: Option<std::net::SocketAddr>,
        /// Where the router listens for HTTPS and HTTP/2 (default 0.0.0.0:443 as root, none
        /// otherwise).
        #[arg(long, value_name = "ADDR:PORT")]
        https: Option<std::net::SocketAddr>,
        /// Do not serve HTTPS.
        #[arg(long, conflicts_with = "https")]
        no_https: bool,
        /// Obtain certificates from an ACME CA: Let's Encrypt by default, or a directory URL
        /// or piku's ACME_ROOT_CA name (on by default as root when HTTPS is served).
        #[arg(long, value_name = "URL")]
        acme_directory: Option<String>,
        /// The contact address given to the ACME CA.
        #[arg(long, value_name = "EMAIL")]
        acme_email: Option<String>,
        /// A CA certificate (PEM) to trust for the ACME server's own HTTPS (the daemon's CA
        /// and private CAs an app's ACME_ROOT_CA names).
        #[arg(long, value_name = "FILE")]
        acme_ca_file: Option<PathBuf>,
        /// How the ACME CA validates names: http-01 (the router answers on the HTTP port,
        /// 80) or tls-alpn-01 (on the HTTPS port, 443).
        #[arg(long, value_name = "METHOD", value_parser = ["http-01", "tls-alpn-01"])]
        acme_challenge: Option<String>,
        /// Never ask an ACME CA for certificates.
        #[arg(long)]
        no_acme: bool,
        /// Serve the API on TCP too (every request needs a token from tokens:create).
        #[arg(long, value_name = "ADDR:PORT")]
        api: Option<std::net::SocketAddr>,
        /// The API's host name: the TCP API then speaks HTTPS only, with a certificate for
        /// this name (from the ACME CA, or self-signed until one is there).
        #[arg(long, value_name = "HOST", requires = "api")]
        api_host: Option<String>,
        /// Base domain: apps are served at APP.<domain>.
        #[arg(long, default_value = "localhost")]
        domain: String,
    },
    /// The forced command of an authorised ssh key (reads SSH_ORIGINAL_COMMAND).
    #[command(hide = true)]
    Ssh {
        /// The key's fingerprint.
        #[arg(long)]
        key: String,
        /// The key's name, recorded as who pushed.
        #[arg(long)]
        name: Option<String>,
        /// The key may add and remove keys.
        #[arg(long)]
        admin: bool,
        /// The authorized_keys file the key is in, when not ~/.ssh/authorized_keys.
        #[arg(long, value_name = "FILE")]
        keys_file: Option<PathBuf>,
    },
    /// The pre-receive hook of an app's repository.
    #[command(name = "git-hook", hide = true)]
    GitHook { app: String },
    /// Holds the router's socket while the daemon restarts (started by the daemon).
    #[command(hide = true)]
    Keeper {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Writes standard input to a log file with timestamps and rotation (for the supervisor).
    #[command(name = "log-writer", hide = true)]
    LogWriter {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = berth_supervise::logs::DEFAULT_MAX_BYTES)]
        max_bytes: u64,
        #[arg(long, default_value_t = berth_supervise::logs::DEFAULT_KEEP)]
        keep: u32,
    },
    /// Authorise a public key to push and run Berth commands over ssh.
    #[command(name = "setup:ssh")]
    SetupSsh {
        /// The public key file (e.g. ~/.ssh/id_ed25519.pub), or - for standard input.
        public_key: PathBuf,
        /// The authorized_keys file to write (default: ~/.ssh/authorized_keys).
        #[arg(long, value_name = "FILE")]
        authorized_keys: Option<PathBuf>,
        /// The key's name (default: from the key's comment).
        #[arg(long)]
        name: Option<String>,
    },
    /// Write an example Procfile and ENV here (on your machine).
    Init,
    /// Add the git remote that deploys this repository: `berth remote add SERVER [APP]`.
    Remote {
        #[command(subcommand)]
        action: RemoteAction,
    },
    /// Print shell completions: `berth completions bash > /etc/bash_completion.d/berth`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `berth man | man -l -`.
    Man,
    /// Print the API's OpenAPI document (the daemon serves it at GET /openapi.json too).
    Openapi,
    #[command(flatten)]
    Server(cli::ServerCommand),
}

#[derive(Debug, Subcommand)]
enum RemoteAction {
    /// Add the remote (`berth@SERVER:APP`; APP defaults to this directory's name).
    Add {
        server: String,
        app: Option<String>,
        /// The remote's name.
        #[arg(long, default_value = "berth")]
        name: String,
    },
}

/// On a developer's machine (no daemon socket here) a server command goes over ssh to the
/// server of the repository's `berth` remote; returns its exit status when that is the case.
fn client_mode(argv: &[String]) -> Option<anyhow::Result<u8>> {
    let mut iter = argv.iter().skip(1);
    let mut command = None;
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-a" | "--app" | "-r" | "--remote" => {
                iter.next();
            }
            "--root" => return None,
            word if word.starts_with('-') => {}
            word => {
                command = Some(word.to_owned());
                break;
            }
        }
    }
    let command = command?;
    if !cli::command_names().contains(&command) {
        return None;
    }
    let (root, _) = resolve_root(None);
    if root.join("run").join("berth.sock").exists() {
        return None;
    }
    Some(client::run_remote(&argv[1..]))
}

/// `--root`, else `$BERTH_ROOT`, else `~/.berth`. The second value says whether the root was
/// chosen explicitly (and so must be passed on to the commands ssh keys run).
fn resolve_root(flag: Option<PathBuf>) -> (PathBuf, bool) {
    if let Some(root) = flag {
        return (absolute(root), true);
    }
    if let Some(root) = std::env::var_os("BERTH_ROOT").filter(|v| !v.is_empty()) {
        return (absolute(PathBuf::from(root)), true);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    (home.join(".berth"), false)
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(result) = client_mode(&argv) {
        return exit(result);
    }
    let args = Args::parse();
    let (root, root_explicit) = resolve_root(args.root);
    let result = match args.command {
        TopCommand::Daemon {
            http,
            https,
            no_https,
            domain,
            acme_directory,
            acme_email,
            acme_ca_file,
            acme_challenge,
            no_acme,
            api,
            api_host,
        } => {
            let root_user = nix::unistd::geteuid().is_root();
            let https = match (https, no_https) {
                (_, true) => None,
                (Some(addr), false) => Some(addr),
                (None, false) => root_user.then(|| "0.0.0.0:443".parse().expect("valid address")),
            };
            let wants_acme = acme_directory.is_some()
                || acme_email.is_some()
                || acme_ca_file.is_some()
                || acme_challenge.is_some();
            let acme = (!no_acme && https.is_some() && (wants_acme || root_user)).then(|| {
                berth_daemon::AcmeOptions {
                    directory: acme_directory.unwrap_or_default(),
                    email: acme_email,
                    ca_file: acme_ca_file,
                    challenge: acme_challenge,
                }
            });
            run_daemon(root, http, https, acme, api, api_host, domain)
        }
        TopCommand::Ssh { key, name, admin, keys_file } => {
            let identity = ssh::Identity { fingerprint: key, name, admin, keys_file };
            ssh::run(&root, root_explicit, &identity)
        }
        TopCommand::GitHook { app } => hook::run(&root, &app),
        TopCommand::Keeper { socket } => berth_daemon::run_keeper(&socket)
            .map(|()| 0)
            .map_err(|e| anyhow::anyhow!("socket keeper on {}: {e}", socket.display())),
        TopCommand::LogWriter { file, max_bytes, keep } => {
            // The writer runs in a process group of its own, so signals meant for a terminal or
            // for the instance's group do not reach it: it ends when its input does.
            berth_supervise::logs::run_writer(std::io::stdin().lock(), &file, max_bytes, keep)
                .map(|()| 0)
                .map_err(|e| anyhow::anyhow!("cannot write the log {}: {e}", file.display()))
        }
        TopCommand::SetupSsh { public_key, authorized_keys, name } => keys::setup_ssh(
            &public_key,
            authorized_keys,
            root_explicit.then_some(root.as_path()),
            name.as_deref(),
        ),
        TopCommand::Server(command) => cli::run(&root, command, None, args.json),
        TopCommand::Init => {
            std::env::current_dir().map_err(Into::into).and_then(|dir| client::init(&dir))
        }
        TopCommand::Remote { action: RemoteAction::Add { server, app, name } } => {
            client::remote_add(&server, app.as_deref(), &name)
        }
        TopCommand::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Args::command(), "berth", &mut std::io::stdout());
            Ok(0)
        }
        TopCommand::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&berth_daemon::openapi_document()).unwrap_or_default()
            );
            Ok(0)
        }
        TopCommand::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Args::command())
                .render(&mut std::io::stdout())
                .map(|()| 0)
                .map_err(Into::into)
        }
    };
    exit(result)
}

fn exit(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("berth: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// A reader that went away (`berth logs | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run_daemon(
    root: PathBuf,
    http: Option<std::net::SocketAddr>,
    https: Option<std::net::SocketAddr>,
    acme: Option<berth_daemon::AcmeOptions>,
    api: Option<std::net::SocketAddr>,
    api_host: Option<String>,
    domain: String,
) -> anyhow::Result<u8> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // As root the router takes the standard port; as a user, a port a user may bind.
    let http = http.unwrap_or_else(|| {
        if nix::unistd::geteuid().is_root() {
            "0.0.0.0:80".parse().expect("valid address")
        } else {
            "127.0.0.1:8080".parse().expect("valid address")
        }
    });
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let options =
        berth_daemon::DaemonOptions { root, http, https, domain, acme, api, api_host, exe };
    runtime.block_on(berth_daemon::run(options))?;
    Ok(0)
}
