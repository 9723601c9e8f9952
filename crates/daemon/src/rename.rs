//! Renaming an app and cloning one.
//!
//! A rename moves everything of the app to the new name: its store rows (config, releases,
//! domains, ports, scale), its directories (repository, releases, cache, logs, home, data), its
//! Unix user (its files go to the user of the new name), and the paths its releases' builds
//! kept. Its processes stop and start again under the new name. Every step is undone when a
//! later one fails, so a failed rename leaves the app as it was, running again.
//!
//! A clone is a new app with the source's config, scale and a copy of its repository, deployed
//! from the source's current commit; the source's domains and ports stay the source's.

use std::path::{Path, PathBuf};

use berth_store::AppState;

use crate::error::ApiError;
use crate::layout::Layout;
use crate::processes::read_dir_paths;
use crate::repo::{copy_repo, ensure_repo};
use crate::state::{Daemon, StoredBuild, now};

/// The directories of an app that follow it to a new name.
fn app_dirs(layout: &Layout, app: &str) -> Vec<PathBuf> {
    vec![
        layout.repo(app),
        layout.releases(app),
        layout.cache(app),
        layout.logs(app),
        layout.home(app),
        layout.data(app),
    ]
}

impl Daemon {
    /// Renames the app `old` to `new` and returns what to tell the user. Refused while the app
    /// is locked or busy (a deploy holds its lock), and when `new` is taken in any way.
    pub async fn rename_app(&self, old: &str, new: &str) -> Result<String, ApiError> {
        let record = self.store().app(old)?;
        if old == new {
            return Err(ApiError::bad_request(format!(
                "{old} is named {new} already; give the new name"
            )));
        }
        let old_lock = self.app_lock(old);
        let Ok(_old_turn) = old_lock.try_lock_owned() else {
            return Err(ApiError::conflict(format!(
                "{old} is busy (a deploy, restart, scale or config change is under way); rename \
                 it once that is done"
            )));
        };
        let new_lock = self.app_lock(new);
        let Ok(_new_turn) = new_lock.try_lock_owned() else {
            return Err(ApiError::conflict(format!(
                "a push to {new} is under way; pick another name"
            )));
        };
        if let Some(reason) = &record.lock_reason {
            return Err(ApiError::conflict(format!(
                "{old} is locked ({reason}), so it keeps its name; `apps:unlock {old}` first"
            )));
        }
        self.check_free_name(new, Some(old), &app_dirs(&self.settings.layout, new))?;

        // The processes (previews' too) stop here and start under the new name once everything
        // moved: their directories, their user and their names all change.
        let ports = self.app_ports(old)?;
        self.remove_app(old).await;
        for &port in &ports {
            self.close_app_port(port);
        }
        let release = match record.state {
            AppState::Running => record.current_release,
            AppState::Stopped => None,
        };

        if let Err(err) = self.move_app(old, new) {
            self.bring_up(old, release, &ports).await;
            return Err(ApiError::internal(format!("{old} keeps its name: {err}")));
        }
        if let Err(err) = self.bring_up_checked(new, release, &ports).await {
            self.remove_app(new).await;
            for &port in &ports {
                self.close_app_port(port);
            }
            return Err(match self.move_app(new, old) {
                Ok(()) => {
                    self.bring_up(old, release, &ports).await;
                    ApiError::unprocessable(format!(
                        "{old} did not start as {new}, so the rename was undone and {old} runs \
                         as before: {err}"
                    ))
                }
                Err(undo) => ApiError::internal(format!(
                    "{old} did not start as {new} ({err}), and the rename could not be undone \
                     ({undo}); the app is {new} now: start it with `start {new}`"
                )),
            });
        }
        self.check_certificates();

        let mut message = format!("{old} is now {new}, at {}", self.url(new));
        message.push_str(&format!("; {old}.{} no longer answers", self.settings.domain));
        let domains = self.store().domains(new)?;
        if !domains.is_empty() {
            message.push_str(&format!("; its domains moved with it: {}", domains.join(", ")));
        }
        message.push_str(&format!(
            "; push to {new} from now on (git remote set-url berth USER@SERVER:{new})"
        ));
        Ok(message)
    }

    /// Starts the app's release (when it has one to run) and serves its ports, reporting
    /// failures in the log only: used to put an app back as it was.
    async fn bring_up(&self, app: &str, release: Option<i64>, ports: &[u16]) {
        if let Err(err) = self.bring_up_checked(app, release, ports).await {
            tracing::error!(app, "could not start again: {err}");
        }
    }

