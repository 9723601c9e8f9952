//! Executing a build plan: version checks, the cached dependency step, the build steps, each
//! command started through `berth-supervise` with its output streamed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_supervise::{RunAs, TaskSpec, run_task};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::plan::{BuildPlan, DependencyStep, Placement, VersionCheck};

/// How long one build command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Dependency cache entries kept per app and kind (as many as releases are kept, so that an
/// older release still finds its virtualenv).
const KEEP_ENTRIES: usize = 5;

/// What the app's processes need from the build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildOutcome {
    /// Variables to add to the processes' environment, paths resolved.
    pub process_env: Vec<(String, String)>,
    /// Directories to put in front of the processes' PATH.
    pub path_prefix: Vec<String>,
    /// Whether the dependency step was skipped because its inputs were unchanged.
    pub reused_dependencies: bool,
}

/// Where the build runs and as whom.
#[derive(Debug, Clone)]
pub struct BuildDirs<'a> {
    pub release: &'a Path,
    pub cache: &'a Path,
    pub run_as: Option<RunAs>,
}

fn resolve(value: &str, dirs: &BuildDirs<'_>, deps: &Path) -> String {
    value
        .replace("{cache}", &dirs.cache.display().to_string())
        .replace("{release}", &dirs.release.display().to_string())
        .replace("{deps}", &deps.display().to_string())
}

/// Runs `plan` in `dirs.release` with the app's environment `env`, streaming every line to
/// `out`. An error is a message for the user that names the failed command.
pub async fn run_plan(
    plan: &BuildPlan,
    dirs: &BuildDirs<'_>,
    env: &[(String, String)],
    out: &(dyn Fn(String) + Sync),
) -> Result<BuildOutcome, String> {
    let deps_entry = match &plan.dependencies {
        Some(step) => dirs.cache.join(&step.cache_name).join("pending"),
        None => dirs.cache.join("none"),
    };
    let mut command_env = env.to_vec();
    for (key, value) in &plan.command_env {
        command_env.push((key.clone(), resolve(value, dirs, &deps_entry)));
    }
    command_env.push(("BERTH_CACHE".to_owned(), dirs.cache.display().to_string()));
    std::fs::create_dir_all(dirs.cache)
        .map_err(|e| format!("cannot create {}: {e}", dirs.cache.display()))?;
    hand_over(dirs.cache, dirs.run_as)?;

    for check in &plan.version_checks {
        check_version(check, dirs, &command_env).await?;
    }

    let mut reused = false;
    let mut entry = deps_entry;
    if let Some(step) = &plan.dependencies {
        let key = cache_key(step, dirs, &command_env).await?;
        entry = dirs.cache.join(&step.cache_name).join(&key);
        // The commands' environment names the real entry now that its key is known.
        command_env.retain(|(k, _)| !plan.command_env.iter().any(|(ck, _)| ck == k));
        for (k, value) in &plan.command_env {
            command_env.push((k.clone(), resolve(value, dirs, &entry)));
        }
        reused = install_dependencies(step, &entry, dirs, &command_env, out).await?;
    }

    for step in &plan.steps {
        out(format!("-----> Running {step}"));
        run(step, dirs, &command_env, out).await?;
    }

    Ok(BuildOutcome {
        process_env: plan
            .process_env
            .iter()
            .map(|(k, v)| (k.clone(), resolve(v, dirs, &entry)))
            .collect(),
        path_prefix: plan.path_prefix.iter().map(|p| resolve(p, dirs, &entry)).collect(),
        reused_dependencies: reused,
    })
}

/// Hands a directory Berth created to the app's user, so that commands running as that user
/// can write in it.
fn hand_over(dir: &Path, run_as: Option<RunAs>) -> Result<(), String> {
    if let Some(run_as) = run_as {
        std::os::unix::fs::chown(dir, Some(run_as.uid), Some(run_as.gid))
            .map_err(|e| format!("cannot hand {} to the app user: {e}", dir.display()))?;
    }
    Ok(())
}

