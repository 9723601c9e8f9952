//! Checking a commit out into a release directory and reading its Procfile and ENV.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use berth_procfile::{Procfile, parse_env, parse_procfile};

/// Where the commit to build comes from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The bare repository.
    pub repo: PathBuf,
    pub commit: String,
    /// Extra environment for git: during a `pre-receive` hook the pushed objects are still in
    /// git's quarantine directory, which these variables (`GIT_OBJECT_DIRECTORY`,
    /// `GIT_ALTERNATE_OBJECT_DIRECTORIES`) point to.
    pub git_env: Vec<(String, String)>,
}

/// Writes the tree of `source.commit` into `dest` (which must not exist yet), like a clean
/// `git checkout -f`: only versioned files, no `.git`.
pub fn checkout(source: &Source, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)
        .with_context(|| format!("failed to create {}", dest.display()))?;
    let mut git = Command::new("git")
        .arg("--git-dir")
        .arg(&source.repo)
        .args(["archive", "--format=tar", &source.commit])
        .envs(source.git_env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run git (is git installed? apt-get install git)")?;
    let archive = git.stdout.take().context("git archive has no stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .stdin(Stdio::from(archive))
        .stderr(Stdio::piped())
        .output()
        .context("failed to run tar (apt-get install tar)")?;
    let git = git.wait_with_output().context("failed to wait for git archive")?;
    if !git.status.success() {
        bail!(
            "git archive of commit {} failed: {}",
            source.commit,
            String::from_utf8_lossy(&git.stderr).trim()
        );
    }
    if !tar.status.success() {
        bail!("unpacking the commit failed: {}", String::from_utf8_lossy(&tar.stderr).trim());
    }
    Ok(())
}

/// The files at the top of an app's tree that tell Berth how to run it.
#[derive(Debug, Clone)]
pub struct AppFiles {
    pub procfile: Procfile,
    /// The variables of the `ENV` file (or `.env` when there is no `ENV`), expanded.
    pub env: Vec<(String, String)>,
    /// Things worth telling the user that do not stop the deploy.
    pub warnings: Vec<String>,
}

/// Reads the Procfile and ENV of a checked-out tree. An error is a message for the user that
/// names the file, the line and the fix.
pub fn read_app_files(
    dir: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<AppFiles, String> {
    let procfile_path = dir.join("Procfile");
    let text = match std::fs::read_to_string(&procfile_path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err("no Procfile at the top of the repository: add one with a line like \
                        `web: ./server --port $PORT` and push again"
                .to_owned());
        }
        Err(err) => return Err(format!("cannot read the Procfile: {err}")),
    };
    let procfile = parse_procfile(&text);
    let mut warnings: Vec<String> = procfile.warnings().map(|d| format!("Procfile {d}")).collect();
    if procfile.has_errors() {
        let errors: Vec<String> = procfile.errors().map(|d| format!("Procfile {d}")).collect();
        return Err(errors.join("\n"));
    }

    let mut env = Vec::new();
    for name in ["ENV", ".env"] {
        let path = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let parsed = parse_env(&text, lookup);
        warnings.extend(parsed.warnings().map(|d| format!("{name} {d}")));
        if parsed.has_errors() {
            let errors: Vec<String> = parsed.errors().map(|d| format!("{name} {d}")).collect();
            return Err(errors.join("\n"));
        }
        env = parsed.value;
        break;
    }
    Ok(AppFiles { procfile: procfile.value, env, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removed when dropped.
    fn temp_dir(name: &str) -> berth_testkit::TempDir {
        berth_testkit::TempDir::new(&format!("build-{name}"))
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn checkout_writes_only_versioned_files() {
        let dir = temp_dir("checkout");
        let work = dir.join("work");
        std::fs::create_dir_all(work.join("sub")).unwrap();
        git(&work, &["init", "-q"]);
        std::fs::write(work.join("Procfile"), "web: ./run\n").unwrap();
        std::fs::write(work.join("sub/file.txt"), "hello").unwrap();
        std::fs::write(work.join("untracked"), "x").unwrap();
        git(&work, &["add", "Procfile", "sub"]);
        git(&work, &["commit", "-qm", "one"]);
        let commit = git(&work, &["rev-parse", "HEAD"]);
        let source = Source { repo: work.join(".git"), commit, git_env: vec![] };
        let dest = dir.join("release");
        checkout(&source, &dest).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("sub/file.txt")).unwrap(), "hello");
        assert!(!dest.join("untracked").exists());
        assert!(!dest.join(".git").exists());

        let bad = Source { commit: "0".repeat(40), ..source };
        let err = checkout(&bad, &dir.join("bad")).unwrap_err().to_string();
        assert!(err.contains("git archive of commit 0000"), "{err}");
    }

    #[test]
    fn app_files_are_read_and_errors_name_the_line() {
        let dir = temp_dir("files");
        let none = |_: &str| None;
        let err = read_app_files(&dir, &none).unwrap_err();
        assert!(err.starts_with("no Procfile"), "{err}");

        std::fs::write(dir.join("Procfile"), "web: ./run\nworker ./loop\n").unwrap();
        let err = read_app_files(&dir, &none).unwrap_err();
        assert!(err.starts_with("Procfile line 2:"), "{err}");

        std::fs::write(dir.join("Procfile"), "web: ./run\n").unwrap();
        std::fs::write(dir.join("ENV"), "A=1\nB=${A}2\n").unwrap();
        let files = read_app_files(&dir, &none).unwrap();
        assert_eq!(files.env, [("A".into(), "1".into()), ("B".into(), "12".into())]);
        assert_eq!(files.procfile.entries.len(), 1);

        std::fs::write(dir.join("ENV"), "A=1\nnot a pair\n").unwrap();
        let err = read_app_files(&dir, &none).unwrap_err();
        assert!(err.starts_with("ENV line 2:"), "{err}");
    }
}