    async fn bring_up_checked(
        &self,
        app: &str,
        release: Option<i64>,
        ports: &[u16],
    ) -> Result<(), String> {
        if let Some(release) = release {
            self.activate(app, release, &|line| tracing::info!(app, "{line}")).await?;
        }
        for &port in ports {
            if let Err(err) = self.open_app_port(app, port).await {
                tracing::warn!(app, "{err}");
            }
        }
        Ok(())
    }

    /// Gives the app's rows, user, directories and hook the name `to`. Every step is undone
    /// when a later one fails. The app's processes must be stopped.
    fn move_app(&self, from: &str, to: &str) -> Result<(), String> {
        let mut undo: Vec<Box<dyn FnOnce() + '_>> = Vec::new();
        let result = self.move_app_steps(from, to, &mut undo);
        if result.is_err() {
            for step in undo.into_iter().rev() {
                step();
            }
        }
        result
    }

    fn move_app_steps<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        undo: &mut Vec<Box<dyn FnOnce() + 'a>>,
    ) -> Result<(), String> {
        let layout = &self.settings.layout;
        let moves: Vec<(PathBuf, PathBuf)> =
            app_dirs(layout, from).into_iter().zip(app_dirs(layout, to)).collect();
        let back: Vec<(PathBuf, PathBuf)> =
            moves.iter().map(|(source, target)| (target.clone(), source.clone())).collect();
        self.store()
            .rename_app(from, to, &|json| relocate_build(json, &moves))
            .map_err(|e| e.to_string())?;
        undo.push(Box::new(move || {
            if let Err(err) = self.store().rename_app(to, from, &|json| relocate_build(json, &back))
            {
                tracing::error!("cannot give {to} its name {from} back: {err}");
            }
        }));

        // Undone after the repository is back: its hook names the app.
        undo.push(Box::new(move || {
            let _ = ensure_repo(&self.settings, from);
        }));
        for (source, target) in moves.iter().filter(|(source, _)| source.symlink_metadata().is_ok())
        {
            if target.symlink_metadata().is_ok() {
                return Err(format!("{} exists already", target.display()));
            }
            std::fs::rename(source, target).map_err(|err| {
                format!("cannot move {} to {}: {err}", source.display(), target.display())
            })?;
            let (source, target) = (source.clone(), target.clone());
            undo.push(Box::new(move || {
                let _ = std::fs::rename(&target, &source);
            }));
        }
        // The hook runs `git-hook APP`: a push to the new name must deploy the new name.
        ensure_repo(&self.settings, to)?;
        relocate_scripts(&layout.cache(to), &layout.cache(from), &layout.cache(to));

        // The files go to the user of the new name (made, or left by an earlier app of the
        // name); the old user goes. Renaming the user instead would need everything that runs
        // as it stopped, a one-off command or another Berth's app of the old name included.
        if self.settings.app_users {
            let user_dirs = |app: &str| {
                [layout.releases(app), layout.cache(app), layout.data(app), layout.home(app)]
                    .into_iter()
                    .filter(|dir| dir.exists())
            };
            undo.push(Box::new(move || {
                for dir in user_dirs(from) {
                    let _ = self.hand_over(&dir, from);
                }
            }));
            for dir in user_dirs(to) {
                self.hand_over(&dir, to)?;
            }
            if let Err(err) = self.remove_app_user(from) {
                tracing::warn!("the Unix user of {from} stays: {err}");
            }
        }
        let _ = std::fs::remove_dir_all(layout.instance_records().join(from));
        self.renamed(from);
        Ok(())
    }

    /// Refuses `new` as the name of a renamed or cloned app when it is taken: by an app, by
    /// files on disk (`dirs`), or as a name another app answers at.
    fn check_free_name(
        &self,
        new: &str,
        current: Option<&str>,
        dirs: &[PathBuf],
    ) -> Result<(), ApiError> {
        if self.store().app(new).is_ok() {
            return Err(ApiError::conflict(format!(
                "an app named {new} already exists; pick another name (or destroy {new} first)"
            )));
        }
        if let Some(dir) = dirs.iter().find(|dir| dir.symlink_metadata().is_ok()) {
            return Err(ApiError::conflict(format!(
                "{} exists already (left by an earlier app named {new}?); move it away or pick \
                 another name",
                dir.display()
            )));
        }
        let host = format!("{new}.{}", self.settings.domain);
        if let Some(owner) = self.host_owner(&host).filter(|owner| Some(owner.as_str()) != current)
        {
            return Err(ApiError::conflict(format!(
                "{host} is a name of {owner}; remove it there first (domains:remove {owner} \
                 {host}) or pick another name"
            )));
        }
        Ok(())
    }

    /// Makes the app `new` a copy of `source` to deploy: its config, scale, `releases:keep`,
    /// where it pulls from, and its repository. Returns the commit to deploy (the source's
    /// current one, if it has one) and what to tell the user first.
    pub(crate) fn clone_app(
        &self,
        source: &str,
        new: &str,
    ) -> Result<(Option<String>, Vec<String>), ApiError> {
        let record = self.store().app(source)?;
        if source == new {
            return Err(ApiError::bad_request(format!(
                "{source} cannot be its own clone; give the clone a name of its own"
            )));
        }
        let layout = &self.settings.layout;
        let dirs = [layout.repo(new), layout.releases(new), layout.cache(new), layout.logs(new)];
        self.check_free_name(new, None, &dirs)?;
        let current = match record.current_release {
            Some(n) => self.store().release(source, n)?.map(|r| (n, r.commit)),
            None => None,
        };
        // NGINX_SERVER_NAME's names (from ENV or the config) are the source's: the clone
        // would be refused them.
        let env_hosts = match &current {
            Some((n, _)) => {
                let build = self.stored_build(source, *n);
                let (_, env) = self.release_env(source, *n, &build).map_err(ApiError::internal)?;
                Daemon::env_hosts(&env).unwrap_or_default()
            }
            None => Vec::new(),
        };
        self.store().clone_app(source, new, now())?;
        let copied = copy_repo(&layout.repo(source), &layout.repo(new))
            .map_err(|err| format!("cannot copy the repository of {source}: {err}"))
            .and_then(|()| ensure_repo(&self.settings, new));
        let blanked = if env_hosts.is_empty() {
            Ok(())
        } else {
            self.store()
                .update_config(new, &[("NGINX_SERVER_NAME".to_owned(), String::new())], &[])
                .map_err(|err| err.to_string())
        };
        if let Err(err) = copied.and(blanked) {
            let _ = std::fs::remove_dir_all(layout.repo(new));
            let _ = self.store().delete_app(new);
            return Err(ApiError::internal(err));
        }

        let mut notes = vec![format!("Cloned {source} into {new}: its config, scale and code")];
        let domains = self.store().domains(source)?;
        if !domains.is_empty() || !env_hosts.is_empty() {
            let names: Vec<String> = env_hosts.into_iter().chain(domains).collect();
            notes.push(format!(
                "{source}'s domains stay with {source}: {} ({new} answers at {new}.{}; \
                 `domains:add {new} NAME` gives it names of its own)",
                names.join(", "),
                self.settings.domain
            ));
        }
        let ports = self.app_ports(source)?;
        if !ports.is_empty() {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            notes.push(format!("{source}'s ports stay with {source}: {}", ports.join(", ")));
        }
        match &current {
            Some((n, commit)) => notes.push(format!(
                "Deploying the code of {source} v{n} (commit {})",
                &commit[..commit.len().min(7)]
            )),
            None => notes.push(format!(
                "{source} has no release yet, so {new} has nothing to run: push to {new}"
            )),
        }
        Ok((current.map(|(_, commit)| commit), notes))
    }
}