async fn run(
    command: &str,
    dirs: &BuildDirs<'_>,
    env: &[(String, String)],
    out: &(dyn Fn(String) + Sync),
) -> Result<(), String> {
    let spec = TaskSpec {
        command: command.to_owned(),
        cwd: dirs.release.to_owned(),
        env: env.to_vec(),
        run_as: dirs.run_as,
        timeout: COMMAND_TIMEOUT,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = run_task(&spec, tx);
    tokio::pin!(task);
    // Forward lines while the command runs, so the push shows the build live.
    let result = loop {
        tokio::select! {
            result = &mut task => break result,
            Some(line) = rx.recv() => out(format!("       {line}")),
        }
    };
    while let Ok(line) = rx.try_recv() {
        out(format!("       {line}"));
    }
    result
}

/// Runs a command and returns what it printed (for versions).
async fn capture(
    command: &str,
    dirs: &BuildDirs<'_>,
    env: &[(String, String)],
) -> Result<String, String> {
    let spec = TaskSpec {
        command: command.to_owned(),
        cwd: dirs.release.to_owned(),
        env: env.to_vec(),
        run_as: dirs.run_as,
        timeout: Duration::from_secs(60),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    run_task(&spec, tx).await?;
    let mut text = String::new();
    while let Ok(line) = rx.try_recv() {
        text.push_str(&line);
        text.push('\n');
    }
    Ok(text.trim().to_owned())
}

async fn check_version(
    check: &VersionCheck,
    dirs: &BuildDirs<'_>,
    env: &[(String, String)],
) -> Result<(), String> {
    let installed = capture(&check.command, dirs, env).await?;
    if version_matches(&installed, &check.wanted) {
        Ok(())
    } else {
        let tool = check.command.split_whitespace().next().unwrap_or("");
        Err(format!(
            "{} asks for {tool} {}, but this server has {tool} {installed}; install that version \
             or change {}",
            check.knob, check.wanted, check.knob
        ))
    }
}

/// Whether an installed version (`v20.11.1`) satisfies a wanted one (`20`, `20.11`, `v20.x`,
/// `20.11.1`).
pub fn version_matches(installed: &str, wanted: &str) -> bool {
    let clean = |s: &str| s.trim().trim_start_matches(['v', 'V']).trim_end_matches(".x").to_owned();
    let (installed, wanted) = (clean(installed), clean(wanted));
    !wanted.is_empty() && (installed == wanted || installed.starts_with(&format!("{wanted}.")))
}

async fn cache_key(
    step: &DependencyStep,
    dirs: &BuildDirs<'_>,
    env: &[(String, String)],
) -> Result<String, String> {
    let mut hasher = Sha256::new();
    hasher.update(step.cache_name.as_bytes());
    hasher.update(b"\0");
    hasher.update(step.key_extra.as_bytes());
    for input in &step.inputs {
        hasher.update(b"\0");
        hasher.update(input.as_bytes());
        match std::fs::read(dirs.release.join(input)) {
            Ok(contents) => {
                hasher.update(b"=");
                hasher.update(&contents);
            }
            Err(_) => hasher.update(b"-"),
        }
    }
    for command in &step.key_commands {
        let output = capture(command, dirs, env).await?;
        hasher.update(b"\0");
        hasher.update(output.as_bytes());
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// Installs the dependencies into `entry`, or reuses it when a build with the same inputs
/// completed before. Returns whether it was reused.
async fn install_dependencies(
    step: &DependencyStep,
    entry: &Path,
    dirs: &BuildDirs<'_>,
    env: &[(String, String)],
    out: &(dyn Fn(String) + Sync),
) -> Result<bool, String> {
    let done = entry.with_extension("done");
    let parent = entry.parent().unwrap_or(dirs.cache);
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    hand_over(parent, dirs.run_as)?;
    let mut env = env.to_vec();
    env.push(("BERTH_DEPS".to_owned(), entry.display().to_string()));

    if done.exists() && entry.exists() {
        out(format!(
            "-----> Dependencies unchanged since an earlier build ({}); reusing them",
            present_inputs(step, dirs.release)
        ));
        if let Placement::Snapshot(dir) = &step.placement {
            restore_snapshot(entry, &dirs.release.join(dir), dirs, &env, out).await?;
        }
        // Touched so that pruning keeps the entries in use.
        let _ = std::fs::File::create(&done);
        return Ok(true);
    }

    let _ = std::fs::remove_file(&done);
    let _ = std::fs::remove_dir_all(entry);
    out(format!("-----> Installing dependencies ({})", present_inputs(step, dirs.release)));
    for command in &step.commands {
        out(format!("       $ {command}"));
        if let Err(err) = run(command, dirs, &env, out).await {
            let _ = std::fs::remove_dir_all(entry);
            return Err(format!("installing dependencies failed: {err}"));
        }
    }
    if let Placement::Snapshot(dir) = &step.placement {
        let built = dirs.release.join(dir);
        if built.exists() {
            let command = format!("cp -al {} {}", quote(&built), quote(entry));
            run(&command, dirs, &env, out)
                .await
                .map_err(|e| format!("cannot keep {dir} in the cache: {e}"))?;
        }
    }
    std::fs::File::create(&done).map_err(|e| format!("cannot write {}: {e}", done.display()))?;
    prune(parent);
    Ok(false)
}

async fn restore_snapshot(
    entry: &Path,
    target: &Path,
    dirs: &BuildDirs<'_>,
    env: &[(String, String)],
    out: &(dyn Fn(String) + Sync),
) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(target);
    // Hard links: the copy costs no space and no time, and the entry stays intact because
    // package managers replace files rather than write into them.
    let command = format!("cp -al {} {}", quote(entry), quote(target));
    run(&command, dirs, env, out)
        .await
        .map_err(|e| format!("cannot reuse cached dependencies: {e}"))
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

fn present_inputs(step: &DependencyStep, release: &Path) -> String {
    let present: Vec<&str> =
        step.inputs.iter().filter(|i| release.join(i).exists()).map(String::as_str).collect();
    present.join(", ")
}

/// Keeps the newest entries of one cache kind, by the time they were last built or used.
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut done: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "done"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    done.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    for (_, marker) in done.into_iter().skip(KEEP_ENTRIES) {
        let _ = std::fs::remove_dir_all(marker.with_extension(""));
        let _ = std::fs::remove_file(marker);
    }
}

/// Finds a command on a PATH value.
pub fn which(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The Python versions (`3.11`) whose `python3.N` is on the PATH.
pub fn installed_pythons(path: &str) -> Vec<String> {
    let mut versions: Vec<String> = path
        .split(':')
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let minor = name.strip_prefix("python3.")?;
            minor.chars().all(|c| c.is_ascii_digit()).then(|| format!("3.{minor}"))
        })
        .collect();
    versions.sort_by_key(|v| v[2..].parse::<u32>().unwrap_or(0));
    versions.dedup();
    versions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Runtime;

    #[test]
    fn versions_match_by_prefix() {
        assert!(version_matches("v20.11.1", "20"));
        assert!(version_matches("v20.11.1", "20.11"));
        assert!(version_matches("v20.11.1", "v20.x"));
        assert!(version_matches("v20.11.1", "20.11.1"));
        assert!(!version_matches("v20.11.1", "2"));
        assert!(!version_matches("v20.11.1", "18"));
        assert!(!version_matches("v20.11.1", ""));
    }

    /// Removed when dropped; with a `release` directory in it.
    fn temp(name: &str) -> berth_testkit::TempDir {
        let dir = berth_testkit::TempDir::new(&format!("run-{name}"));
        std::fs::create_dir_all(dir.join("release")).unwrap();
        dir
    }

    fn env() -> Vec<(String, String)> {
        vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())]
    }

    /// A dependency step that counts its runs, to see when it is skipped.
    fn counting_plan(placement: Placement) -> BuildPlan {
        let mut plan = BuildPlan::new(Runtime::Generic, "test");
        let command = match placement {
            Placement::InCache => {
                "mkdir -p \"$BERTH_DEPS\" && echo installed >> ../runs && cat deps.txt > \"$BERTH_DEPS/copy\""
            }
            Placement::Snapshot(_) => {
                "mkdir -p mods && echo installed >> ../runs && cat deps.txt > mods/copy"
            }
        };
        plan.dependencies = Some(DependencyStep {
            cache_name: "deps".into(),
            inputs: vec!["deps.txt".into()],
            key_commands: vec!["echo toolchain-1".into()],
            key_extra: String::new(),
            commands: vec![command.into()],
            placement,
        });
        plan.process_env.push(("DEPS".into(), "{deps}".into()));
        plan.steps.push("echo step ran > built.txt".into());
        plan
    }

    async fn build(
        dir: &Path,
        plan: &BuildPlan,
        deps: &str,
    ) -> (Result<BuildOutcome, String>, Vec<String>) {
        let release = dir.join("release");
        std::fs::write(release.join("deps.txt"), deps).unwrap();
        let cache = dir.join("cache");
        let dirs = BuildDirs { release: &release, cache: &cache, run_as: None };
        let lines = std::sync::Mutex::new(Vec::new());
        let result = run_plan(plan, &dirs, &env(), &|line| lines.lock().unwrap().push(line)).await;
        (result, lines.into_inner().unwrap())
    }

    fn runs(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("runs")).unwrap_or_default().lines().count()
    }

    #[tokio::test]
    async fn unchanged_inputs_skip_the_dependency_step() {
        let dir = temp("skip");
        let plan = counting_plan(Placement::InCache);
        let (first, lines) = build(&dir, &plan, "a==1\n").await;
        let first = first.unwrap();
        assert!(!first.reused_dependencies);
        assert!(
            lines.iter().any(|l| l.starts_with("-----> Installing dependencies (deps.txt)")),
            "{lines:?}"
        );
        let (second, lines) = build(&dir, &plan, "a==1\n").await;
        let second = second.unwrap();
        assert!(second.reused_dependencies, "{lines:?}");
        assert_eq!(first.process_env, second.process_env);
        assert_eq!(runs(&dir), 1);
        assert_eq!(std::fs::read_to_string(dir.join("release/built.txt")).unwrap(), "step ran\n");

        let (third, _) = build(&dir, &plan, "a==2\n").await;
        let third = third.unwrap();
        assert!(!third.reused_dependencies);
        assert_ne!(third.process_env, second.process_env);
        assert_eq!(runs(&dir), 2);
        let deps = &third.process_env[0].1;
        assert_eq!(std::fs::read_to_string(Path::new(deps).join("copy")).unwrap(), "a==2\n");
        // The earlier entry is still there for the release that uses it.
        assert!(Path::new(&second.process_env[0].1).join("copy").exists());
    }

    #[tokio::test]
    async fn snapshots_are_restored_into_the_release() {
        let dir = temp("snapshot");
        let plan = counting_plan(Placement::Snapshot("mods".into()));
        build(&dir, &plan, "x\n").await.0.unwrap();
        std::fs::remove_dir_all(dir.join("release/mods")).unwrap();
        let (result, _) = build(&dir, &plan, "x\n").await;
        assert!(result.unwrap().reused_dependencies);
        assert_eq!(std::fs::read_to_string(dir.join("release/mods/copy")).unwrap(), "x\n");
        assert_eq!(runs(&dir), 1);
    }

    #[tokio::test]
    async fn a_failed_install_leaves_no_entry_and_names_the_command() {
        let dir = temp("fail");
        let mut plan = counting_plan(Placement::InCache);
        plan.dependencies.as_mut().unwrap().commands =
            vec!["echo 'no such package' >&2; exit 1".into()];
        let (result, lines) = build(&dir, &plan, "bad\n").await;
        let err = result.unwrap_err();
        assert!(err.starts_with("installing dependencies failed: `echo"), "{err}");
        assert!(lines.iter().any(|l| l.contains("no such package")), "{lines:?}");
        let entries: Vec<_> =
            std::fs::read_dir(dir.join("cache/deps")).unwrap().flatten().collect();
        assert!(entries.is_empty(), "{entries:?}");
    }

    #[test]
    fn which_and_pythons_read_the_path() {
        let dir = temp("which");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for name in ["python3.12", "python3.9", "python3.11-config", "tool"] {
            std::fs::write(bin.join(name), "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let path = format!("{}:/nonexistent", bin.display());
        assert_eq!(installed_pythons(&path), ["3.9", "3.12"]);
        assert_eq!(which("tool", &path), Some(bin.join("tool")));
        assert_eq!(which("missing", &path), None);
    }
}
