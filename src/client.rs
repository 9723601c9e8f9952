//! The local client: on a developer's machine, inside an app's git repository, `berth
//! COMMAND ...` runs `ssh USER@HOST COMMAND APP ...` on the server the `berth` remote points to
//! (piku's client script and the heroku CLI, in the same binary). Also `berth init` and
//! `berth remote add`. The ssh command is `$BERTH_SSH_COMMAND`, else `$GIT_SSH_COMMAND`, else
//! `ssh` (split at spaces).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::EXIT_USAGE;

/// Where the server is and which app, from a git remote URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// `user@host` as ssh takes it.
    pub destination: String,
    pub port: Option<u16>,
    pub app: String,
}

/// Parses `user@host:app` (scp-like, what `git remote add berth berth@host:app` writes) and
/// `ssh://user@host[:port]/app`.
pub fn parse_remote_url(url: &str) -> Option<Remote> {
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("ssh://") {
        let (authority, path) = rest.split_once('/')?;
        let (destination, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host.to_owned(), Some(port.parse().ok()?))
            }
            _ => (authority.to_owned(), None),
        };
        let app = berth_procfile::validate_app_name(path).ok()?;
        return Some(Remote { destination, port, app });
    }
    if url.contains("://") {
        return None;
    }
    let (destination, path) = url.split_once(':')?;
    let app = berth_procfile::validate_app_name(path).ok()?;
    (!destination.is_empty()).then(|| Remote {
        destination: destination.to_owned(),
        port: None,
        app,
    })
}

/// The remote named `name` of the git repository around the current directory.
fn find_remote(name: &str) -> anyhow::Result<Remote> {
    let output = Command::new("git")
        .args(["remote", "get-url", name])
        .output()
        .context("cannot run git (install git)")?;
    if !output.status.success() {
        bail!(
            "no git remote named {name} here: run this inside your app's repository, add the \
             remote with `berth remote add SERVER [APP]`, or name another with -r/--remote"
        );
    }
    let url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    parse_remote_url(&url).with_context(|| {
        format!("the {name} remote is {url:?}, not USER@HOST:APP; fix it with `git remote set-url {name} berth@SERVER:APP`")
    })
}

/// Commands that take no app after them.
const WITHOUT_APP: &[&str] = &["apps", "help"];

/// Quotes a word for the server's command line (split shell-style there, never run by a
/// shell).
fn quote(word: &str) -> String {
    if !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Runs a server command over ssh: `args` are the words after `berth` (the command first),
/// with `-a/--app APP` and `-r/--remote NAME` taken out. Replaces this process with ssh, so
/// the command's output and exit status are ssh's.
pub fn run_remote(args: &[String]) -> anyhow::Result<u8> {
    let mut app = None;
    let mut remote_name = std::env::var("BERTH_REMOTE").unwrap_or_else(|_| "berth".to_owned());
    let mut words = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-a" | "--app" => app = Some(iter.next().context("-a needs an app name")?.clone()),
            "-r" | "--remote" => {
                remote_name = iter.next().context("-r needs a remote name")?.clone()
            }
            "--" => {
                words.push(arg.clone());
                words.extend(iter.by_ref().cloned());
            }
            _ => words.push(arg.clone()),
        }
    }
    let remote = find_remote(&remote_name)?;
    let app = match app {
        Some(app) => berth_procfile::validate_app_name(&app)?,
        None => remote.app.clone(),
    };
    let Some((command, rest)) = words.split_first() else {
        eprintln!("berth: which command? `berth help` lists them");
        return Ok(EXIT_USAGE);
    };
    let mut remote_words = vec![command.clone()];
    if !WITHOUT_APP.contains(&command.as_str()) {
        remote_words.push(app);
    }
    remote_words.extend(rest.iter().cloned());

    // The ssh git uses for this repository is the one to use (a key, a port, options).
    let ssh_command = std::env::var("BERTH_SSH_COMMAND")
        .or_else(|_| std::env::var("GIT_SSH_COMMAND"))
        .unwrap_or_else(|_| "ssh".to_owned());
    let mut parts = ssh_command.split_whitespace();
    let mut ssh = Command::new(parts.next().unwrap_or("ssh"));
    ssh.args(parts);
    if let Some(port) = remote.port {
        ssh.arg("-p").arg(port.to_string());
    }
    // `run` gets a terminal when this one is (interactive shells, consoles), and so does
    // `auth:set`, which then hides the password as it is typed.
    if matches!(command.as_str(), "run" | "auth:set")
        && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
    {
        ssh.arg("-t");
    }
    ssh.arg(&remote.destination);
    ssh.arg(remote_words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "));
    let err = ssh.exec();
    Err(err).context("cannot run ssh (install openssh-client)")
}

/// `berth init`: an example Procfile and ENV in the current directory, never over existing
/// files.
pub fn init(dir: &Path) -> anyhow::Result<u8> {
    let files = [
        (
            "Procfile",
            "# One process per line; web gets $PORT and is served at http://APP.<domain>/\nweb: python3 -m http.server $PORT --bind $BIND_ADDRESS\n# worker: python3 worker.py\n# cron: */5 * * * * python3 tidy.py\n# release: python3 migrate.py\n",
        ),
        (
            "ENV",
            "# Variables every process gets; `berth config:set` overrides them.\n# NGINX_SERVER_NAME=www.example.com\nGREETING=Hello\n",
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        if path.exists() {
            println!("{name} exists; left as it is");
        } else {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {name}");
        }
    }
    Ok(0)
}

/// `berth remote add SERVER [APP]`: the `berth` git remote, `berth@SERVER:APP` (APP defaults
/// to the directory's name).
pub fn remote_add(server: &str, app: Option<&str>, name: &str) -> anyhow::Result<u8> {
    let app = match app {
        Some(app) => app.to_owned(),
        None => {
            let dir = std::env::current_dir()?;
            dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_ascii_lowercase()
        }
    };
    let app = berth_procfile::validate_app_name(&app)?;
    let destination =
        if server.contains('@') { server.to_owned() } else { format!("berth@{server}") };
    let url = format!("{destination}:{app}");
    let status = Command::new("git")
        .args(["remote", "add", name, &url])
        .status()
        .context("cannot run git")?;
    if !status.success() {
        bail!(
            "git could not add the remote {name} (does it exist already? `git remote -v` shows them)"
        );
    }
    println!("added the git remote {name}: {url}\ndeploy with `git push {name} main`");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_parse() {
        let remote = |destination: &str, port, app: &str| {
            Some(Remote { destination: destination.into(), port, app: app.into() })
        };
        assert_eq!(parse_remote_url("berth@server:myapp"), remote("berth@server", None, "myapp"));
        assert_eq!(
            parse_remote_url("berth@server:myapp.git"),
            remote("berth@server", None, "myapp")
        );
        assert_eq!(
            parse_remote_url("ssh://berth@server:2222/myapp"),
            remote("berth@server", Some(2222), "myapp")
        );
        assert_eq!(
            parse_remote_url("ssh://berth@server/myapp"),
            remote("berth@server", None, "myapp")
        );
        assert_eq!(parse_remote_url("https://github.com/x/y.git"), None);
        assert_eq!(parse_remote_url("berth@server:../etc"), None);
        assert_eq!(parse_remote_url("no-colon"), None);
    }

    #[test]
    fn words_are_quoted_for_the_server() {
        assert_eq!(quote("web=2"), "web=2");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }
}