/// What a release's build kept (`StoredBuild` as JSON), with the paths in the directories
/// that moved pointing to where they went. Anything else is left as it is.
fn relocate_build(json: &str, moves: &[(PathBuf, PathBuf)]) -> String {
    let Ok(mut build) = serde_json::from_str::<StoredBuild>(json) else { return json.to_owned() };
    for (_, value) in &mut build.env {
        *value = relocate(value, moves);
    }
    for dir in &mut build.path_prefix {
        *dir = relocate(dir, moves);
    }
    serde_json::to_string(&build).unwrap_or_else(|_| json.to_owned())
}

/// A path, or paths joined by `:`, with each one inside a moved directory pointing to where
/// it went.
fn relocate(value: &str, moves: &[(PathBuf, PathBuf)]) -> String {
    value
        .split(':')
        .map(|part| {
            let path = Path::new(part);
            moves
                .iter()
                .find_map(|(from, to)| {
                    let rest = path.strip_prefix(from).ok()?;
                    Some(if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) })
                })
                .map_or_else(|| part.to_owned(), |moved| moved.display().to_string())
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// The largest script whose `#!` line is rewritten (scripts are small; anything bigger is a
/// program).
const MAX_SCRIPT_BYTES: u64 = 1 << 20;

/// Rewrites the `#!` line of the scripts in the dependency cache's `bin` directories (a
/// virtualenv's `gunicorn`) that name the cache's old place, `from`: they would not start.
fn relocate_scripts(cache: &Path, from: &Path, to: &Path) {
    let (from, to) = (format!("{}/", from.display()), format!("{}/", to.display()));
    let entries = read_dir_paths(cache).into_iter().flat_map(|kind| read_dir_paths(&kind));
    for script in entries.flat_map(|entry| read_dir_paths(&entry.join("bin"))) {
        let is_script = script
            .symlink_metadata()
            .is_ok_and(|meta| meta.is_file() && meta.len() <= MAX_SCRIPT_BYTES);
        let Some(bytes) = is_script.then(|| std::fs::read(&script).ok()).flatten() else {
            continue;
        };
        if let Some(rewritten) = relocate_shebang(&bytes, &from, &to)
            && let Err(err) = std::fs::write(&script, rewritten)
        {
            tracing::warn!(%err, "cannot rewrite {}", script.display());
        }
    }
}

/// The script with `from` replaced by `to` in its `#!` line, when that line has it.
fn relocate_shebang(script: &[u8], from: &str, to: &str) -> Option<Vec<u8>> {
    if !script.starts_with(b"#!") {
        return None;
    }
    let end = script.iter().position(|&b| b == b'\n').unwrap_or(script.len());
    let line = std::str::from_utf8(&script[..end]).ok().filter(|line| line.contains(from))?;
    let mut rewritten = line.replace(from, to).into_bytes();
    rewritten.extend_from_slice(&script[end..]);
    Some(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moves() -> Vec<(PathBuf, PathBuf)> {
        vec![
            ("/b/releases/web".into(), "/b/releases/shop".into()),
            ("/b/cache/web".into(), "/b/cache/shop".into()),
        ]
    }

    #[test]
    fn paths_in_moved_directories_follow() {
        let moves = moves();
        assert_eq!(relocate("/b/cache/web/venv/abc", &moves), "/b/cache/shop/venv/abc");
        assert_eq!(relocate("/b/releases/web", &moves), "/b/releases/shop");
        assert_eq!(
            relocate("/b/releases/web/3/bin:/usr/bin", &moves),
            "/b/releases/shop/3/bin:/usr/bin"
        );
        // Whole path components only, and values that are not paths stay.
        assert_eq!(relocate("/b/cache/webshop/x", &moves), "/b/cache/webshop/x");
        assert_eq!(relocate("1", &moves), "1");
        assert_eq!(relocate("development:test", &moves), "development:test");
    }

    #[test]
    fn builds_are_relocated_and_anything_else_is_kept() {
        let build = StoredBuild {
            env: vec![
                ("VIRTUAL_ENV".into(), "/b/cache/web/venv/abc".into()),
                ("PYTHONUNBUFFERED".into(), "1".into()),
            ],
            path_prefix: vec!["/b/cache/web/venv/abc/bin".into()],
        };
        let json = serde_json::to_string(&build).unwrap();
        let moved: StoredBuild = serde_json::from_str(&relocate_build(&json, &moves())).unwrap();
        assert_eq!(moved.env[0].1, "/b/cache/shop/venv/abc");
        assert_eq!(moved.env[1].1, "1");
        assert_eq!(moved.path_prefix, ["/b/cache/shop/venv/abc/bin"]);
        assert_eq!(relocate_build("", &moves()), "", "a release without a build");
    }

    #[test]
    fn shebangs_naming_the_old_place_are_rewritten() {
        let script = b"#!/b/cache/web/venv/abc/bin/python\nimport sys\n# /b/cache/web/ stays\n";
        let rewritten = relocate_shebang(script, "/b/cache/web/", "/b/cache/shop/").unwrap();
        assert_eq!(
            String::from_utf8(rewritten).unwrap(),
            "#!/b/cache/shop/venv/abc/bin/python\nimport sys\n# /b/cache/web/ stays\n"
        );
        assert_eq!(relocate_shebang(b"#!/usr/bin/env python3\n", "/b/cache/web/", "/x/"), None);
        assert_eq!(relocate_shebang(b"\x7fELF /b/cache/web/", "/b/cache/web/", "/x/"), None);
    }

    #[test]
    fn relocating_scripts_touches_only_the_cache_bins() {
        let root = std::env::temp_dir().join(format!("berth-relocate-{}", std::process::id()));
        let bin = root.join("cache/shop/venv/abc/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let old = root.join("cache/web");
        std::fs::write(
            bin.join("gunicorn"),
            format!("#!{}/venv/abc/bin/python\nx\n", old.display()),
        )
        .unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", bin.join("python")).unwrap();
        relocate_scripts(&root.join("cache/shop"), &old, &root.join("cache/shop"));
        let script = std::fs::read_to_string(bin.join("gunicorn")).unwrap();
        assert_eq!(script, format!("#!{}/cache/shop/venv/abc/bin/python\nx\n", root.display()));
        assert_eq!(std::fs::read_link(bin.join("python")).unwrap(), Path::new("/usr/bin/python3"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
