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
        restart: bool,
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
        let running = record.state == AppState::Running && restart;
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
                // ACME_ROOT_CA or NGINX_SERVER_NAME may have changed what needs a certificate.
                self.check_certificates();
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

impl Daemon {
    /// The host a preview of release `n` answers at.
    pub fn preview_host(&self, app: &str, n: i64) -> String {
        format!("v{n}.{app}.{}", self.settings.domain)
    }

    /// Runs release `n`'s web processes beside the current release, at `vN.APP.<domain>`
    /// (workers and cron lines are left out: they would do the current release's work twice).
    pub async fn start_preview(&self, app: &str, n: i64) -> Result<String, ApiError> {
        let lock = self.app_lock(app);
        let _guard = lock.lock().await;
        let record = self.store().app(app)?;
        let info =
            self.release_infos(app)?.into_iter().find(|r| r.number == n).ok_or_else(|| {
                ApiError::not_found(format!(
                    "{app} has no release v{n} (`releases {app}` lists them)"
                ))
            })?;
        if record.current_release == Some(n) {
            return Err(ApiError::conflict(format!(
                "v{n} is the current release of {app}; it needs no preview"
            )));
        }
        if !info.available {
            return Err(ApiError::conflict(format!(
                "v{n} of {app} cannot run: it did not deploy or was pruned (`releases {app}`)"
            )));
        }
        if self.previews().contains_key(&(app.to_owned(), n)) {
            return Ok(self.preview_host(app, n));
        }
        let runtime = self.preview_runtime(app, n).await.map_err(ApiError::unprocessable)?;
        let runtimes = self.runtimes();
        self.previews().insert((app.to_owned(), n), runtime);
        self.publish_routes(&runtimes);
        Ok(self.preview_host(app, n))
    }

    /// Stops the preview of release `n`.
    pub async fn stop_preview(&self, app: &str, n: i64) -> Result<(), ApiError> {
        let runtime = {
            let runtimes = self.runtimes();
            let runtime = self.previews().remove(&(app.to_owned(), n));
            self.publish_routes(&runtimes);
            runtime
        };
        match runtime {
            Some(runtime) => {
                runtime.stop(&self.in_flight).await;
                // Its records went with its processes; the directory goes too when empty.
                let records = self.settings.layout.preview_records().join(app);
                let _ = std::fs::remove_dir(records.join(n.to_string()));
                let _ = std::fs::remove_dir(records);
                Ok(())
            }
            None => Err(ApiError::not_found(format!("v{n} of {app} has no preview running"))),
        }
    }

    /// Stops every preview of `app` (it stops, is destroyed or renamed).
    pub(crate) async fn stop_previews_of(&self, app: &str) {
        let previews: Vec<i64> =
            self.previews().keys().filter(|(owner, _)| owner == app).map(|(_, n)| *n).collect();
        for n in previews {
            let _ = self.stop_preview(app, n).await;
        }
    }

    /// Brings back the previews an earlier daemon ran (at daemon start, after the apps): their
    /// processes are adopted, and those that died meanwhile started again. A preview whose app
    /// or release is gone, or whose release is now current, is stopped instead.
    pub async fn restore_previews(&self) {
        let all = self.settings.layout.preview_records();
        for app_dir in crate::processes::read_dir_paths(&all) {
            let Some(app) = app_dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            for dir in crate::processes::read_dir_paths(&app_dir) {
                let n = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok());
                let restored = match n {
                    Some(n) => self.restore_preview(&app, n).await,
                    None => Err("not a release number".to_owned()),
                };
                if let Err(reason) = restored {
                    tracing::info!("stopping the preview {}: {reason}", dir.display());
                    crate::processes::stop_recorded(&dir).await;
                }
                // Only when empty: a restored preview's records stay.
                let _ = std::fs::remove_dir(&dir);
            }
            let _ = std::fs::remove_dir(&app_dir);
        }
    }

    async fn restore_preview(&self, app: &str, n: i64) -> Result<(), String> {
        self.start_preview(app, n).await.map_err(|e| e.message)?;
        tracing::info!(app, "the preview of v{n} runs again");
        Ok(())
    }

    /// Makes release `n` current (Paasmaker's "make current"): switched over without dropping
    /// a request, with the config it was made with; its preview, if any, stops.
    pub async fn promote(
        &self,
        app: &str,
        n: i64,
        out: &(dyn Fn(String) + Sync),
    ) -> Result<(), ApiError> {
        self.rollback(app, Some(n), out).await?;
        if self.previews().contains_key(&(app.to_owned(), n)) {
            self.stop_preview(app, n).await?;
        }
        Ok(())
    }

    async fn preview_runtime(&self, app: &str, n: i64) -> Result<crate::state::AppRuntime, String> {
        let mut desired = self.desired(app, n, &|_| {})?;
        let specs: Vec<berth_supervise::ProcessSpec> = std::mem::take(&mut desired.specs)
            .into_iter()
            .filter(|s| s.port.is_some())
            .map(|mut spec| {
                let layout = &self.settings.layout;
                spec.log_path =
                    layout.logs(app).join(format!("v{n}-{}.{}.log", spec.process_type, spec.index));
                spec.record_path =
                    Some(layout.preview_record(app, n, &spec.process_type, spec.index));
                spec
            })
            .collect();
        let mut instances = Vec::new();
        for spec in specs {
            // Those an earlier daemon left running are adopted.
            let started = match crate::processes::adopt_recorded(spec) {
                Ok(instance) => Ok(instance),
                Err(spec) => self.start_ready(*spec, &desired).await,
            };
            match started {
                Ok(instance) => instances.push(instance),
                Err(err) => {
                    for instance in instances {
                        instance.stop().await;
                    }
                    return Err(err);
                }
            }
        }
        Ok(crate::state::AppRuntime {
            release: n,
            instances,
            hosts: vec![self.preview_host(app, n)],
            statics: desired.statics,
            catch_all: desired.catch_all,
            crons: Vec::new(),
            route: desired.route,
        })
    }
}
