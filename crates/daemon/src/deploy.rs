//! The deploy job: from a pushed commit to a running release, with its output streamed to
//! the client (`git push` shows it as `remote:` lines) and kept in `logs/APP/build/N.log`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{DeployRequest, JobEvent};
use berth_build::{
    AppFiles, BuildDirs, BuildOutcome, BuildPlan, PlanContext, Source, checkout, installed_pythons,
    plan, run_plan, which,
};
use berth_procfile::ProcessKind;
use berth_store::{AppState, NewRelease, ReleaseStatus};
use berth_supervise::{TaskSpec, run_task};
use tokio::sync::mpsc;

use crate::state::{Daemon, now};

const RELEASE_COMMAND_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The branches whose pushes deploy; pushes to others are stored but not deployed.
const DEPLOY_BRANCHES: [&str; 2] = ["main", "master"];

/// Where a job's output goes: the client's stream and, once the release number is known,
/// the build log.
#[derive(Debug)]
pub struct JobOutput {
    events: mpsc::UnboundedSender<JobEvent>,
    log: Mutex<(Option<File>, Vec<String>)>,
}

impl JobOutput {
    pub fn new(events: mpsc::UnboundedSender<JobEvent>) -> JobOutput {
        JobOutput { events, log: Mutex::new((None, Vec::new())) }
    }

    pub fn line(&self, text: impl Into<String>) {
        let text = text.into();
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        match &mut log.0 {
            Some(file) => {
                let _ = writeln!(file, "{text}");
            }
            None => log.1.push(text.clone()),
        }
        // The client may have gone away (a cancelled push); the job still finishes.
        let _ = self.events.send(JobEvent::Line { text });
    }

    /// A step, Heroku style.
    pub fn step(&self, text: impl std::fmt::Display) {
        self.line(format!("-----> {text}"));
    }

    /// Detail under a step.
    pub fn detail(&self, text: impl std::fmt::Display) {
        self.line(format!("       {text}"));
    }

    fn log_to(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(mut file) = File::create(path) {
            for line in log.1.drain(..) {
                let _ = writeln!(file, "{line}");
            }
            log.0 = Some(file);
        }
    }

    pub fn end(&self, result: Result<(), String>) {
        if let Err(error) = &result {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(file) = &mut log.0 {
                let _ = writeln!(file, "error: {error}");
            }
        }
        let _ = self.events.send(JobEvent::End {
            ok: result.is_ok(),
            error: result.err(),
            exit_code: None,
        });
    }
}

/// The commit a ref of the repository points to, or `None` when it does not exist.
fn ref_commit(repo: &Path, git_ref: &str) -> Option<String> {
    let output = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["rev-parse", "--verify", "--quiet", git_ref])
        .output()
        .ok()?;
    let commit = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !commit.is_empty()).then_some(commit)
}

/// Checks that the git variables a hook passed point into the app's own repository, so the
/// API cannot be used to make git read other places.
fn checked_git_env(
    repo: &Path,
    git_env: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    const ALLOWED: [&str; 3] =
        ["GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_QUARANTINE_PATH"];
    let repo = repo.canonicalize().map_err(|e| format!("cannot open {}: {e}", repo.display()))?;
    for (key, value) in git_env {
        if !ALLOWED.contains(&key.as_str()) {
            return Err(format!("git variable {key} is not accepted"));
        }
        for path in value.split(':').filter(|p| !p.is_empty()) {
            let inside = Path::new(path).canonicalize().is_ok_and(|p| p.starts_with(&repo));
            if !inside {
                return Err(format!("{key} points outside the app's repository"));
            }
        }
    }
    Ok(git_env.to_vec())
}

/// Runs a deploy to completion. The app lock is taken here, so a second push to the same app
/// waits its turn.
pub async fn deploy(daemon: Arc<Daemon>, app: String, request: DeployRequest, out: Arc<JobOutput>) {
    let result = deploy_inner(&daemon, &app, &request, &out).await;
    out.end(result);
}

