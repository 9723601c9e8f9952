//! Pull deploys (procserver's model): the daemon fetches an app's code from a git URL into
//! its repository instead of waiting for a push. Credentials in URLs never reach a log or an
//! answer.

use std::path::Path;
use std::process::Command;

/// The URL with its credentials (user and password, or a token in the user part) replaced
/// by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    match authority.rsplit_once('@') {
        Some((_, host)) => match path {
            Some(path) => format!("{scheme}://***@{host}/{path}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_owned(),
    }
}

/// Fetches `branch` of `url` into the bare repository as `refs/heads/main` and returns the
/// commit it points to.
pub fn fetch(repo: &Path, url: &str, branch: &str) -> Result<String, String> {
    if branch.is_empty()
        || branch.starts_with('-')
        || branch.contains("..")
        || branch.contains(char::is_whitespace)
    {
        return Err(format!("{branch:?} is not a branch name"));
    }
    let output = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["fetch", "--quiet", "--no-tags", "--", url])
        .arg(format!("+refs/heads/{branch}:refs/heads/main"))
        // Only transports that move code, never `ext::` (which runs commands).
        .env("GIT_ALLOW_PROTOCOL", "https:http:git:ssh:file")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("cannot run git (apt-get install git): {e}"))?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr).replace(url, &redact(url));
        return Err(format!(
            "git could not fetch {branch} from {}: {}",
            redact(url),
            message.trim()
        ));
    }
    let head = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["rev-parse", "refs/heads/main"])
        .output()
        .map_err(|e| e.to_string())?;
    let commit = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    if commit.is_empty() {
        return Err(format!("{branch} of {} has no commit", redact(url)));
    }
    Ok(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact("https://user:secret@git.example.com/a/b.git"),
            "https://***@git.example.com/a/b.git"
        );
        assert_eq!(
            redact("https://token@git.example.com/a.git"),
            "https://***@git.example.com/a.git"
        );
        assert_eq!(redact("https://git.example.com/a.git"), "https://git.example.com/a.git");
        assert_eq!(redact("/srv/repo.git"), "/srv/repo.git");
    }
}
