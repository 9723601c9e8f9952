//! The forced command of every authorised key: runs git's pack services for app repositories
//! and Berth's CLI commands, and refuses everything else before touching the disk.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use berth_api::{Client, RepoInfo, RepoRequest};
use http::Method;

use crate::ssh_command::{SshCommand, parse_ssh_command};
use crate::{EXIT_FAILURE, EXIT_USAGE, cli};

/// Who the key is, from its forced command.
#[derive(Debug, Clone)]
pub struct Identity {
    pub fingerprint: String,
    pub name: Option<String>,
    pub admin: bool,
    pub keys_file: Option<std::path::PathBuf>,
}

impl Identity {
    /// How release history names the key.
    fn who(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.fingerprint.clone())
    }
}

pub fn run(root: &Path, root_explicit: bool, identity: &Identity) -> anyhow::Result<u8> {
    let key = identity.who();
    let key = key.as_str();
    let original = std::env::var("SSH_ORIGINAL_COMMAND").ok();
    let command = match parse_ssh_command(original.as_deref()) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("berth: {err}");
            return Ok(EXIT_USAGE);
        }
    };
    match command {
        SshCommand::Shell => {
            eprintln!(
                "berth: this account gives no shell; run a Berth command instead, for example \
                 `ssh <server> apps` (`ssh <server> help` lists them)"
            );
            Ok(EXIT_USAGE)
        }
        SshCommand::ReceivePack { app } => git_service(root, key, &app, "receive-pack", true),
        SshCommand::UploadPack { app } => git_service(root, key, &app, "upload-pack", false),
        SshCommand::Cli { args } if args.first().is_some_and(|a| a.starts_with("keys")) => {
            // Keys live in the authorized_keys file of this account, which this process may
            // write: they are sshd's configuration, not Berth's state.
            let path = match &identity.keys_file {
                Some(path) => path.clone(),
                None => {
                    let home = std::env::var_os("HOME").context("HOME is not set")?;
                    std::path::PathBuf::from(home).join(".ssh").join("authorized_keys")
                }
            };
            let root = root_explicit.then_some(root);
            crate::keys::keys_command(&args, &path, root, identity.admin, &mut std::io::stdin())
        }
        SshCommand::Cli { args }
            if !identity.admin && args.first().is_some_and(|a| a.starts_with("tokens")) =>
        {
            eprintln!("berth: only admin keys (those setup:ssh added) may manage API tokens");
            Ok(crate::EXIT_USAGE)
        }
        SshCommand::Cli { args } => cli::run_ssh_args(root, &args, Some(key.to_owned())),
    }
}

/// Makes sure the app's repository exists (creating the app on a first push), then hands the
/// connection to git.
fn git_service(
    root: &Path,
    key: &str,
    app: &str,
    service: &str,
    create: bool,
) -> anyhow::Result<u8> {
    let client = Client::new(root.join("run").join("berth.sock"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let path = format!("/apps/{app}/repo");
    let repo: RepoInfo =
        match runtime.block_on(client.send(Method::POST, &path, &RepoRequest { create })) {
            Ok(repo) => repo,
            Err(err) => {
                eprintln!("berth: {err}");
                return Ok(EXIT_FAILURE);
            }
        };
    if repo.created {
        eprintln!("-----> Created app {app}");
    }
    // exec keeps stdin and stdout, which carry git's protocol, connected to the ssh client.
    let err = Command::new("git").arg(service).arg(&repo.path).env("BERTH_KEY", key).exec();
    Err(err).context("cannot run git (apt-get install git)")
}
