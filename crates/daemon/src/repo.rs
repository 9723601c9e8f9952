//! The bare repository each app receives pushes in, and its `pre-receive` hook.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::ownership::chown_tree;
use crate::state::Settings;

/// Creates `repos/APP.git` with the hook that deploys each push. Returns whether it was new.
/// The hook is rewritten when the repo exists, so a moved binary or root is picked up.
pub fn ensure_repo(settings: &Settings, app: &str) -> Result<bool, String> {
    let repo = settings.layout.repo(app);
    let created = !repo.join("HEAD").exists();
    if created {
        let output = Command::new("git")
            .args(["init", "--bare", "--quiet", "--initial-branch=main"])
            .arg(&repo)
            .output()
            .map_err(|e| format!("cannot run git (apt-get install git): {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "git init of {} failed: {}",
                repo.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }
    write_hook(&repo, settings, app).map_err(|e| format!("cannot write the git hook: {e}"))?;
    if let Some(run_as) = settings.git_owner {
        chown_tree(&repo, run_as)
            .map_err(|e| format!("cannot hand {} to the git user: {e}", repo.display()))?;
    }
    Ok(created)
}

/// Copies a repository to `target` file by file, so every object comes along (also one no
/// branch reaches any more, such as the commit of a release deployed before a force push).
pub fn copy_repo(source: &Path, target: &Path) -> std::io::Result<()> {
    let meta = source.symlink_metadata()?;
    if meta.is_dir() {
        std::fs::create_dir(target)?;
        for entry in std::fs::read_dir(source)? {
            let entry = entry?;
            copy_repo(&entry.path(), &target.join(entry.file_name()))?;
        }
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(source)?, target)?;
    } else {
        std::fs::copy(source, target)?;
    }
    Ok(())
}

fn write_hook(repo: &Path, settings: &Settings, app: &str) -> std::io::Result<()> {
    let hook = repo.join("hooks").join("pre-receive");
    std::fs::create_dir_all(hook.parent().unwrap_or(repo))?;
    let script = format!(
        "#!/bin/sh\n# Written by Berth: every push to main or master deploys, and a failed deploy\n\
         # rejects the push.\nexec {} --root {} git-hook {}\n",
        shell_quote(&settings.exe.display().to_string()),
        shell_quote(&settings.layout.root().display().to_string()),
        shell_quote(app),
    );
    std::fs::write(&hook, script)?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
}

/// Quotes a word for /bin/sh.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