async fn deploy_inner(
    daemon: &Arc<Daemon>,
    app: &str,
    request: &DeployRequest,
    out: &Arc<JobOutput>,
) -> Result<(), String> {
    let layout = daemon.settings.layout.clone();
    let branch = request.git_ref.strip_prefix("refs/heads/").unwrap_or(&request.git_ref);
    if !DEPLOY_BRANCHES.contains(&branch) {
        out.step(format!("Pushed {branch}; only main or master deploy, so nothing was deployed"));
        return Ok(());
    }
    let git_env = checked_git_env(&layout.repo(app), &request.git_env)?;

    let lock = daemon.app_lock(app);
    let guard = match lock.clone().try_lock_owned() {
        Ok(guard) => guard,
        Err(_) => {
            out.step(format!("Another deploy of {app} is running; waiting for it to finish"));
            lock.lock_owned().await
        }
    };
    // A push that waited for another one to the same branch would move the branch away from
    // the code the other one deployed: git refuses its ref update after the hook, so refuse it
    // before deploying anything.
    if let Some(old) = &request.old_commit {
        let now_at = ref_commit(&layout.repo(app), &request.git_ref);
        let expected = (!old.bytes().all(|b| b == b'0')).then(|| old.clone());
        if now_at != expected {
            return Err(format!(
                "{branch} moved while this push waited (it is now at {}); pull, merge and push again",
                now_at.as_deref().map_or("nothing", |c| &c[..c.len().min(7)])
            ));
        }
    }

    if let Some(reason) = daemon.store().app(app).map_err(|e| e.to_string())?.lock_reason {
        return Err(format!(
            "{app} is locked ({reason}), so it is not deployed; `apps:unlock {app}` allows deploys again"
        ));
    }
    let short = &request.commit[..request.commit.len().min(7)];
    let config = daemon.config_snapshot(app)?;
    let release = NewRelease {
        commit: &request.commit,
        pushed_by: &request.pushed_by,
        kind: "push",
        build_of: None,
        config: &config,
        build_env: "",
    };
    let number = daemon.store().create_release(app, &release, now()).map_err(|e| e.to_string())?;
    out.log_to(&layout.build_log(app, number));
    out.step(format!("Deploying {app} v{number} (commit {short} on {branch})"));

    let result = build_and_start(daemon, app, number, &request.commit, git_env, out).await;
    let store = daemon.store();
    match &result {
        Ok(()) => {
            store
                .set_release_status(app, number, ReleaseStatus::Succeeded)
                .map_err(|e| e.to_string())?;
            store.set_current_release(app, number).map_err(|e| e.to_string())?;
            store.set_app_state(app, AppState::Running).map_err(|e| e.to_string())?;
            drop(store);
            out.step(format!("Released v{number}"));
            out.step(format!("Your app is at {}", daemon.url(app)));
            daemon.prune_releases(app);
            daemon.check_certificates();
            // The lock is held until git has moved the branch (after this hook returns), so the
            // next push to the branch sees where it is.
            if request.old_commit.is_some() {
                let repo = layout.repo(app);
                let (git_ref, commit) = (request.git_ref.clone(), request.commit.clone());
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
                    while ref_commit(&repo, &git_ref).as_deref() != Some(commit.as_str())
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    drop(guard);
                });
            }
        }
        Err(_) => {
            let _ = store.set_release_status(app, number, ReleaseStatus::Failed);
            let current = store.app(app).ok().and_then(|a| a.current_release);
            drop(store);
            let _ = std::fs::remove_dir_all(layout.release(app, number));
            match current {
                Some(current) => out.step(format!("Deploy failed; v{current} keeps serving")),
                None => out.step("Deploy failed; nothing was running before"),
            }
        }
    }
    result
}

