//! Releases over time: config changes as releases of their own, rollback to an earlier one
//! without rebuilding, and pruning the trees of old ones (`releases:keep`).

use berth_api::ReleaseInfo;
use berth_store::{AppState, NewRelease, ReleaseStatus};

use crate::error::ApiError;
use crate::state::{Daemon, now};

impl Daemon {
    /// The app's releases, newest first, as the API shows them.
    pub fn release_infos(&self, app: &str) -> Result<Vec<ReleaseInfo>, ApiError> {
        let store = self.store();
        let current = store.app(app)?.current_release;
        Ok(store
            .releases(app)?
            .into_iter()
            .map(|r| ReleaseInfo {
                number: r.number,
                commit: r.commit,
                created_at: r.created_at,
                pushed_by: r.pushed_by,
                status: r.status.as_str().to_owned(),
                kind: r.kind,
                build_of: r.build_of,
                current: Some(r.number) == current,
                available: !r.pruned && r.status == ReleaseStatus::Succeeded,
            })
            .collect())
    }

    /// Removes the trees of releases beyond the newest `releases:keep` builds (and their build
    /// logs); the current release's tree always stays. Those releases are marked pruned: they
    /// can no longer be made current.
    pub fn prune_releases(&self, app: &str) {
        let store = self.store();
        let Ok(record) = store.app(app) else { return };
        let Ok(releases) = store.releases(app) else { return };
        let current_build = record
            .current_release
            .and_then(|c| releases.iter().find(|r| r.number == c))
            .map(|r| r.build_of);
        // The current release's tree counts against the budget first; the newest of the
        // others fill the rest.
        let mut kept = i64::from(current_build.is_some());
        for release in releases.iter().filter(|r| r.build_of == r.number && !r.pruned) {
            if release.status == ReleaseStatus::Building || Some(release.number) == current_build {
                continue;
            }
            if release.status == ReleaseStatus::Succeeded && kept < record.keep_releases {
                kept += 1;
                continue;
            }
            let _ = std::fs::remove_dir_all(self.settings.layout.release(app, release.number));
            let _ = std::fs::remove_file(self.settings.layout.build_log(app, release.number));
            for dependent in releases.iter().filter(|r| r.build_of == release.number) {
                let _ = store.mark_pruned(app, dependent.number);
            }
        }
    }

    /// Makes an earlier release current again without rebuilding: its code and the config it
    /// ran with. `target` defaults to the newest available release before the current one.
    pub async fn rollback(
        &self,
        app: &str,
        target: Option<i64>,
        out: &(dyn Fn(String) + Sync),
    ) -> Result<i64, ApiError> {
        let lock = self.app_lock(app);
        let _guard = lock.lock().await;
        let record = self.store().app(app)?;
        let Some(current) = record.current_release else {
            return Err(ApiError::conflict(format!("{app} has no release to roll back from")));
        };
        let infos = self.release_infos(app)?;
        let target = match target {
            Some(n) => n,
            None => infos
                .iter()
                .find(|r| r.number < current && r.available)
                .map(|r| r.number)
                .ok_or_else(|| {
                    ApiError::conflict(format!(
                        "{app} has no earlier release to roll back to (`releases {app}` lists them)"
                    ))
                })?,
        };
        let Some(info) = infos.iter().find(|r| r.number == target) else {
            return Err(ApiError::not_found(format!(
                "{app} has no release v{target} (`releases {app}` lists them)"
            )));
        };
        if target == current {
            return Err(ApiError::conflict(format!(
                "v{target} is already the current release of {app}"
            )));
        }
        if !info.available {
            return Err(ApiError::conflict(format!(
                "v{target} of {app} cannot be made current: it {}; pick another with `releases {app}`",
                if info.status == "succeeded" {
                    "was pruned (releases:keep)"
                } else {
                    "did not deploy"
                }
            )));
        }
        if record.state == AppState::Running {
            self.activate(app, target, out).await.map_err(ApiError::unprocessable)?;
        }
        let config = self.release_config(app, target).map_err(ApiError::internal)?;
        let mut store = self.store();
        store.set_current_release(app, target)?;
        store.replace_config(app, &config)?;
        Ok(target)
    }

    /// Applies a config change as a new release on the current build, so that a rollback
    /// also brings back the config a release ran with. When the app does not start with the
    /// new config, the change is undone and the running release keeps serving.
    pub async fn change_config(
        &self,
        app: &str,
        set: &[(String, String)],
        unset: &[String],
        who: &str,
    ) -> Result<bool, ApiError> {
        let lock = self.app_lock(app);
        let _guard = lock.lock().await;
        let before = self.store().config(app)?;
        self.store().update_config(app, set, unset)?;
        let record = self.store().app(app)?;
        let Some(current) = record.current_release else { return Ok(false) };
        let Some(base) = self.store().release(app, current)? else { return Ok(false) };
        let config = self.config_snapshot(app).map_err(ApiError::internal)?;
        let release = NewRelease {
            commit: &base.commit,
            pushed_by: who,
            kind: "config",
            build_of: Some(base.build_of),
            config: &config,
            build_env: &base.build_env,
        };
        let number = self.store().create_release(app, &release, now())?;
        let running = record.state == AppState::Running;
        let result = if running {
            self.activate(app, number, &|line| tracing::info!(app, "{line}")).await
        } else {
            Ok(())
        };
        let mut store = self.store();
        match result {
            Ok(()) => {
                store.set_release_status(app, number, ReleaseStatus::Succeeded)?;
                store.set_current_release(app, number)?;
                drop(store);
                self.prune_releases(app);
                Ok(running)
            }
            Err(err) => {
                store.set_release_status(app, number, ReleaseStatus::Failed)?;
                store.replace_config(app, &before)?;
                Err(ApiError::unprocessable(format!(
                    "{app} did not start with the new config, so the change was undone and \
                     v{current} keeps serving: {err}"
                )))
            }
        }
    }
}