async fn build_and_start(
    daemon: &Arc<Daemon>,
    app: &str,
    number: i64,
    commit: &str,
    git_env: Vec<(String, String)>,
    out: &Arc<JobOutput>,
) -> Result<(), String> {
    let layout = &daemon.settings.layout;
    let dir = layout.release(app, number);
    let source = Source { repo: layout.repo(app), commit: commit.to_owned(), git_env };
    let checkout_dir = dir.clone();
    tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_dir_all(&checkout_dir);
        checkout(&source, &checkout_dir)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("{e:#}"))?;
    // The app's own directories belong to its user, and to no other app's.
    daemon.hand_over(&layout.releases(app), app)?;
    std::fs::create_dir_all(layout.cache(app))
        .map_err(|e| format!("cannot create the cache: {e}"))?;
    daemon.hand_over(&layout.cache(app), app)?;

    daemon.ensure_data_dir(app)?;
    // The environment before the build: what preflight and the build commands run with.
    let (files, env) = daemon.release_env(app, number, &BuildOutcome::default())?;
    for warning in &files.warnings {
        out.detail(format!("warning: {warning}"));
    }
    let names: Vec<String> = files.procfile.entries.iter().map(|e| e.name.clone()).collect();
    out.step(format!("Process types: {}", names.join(", ")));

    if let Some(preflight) =
        files.procfile.entries.iter().find(|e| e.kind == ProcessKind::Preflight)
    {
        out.step(format!("Running preflight command: {}", preflight.command));
        run_streamed(daemon, app, &dir, &env, &preflight.command, out)
            .await
            .map_err(|e| format!("the preflight command failed: {e}"))?;
    }

    let plan = plan_build(&dir, &files, &env)?;
    out.step(&plan.summary);
    for warning in &plan.warnings {
        out.detail(format!("warning: {warning}"));
    }
    let dirs =
        BuildDirs { release: &dir, cache: &layout.cache(app), run_as: daemon.app_user(app)? };
    let print = |line: String| out.line(line);
    let outcome = run_plan(&plan, &dirs, &env, &print).await?;
    daemon.save_build(app, number, &outcome)?;

    if let Some(release) = files.procfile.entries.iter().find(|e| e.kind == ProcessKind::Release) {
        out.step(format!("Running release command: {}", release.command));
        let (_, env) = daemon.release_env(app, number, &outcome)?;
        run_streamed(daemon, app, &dir, &env, &release.command, out)
            .await
            .map_err(|e| format!("the release command failed: {e}"))?;
    }

    out.step("Starting processes");
    let detail = |line: String| out.detail(line);
    daemon.activate(app, number, &detail).await
}

/// Plans the build from the release tree, with the tools on the environment's PATH.
fn plan_build(dir: &Path, files: &AppFiles, env: &[(String, String)]) -> Result<BuildPlan, String> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let knobs: BTreeMap<String, String> = env.iter().cloned().collect();
    let path = knobs.get("PATH").cloned().unwrap_or_default();
    let pythons = installed_pythons(&path);
    let python_version_file = std::fs::read_to_string(dir.join(".python-version")).ok();
    let has_tool = |name: &str| which(name, &path).is_some();
    plan(&PlanContext {
        files: &names,
        env: &knobs,
        procfile: &files.procfile,
        has_tool: &has_tool,
        pythons: &pythons,
        python_version_file: python_version_file.as_deref(),
    })
}

async fn run_streamed(
    daemon: &Arc<Daemon>,
    app: &str,
    dir: &Path,
    env: &[(String, String)],
    command: &str,
    out: &Arc<JobOutput>,
) -> Result<(), String> {
    let spec = TaskSpec {
        command: command.to_owned(),
        cwd: dir.to_owned(),
        env: env.to_vec(),
        run_as: daemon.app_user(app)?,
        timeout: RELEASE_COMMAND_TIMEOUT,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = {
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                out.detail(line);
            }
        })
    };
    let result = run_task(&spec, tx).await;
    let _ = forward.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_env_must_point_into_the_repo() {
        let root = std::env::temp_dir().join(format!("berth-gitenv-{}", std::process::id()));
        let repo = root.join("repos/app.git");
        std::fs::create_dir_all(repo.join("objects/incoming-1")).unwrap();
        let inside = repo.join("objects/incoming-1").display().to_string();
        let objects = repo.join("objects").display().to_string();
        let ok = vec![
            ("GIT_OBJECT_DIRECTORY".to_owned(), inside.clone()),
            ("GIT_ALTERNATE_OBJECT_DIRECTORIES".to_owned(), objects.clone()),
        ];
        assert_eq!(checked_git_env(&repo, &ok).unwrap(), ok);
        let outside = vec![("GIT_OBJECT_DIRECTORY".to_owned(), "/etc".to_owned())];
        assert!(checked_git_env(&repo, &outside).unwrap_err().contains("outside"));
        let sneaky = vec![("GIT_OBJECT_DIRECTORY".to_owned(), format!("{inside}/../../../.."))];
        assert!(checked_git_env(&repo, &sneaky).is_err());
        let other = vec![("GIT_DIR".to_owned(), objects)];
        assert!(checked_git_env(&repo, &other).unwrap_err().contains("not accepted"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
