//! Running a release's processes at their scale: the switch-over of a deploy (all new
//! instances up before any old one stops), the rolling restart (one instance after another),
//! and scaling up and down without touching the instances that stay.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_build::wsgi_command;
use berth_procfile::ProcessKind;
use berth_router::InFlight;
use berth_supervise::adopt::InstanceRecord;
use berth_supervise::cron::{self, CronAction, CronHandle, CronJob, spawn_cron};
use berth_supervise::logs::{self, LogWriter, tail_lines};
use berth_supervise::{Instance, ProcessSpec, TaskSpec, wait_for_port};

use crate::health::Checks;
use crate::state::{AppRuntime, Daemon};

/// How long a new web instance has to start listening on its port.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process gets between SIGTERM and SIGKILL, unless the app sets
/// `BERTH_STOP_TIMEOUT` (seconds).
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one run of a cron command may take.
const CRON_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The most instances of one process type `ps:scale` accepts.
pub const MAX_INSTANCES: u32 = 64;

/// Everything a release should run, computed from its files, environment and scale.
pub(crate) struct Desired {
    /// Specs without a port: the port is chosen when the instance starts.
    pub specs: Vec<ProcessSpec>,
    pub hosts: Vec<String>,
    pub statics: Vec<berth_router::StaticMount>,
    pub catch_all: Option<std::path::PathBuf>,
    pub crons: Vec<CronJob>,
    /// The health checks of each process type that serves HTTP.
    pub checks: std::collections::HashMap<String, Checks>,
    /// Types that are replaced break-before-make: workers, and `BERTH_EXCLUSIVE_TYPES`.
    pub exclusive: std::collections::HashSet<String>,
    /// The name checks ask for.
    pub host: String,
    pub route: crate::state::RouteOptions,
}

impl Desired {
    /// Whether a new instance of this type is started before the old one stops.
    fn make_before_break(&self, spec: &ProcessSpec) -> bool {
        spec.port.is_some() && !self.exclusive.contains(&spec.process_type)
    }
}

/// A key that names one instance: `web.2`.
fn key(spec: &ProcessSpec) -> (String, u32) {
    (spec.process_type.clone(), spec.index)
}

impl Daemon {
    /// The processes `release` should run, at the app's scale.
    pub(crate) fn desired(
        &self,
        app: &str,
        release: i64,
        out: &(dyn Fn(String) + Sync),
    ) -> Result<Desired, String> {
        let build = self.stored_build(app, release);
        let (files, env) = self.release_env(app, release, &build)?;
        let hosts = self.hosts(app, &env)?;
        let (statics, catch_all) = self.static_routes(app, release, &files, &env)?;
        self.ensure_data_dir(app)?;
        let scale: BTreeMap<String, u32> =
            self.store().scale(app).map_err(|e| e.to_string())?.into_iter().collect();
        let knobs: BTreeMap<String, String> = env.iter().cloned().collect();
        let stop_timeout = match knobs.get("BERTH_STOP_TIMEOUT") {
            None => DEFAULT_STOP_TIMEOUT,
            Some(value) => Duration::from_secs(value.trim().parse().map_err(|_| {
                format!("BERTH_STOP_TIMEOUT={value:?} is not a number of seconds (for example 30)")
            })?),
        };
        let max_bytes = match knobs.get("BERTH_LOG_MAX_SIZE") {
            None => logs::DEFAULT_MAX_BYTES,
            Some(value) => logs::parse_size(value).ok_or_else(|| {
                format!("BERTH_LOG_MAX_SIZE={value:?} is not a size (for example 10M or 512K)")
            })?,
        };
        let keep = match knobs.get("BERTH_LOG_KEEP") {
            None => logs::DEFAULT_KEEP,
            Some(value) => value.trim().parse().map_err(|_| {
                format!("BERTH_LOG_KEEP={value:?} is not a number of files (for example 5)")
            })?,
        };
        let log_writer = LogWriter { exe: self.settings.exe.clone(), max_bytes, keep };
        let layout = &self.settings.layout;
        let run_as = self.app_user(app)?;
        let tree = self.tree(app, release);

        let mut specs = Vec::new();
        let mut crons = Vec::new();
        let mut checks = std::collections::HashMap::new();
        let mut exclusive: std::collections::HashSet<String> = knobs
            .get("BERTH_EXCLUSIVE_TYPES")
            .map(|v| v.split([',', ' ']).filter(|t| !t.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        for entry in &files.procfile.entries {
            let command = match entry.kind {
                ProcessKind::Web | ProcessKind::Worker => entry.command.clone(),
                ProcessKind::Wsgi => {
                    let (command, notes) = wsgi_command(&entry.command, &knobs);
                    for note in notes {
                        out(format!("warning: {note}"));
                    }
                    command
                }
                ProcessKind::Cron { ref schedule } => {
                    crons.push(self.cron_job(
                        app,
                        release,
                        &entry.name,
                        schedule,
                        &entry.command,
                        &env,
                        run_as,
                    )?);
                    continue;
                }
                ProcessKind::Static | ProcessKind::Release | ProcessKind::Preflight => continue,
            };
            if entry.kind.needs_port() {
                checks.insert(entry.name.clone(), crate::health::checks_for(&tree, &entry.name)?);
            } else {
                exclusive.insert(entry.name.clone());
            }
            let count = scale.get(&entry.name).copied().unwrap_or(1);
            let limits = berth_supervise::limits_for(&knobs, &entry.name)?;
            if !limits.is_empty()
                && matches!(
                    self.settings.cgroups.support(),
                    berth_supervise::CgroupSupport::Unsupported
                )
            {
                out(format!(
                    "warning: {} has resource limits, but this host has no usable cgroups, so they \
                     are not applied (the daemon's log says why)",
                    entry.name
                ));
            }
            let cgroup =
                berth_supervise::CgroupRequest { cgroups: self.settings.cgroups.clone(), limits };
            for index in 1..=count {
                let mut process_env = env.clone();
                process_env.push(("BERTH_PROCESS".to_owned(), format!("{}.{index}", entry.name)));
                specs.push(ProcessSpec {
                    app: app.to_owned(),
                    process_type: entry.name.clone(),
                    index,
                    command: command.clone(),
                    cwd: tree.clone(),
                    env: process_env,
                    log_path: layout.instance_log(app, &entry.name, index),
                    log_writer: Some(log_writer.clone()),
                    port: entry.kind.needs_port().then_some(0),
                    run_as,
                    stop_timeout,
                    cgroup: Some(cgroup.clone()),
                    record_path: Some(layout.instance_record(app, release, &entry.name, index)),
                });
            }
        }
        let host = format!("{app}.{}", self.settings.domain);
        let route = crate::state::RouteOptions::from_env(&env)?;
        Ok(Desired { specs, hosts, statics, catch_all, crons, checks, exclusive, host, route })
    }

    /// A cron line as a job: a command with the app's environment, or a web-cron request.
    #[allow(clippy::too_many_arguments, reason = "each argument is one part of the job")]
    fn cron_job(
        &self,
        app: &str,
        release: i64,
        name: &str,
        schedule: &str,
        command: &str,
        env: &[(String, String)],
        run_as: Option<berth_supervise::RunAs>,
    ) -> Result<CronJob, String> {
        cron::parse_schedule(schedule).map_err(|e| format!("{name}: {e}"))?;
        let action = match cron::web_cron_path(command) {
            Some(path) => {
                // Straight to an instance of the release the router serves now, not through
                // the router, whose access rules are for visitors.
                let (routes, owner) = (self.routes.clone(), app.to_owned());
                let instance = cron::InstanceLookup::new(move || {
                    routes.load().lookup_app(&owner)?.addrs.first().copied()
                });
                CronAction::WebRequest {
                    instance,
                    host: format!("{app}.{}", self.settings.domain),
                    path: path.to_owned(),
                }
            }
            None => {
                let mut env = env.to_vec();
                env.push(("BERTH_PROCESS".to_owned(), name.to_owned()));
                CronAction::Command(TaskSpec {
                    command: command.to_owned(),
                    cwd: self.tree(app, release),
                    env,
                    run_as,
                    timeout: CRON_TIMEOUT,
                })
            }
        };
        Ok(CronJob {
            name: name.to_owned(),
            schedule: schedule.to_owned(),
            action,
            log_path: self.settings.layout.instance_log(app, name, 1),
        })
    }

    /// Starts one instance (with a fresh port when it serves HTTP) and, for a web instance,
    /// waits until it listens. On failure the instance is stopped and the error says why, with
    /// the end of its log.
    pub(crate) async fn start_ready(
        &self,
        mut spec: ProcessSpec,
        desired: &Desired,
    ) -> Result<Instance, String> {
        if spec.port.is_some() {
            let port = free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
            spec.port = Some(port);
            spec.env.push(("PORT".to_owned(), port.to_string()));
            spec.env.push(("PM_PORT".to_owned(), port.to_string()));
        }
        let instance = Instance::spawn(spec);
        let Some(port) = instance.spec().port else { return Ok(instance) };
        let checks = desired.checks.get(&instance.spec().process_type).cloned().unwrap_or_default();
        let ready = async {
            wait_for_port(&instance, port, START_TIMEOUT).await?;
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            crate::health::run_checks(&checks, addr, &desired.host).await
        };
        match ready.await {
            Ok(()) => Ok(instance),
            Err(err) => {
                let name = format!("{}.{}", instance.spec().process_type, instance.spec().index);
                let log_path = instance.spec().log_path.clone();
                instance.stop().await;
                let mut message = format!("{name} did not start: {err}");
                let tail = tail_lines(&log_path, 15);
                if !tail.is_empty() {
                    message.push_str(&format!("\nlast lines of its log ({}):", log_path.display()));
                    for line in tail {
                        message.push_str(&format!("\n  {line}"));
                    }
                }
                Err(message)
            }
        }
    }

    /// Switches the app to `release` (Paasmaker's "make current"): the new web instances start
    /// next to the old ones and must pass their health checks; then the router sends to old
    /// and new together, then to the new alone, and the old ones stop once their requests are
    /// done. Workers and exclusive types go break-before-make: the old stop, then the new
    /// start. When a new web instance fails, the new ones are stopped and nothing changed.
    pub async fn activate(
        &self,
        app: &str,
        release: i64,
        out: &(dyn Fn(String) + Sync),
    ) -> Result<(), String> {
        let mut desired = self.desired(app, release, out)?;
        let specs = std::mem::take(&mut desired.specs);
        let (make_first, break_first): (Vec<ProcessSpec>, Vec<ProcessSpec>) =
            specs.into_iter().partition(|s| desired.make_before_break(s));

        let started =
            futures_join_all(make_first.into_iter().map(|spec| self.start_ready(spec, &desired)))
                .await;
        let mut new = Vec::new();
        let mut error = None;
        for result in started {
            match result {
                Ok(instance) => new.push(instance),
                Err(err) => error = error.or(Some(err)),
            }
        }
        if let Some(err) = error {
            futures_join_all(new.into_iter().map(|i| i.stop())).await;
            return Err(err);
        }
        if !new.is_empty() {
            out(format!("{} web instance(s) healthy; switching the routes", new.len()));
        }

        let breaking: std::collections::HashSet<String> =
            break_first.iter().map(|s| s.process_type.clone()).collect();
        let is_breaking = |i: &Instance| breaking.contains(&i.spec().process_type);
        let (old_make, old_break, old_crons) = {
            let mut runtimes = self.runtimes();
            let runtime = runtimes.entry(app.to_owned()).or_default();
            let n_new = new.len();
            // Old and new together for a moment, then the new alone: no request finds
            // neither (Paasmaker's switch-over).
            let old = std::mem::take(&mut runtime.instances);
            runtime.instances = new.into_iter().chain(old).collect();
            runtime.hosts = desired.hosts.clone();
            runtime.statics = desired.statics.clone();
            runtime.catch_all = desired.catch_all.clone();
            runtime.route = desired.route.clone();
            runtime.release = release;
            self.publish_routes(&runtimes);
            let runtime = runtimes.get_mut(app).expect("inserted above");
            let old = runtime.instances.split_off(n_new);
            let (old_break, old_make): (Vec<Instance>, Vec<Instance>) =
                old.into_iter().partition(is_breaking);
            let crons = std::mem::take(&mut runtime.crons);
            self.publish_routes(&runtimes);
            (old_make, old_break, crons)
        };
        // Responses the old release cached must not outlive it.
        berth_router::CacheRegistry::clear(app);
        for handle in old_crons {
            handle.stop();
        }
        futures_join_all(old_make.into_iter().map(|i| retire(&self.in_flight, i))).await;

        // Workers and exclusive types: the old ones stop before the new ones start.
        futures_join_all(old_break.into_iter().map(|i| retire(&self.in_flight, i))).await;
        let started =
            futures_join_all(break_first.into_iter().map(|spec| self.start_ready(spec, &desired)))
                .await;
        let crons = start_crons(desired.crons)?;
        let mut runtimes = self.runtimes();
        if let Some(runtime) = runtimes.get_mut(app) {
            for result in started {
                match result {
                    Ok(instance) => runtime.instances.push(instance),
                    // A worker that cannot start is supervised like any other; an exclusive web
                    // type that fails its check after the old one stopped is reported.
                    Err(err) => out(format!("warning: {err}")),
                }
            }
            runtime.instances.sort_by_key(|i| key(i.spec()));
            runtime.crons = crons;
        }
        self.publish_routes(&runtimes);
        Ok(())
    }

    /// Brings an app back after the daemon started: the instances an earlier daemon left
    /// running are adopted (watched, not started again), the missing ones are started.
    pub async fn adopt_or_start(&self, app: &str, release: i64) -> Result<(), String> {
        let mut desired = self.desired(app, release, &|_| {})?;
        let specs = std::mem::take(&mut desired.specs);
        let crons = std::mem::take(&mut desired.crons);
        let mut instances = Vec::new();
        let mut missing = Vec::new();
        for spec in specs {
            match adopt_recorded(spec) {
                Ok(instance) => instances.push(instance),
                Err(spec) => missing.push(*spec),
            }
        }
        let adopted = instances.len();
        let started =
            futures_join_all(missing.into_iter().map(|spec| self.start_ready(spec, &desired)))
                .await;
        let mut error = None;
        for result in started {
            match result {
                Ok(instance) => instances.push(instance),
                Err(err) => error = error.or(Some(err)),
            }
        }
        instances.sort_by_key(|i| key(i.spec()));
        let crons = start_crons(crons)?;
        let runtime = AppRuntime {
            release,
            instances,
            hosts: desired.hosts,
            statics: desired.statics,
            catch_all: desired.catch_all,
            crons,
            route: desired.route,
        };
        {
            let mut runtimes = self.runtimes();
            runtimes.insert(app.to_owned(), runtime);
            self.publish_routes(&runtimes);
        }
        tracing::info!(app, adopted, "running again");
        error.map_or(Ok(()), Err)
    }

    /// Stops the processes recorded by an earlier daemon that no running app adopted (an app
    /// stopped, destroyed, scaled down or redeployed while no daemon ran), and forgets them.
    pub async fn stop_strays(&self) {
        let adopted: Vec<std::path::PathBuf> = self
            .runtimes()
            .values()
            .flat_map(|r| r.instances.iter().filter_map(|i| i.spec().record_path.clone()))
            .collect();
        let pattern = self.settings.layout.instance_records();
        let mut records = Vec::new();
        for app in read_dir_paths(&pattern) {
            for release in read_dir_paths(&app) {
                records.extend(
                    read_dir_paths(&release)
                        .into_iter()
                        .filter(|p| p.extension().is_some_and(|e| e == "json")),
                );
            }
        }
        for path in records.into_iter().filter(|p| !adopted.contains(p)) {
            if let Some(record) = InstanceRecord::read(&path) {
                if record.is_alive() {
                    tracing::info!("stopping {} left by an earlier daemon", path.display());
                }
                record.stop(DEFAULT_STOP_TIMEOUT).await;
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Replaces the app's instances one after another (new up and routed before the old one
    /// stops), so that an app with several web instances never stops answering. Picks up
    /// config changes; instances beyond the scale are stopped, missing ones started.
    pub async fn rolling_restart(
        &self,
        app: &str,
        release: i64,
        out: &(dyn Fn(String) + Sync),
    ) -> Result<(), String> {
        // Nothing runs yet: a plain switch-over, without working out the release twice.
        if !self.runtimes().contains_key(app) {
            return self.activate(app, release, out).await;
        }
        let mut desired = self.desired(app, release, out)?;
        let specs = std::mem::take(&mut desired.specs);
        let crons = start_crons(std::mem::take(&mut desired.crons))?;
        {
            let mut runtimes = self.runtimes();
            if let Some(runtime) = runtimes.get_mut(app) {
                for handle in std::mem::replace(&mut runtime.crons, crons) {
                    handle.stop();
                }
                runtime.release = release;
                runtime.hosts = desired.hosts.clone();
                runtime.statics = desired.statics.clone();
                runtime.catch_all = desired.catch_all.clone();
                runtime.route = desired.route.clone();
                runtime.route = desired.route.clone();
            }
            self.publish_routes(&runtimes);
        }
        let wanted: Vec<(String, u32)> = specs.iter().map(key).collect();
        for spec in specs {
            let new = self.start_ready(spec, &desired).await?;
            let old = self.swap_instance(app, new);
            if let Some(old) = old {
                retire(&self.in_flight, old).await;
            }
        }
        self.stop_unwanted(app, &wanted).await;
        Ok(())
    }

    /// Brings the running instances to the app's scale: starts the missing ones and stops the
    /// extra ones, leaving the others alone.
    pub async fn apply_scale(&self, app: &str, release: i64) -> Result<(), String> {
        if !self.runtimes().contains_key(app) {
            return self.activate(app, release, &|_| {}).await;
        }
        let mut desired = self.desired(app, release, &|_| {})?;
        let specs = std::mem::take(&mut desired.specs);
        let running: Vec<(String, u32)> = {
            let runtimes = self.runtimes();
            runtimes
                .get(app)
                .map(|r| r.instances.iter().map(|i| key(i.spec())).collect())
                .unwrap_or_default()
        };
        let wanted: Vec<(String, u32)> = specs.iter().map(key).collect();
        let missing: Vec<ProcessSpec> =
            specs.into_iter().filter(|s| !running.contains(&key(s))).collect();
        let started =
            futures_join_all(missing.into_iter().map(|spec| self.start_ready(spec, &desired)))
                .await;
        let mut error = None;
        for result in started {
            match result {
                Ok(instance) => {
                    if let Some(old) = self.swap_instance(app, instance) {
                        retire(&self.in_flight, old).await;
                    }
                }
                Err(err) => error = error.or(Some(err)),
            }
        }
        self.stop_unwanted(app, &wanted).await;
        error.map_or(Ok(()), Err)
    }

    /// Puts `new` in the app's runtime and route table in place of the instance with the same
    /// type and index, and returns that one.
    fn swap_instance(&self, app: &str, new: Instance) -> Option<Instance> {
        let mut runtimes = self.runtimes();
        let runtime = runtimes.get_mut(app)?;
        let position = runtime.instances.iter().position(|i| key(i.spec()) == key(new.spec()));
        let old = match position {
            Some(position) => Some(std::mem::replace(&mut runtime.instances[position], new)),
            None => {
                runtime.instances.push(new);
                None
            }
        };
        runtime.instances.sort_by_key(|i| key(i.spec()));
        self.publish_routes(&runtimes);
        old
    }

    /// Takes the instances that are not `wanted` out of the route table, then stops them.
    async fn stop_unwanted(&self, app: &str, wanted: &[(String, u32)]) {
        let unwanted: Vec<Instance> = {
            let mut runtimes = self.runtimes();
            let Some(runtime) = runtimes.get_mut(app) else { return };
            let (keep, drop): (Vec<Instance>, Vec<Instance>) =
                std::mem::take(&mut runtime.instances)
                    .into_iter()
                    .partition(|i| wanted.contains(&key(i.spec())));
            runtime.instances = keep;
            self.publish_routes(&runtimes);
            drop
        };
        futures_join_all(unwanted.into_iter().map(|i| retire(&self.in_flight, i))).await;
    }
}

/// Runs futures concurrently and returns their outputs in order (a small `join_all`, to keep
/// the futures crate out of the dependency tree).
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future completed")).collect()
}

/// How long an instance taken out of the routes gets to finish the requests it has.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Stops an instance the router no longer sends requests to, once the requests it was
/// sending are done (bounded by `DRAIN_TIMEOUT`).
pub(crate) async fn retire(in_flight: &InFlight, instance: Instance) {
    if let Some(port) = instance.spec().port {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        // A request that read the route table just before the swap counts itself a moment
        // later; give it that moment before trusting a zero.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while in_flight.count(addr) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        in_flight.forget(addr);
    }
    instance.stop().await;
}

/// [`retire`] for a spawned task.
pub(crate) async fn retire_owned(in_flight: std::sync::Arc<InFlight>, instance: Instance) {
    retire(&in_flight, instance).await;
}

/// Starts the schedules of an app's cron lines.
fn start_crons(jobs: Vec<CronJob>) -> Result<Vec<CronHandle>, String> {
    jobs.into_iter().map(spawn_cron).collect()
}

/// The process an earlier daemon recorded for `spec` (at its `record_path`), adopted when it
/// still runs; otherwise the spec back, to be started on a fresh port.
pub(crate) fn adopt_recorded(mut spec: ProcessSpec) -> Result<Instance, Box<ProcessSpec>> {
    let record = spec.record_path.as_deref().and_then(InstanceRecord::read);
    let Some(record) = record.filter(|r| r.port.is_some() == spec.port.is_some()) else {
        tracing::debug!(app = spec.app, "{} has no record of a process to adopt", spec.name());
        return Err(Box::new(spec));
    };
    if let Some(port) = record.port {
        spec.port = Some(port);
        spec.env.push(("PORT".to_owned(), port.to_string()));
    }
    Instance::adopt(spec, &record).map_err(|mut spec| {
        tracing::info!(
            app = spec.app,
            pid = record.pid,
            "{} exited while no daemon ran",
            spec.name()
        );
        // Gone while the daemon was away.
        spec.port = spec.port.map(|_| 0);
        spec.env.retain(|(k, _)| k != "PORT");
        spec
    })
}

/// Stops the processes recorded in `dir` (as by [`InstanceRecord`]) and removes the records.
pub(crate) async fn stop_recorded(dir: &std::path::Path) {
    for path in read_dir_paths(dir) {
        if let Some(record) = InstanceRecord::read(&path) {
            record.stop(DEFAULT_STOP_TIMEOUT).await;
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// The entries of a directory (none when it cannot be read).
pub(crate) fn read_dir_paths(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map(|e| e.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// A port that nothing listens on now. The app binds it a moment later; another process
/// taking it in between is unlikely on a server, and shows up as a failed start.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_all_keeps_order_and_runs_concurrently() {
        // Each future waits until all five have started: run one after another, they would
        // never finish (the timeout only guards against that hang).
        let started = std::sync::atomic::AtomicUsize::new(0);
        let outputs = tokio::time::timeout(
            Duration::from_secs(10),
            futures_join_all((0..5u64).map(|i| {
                let started = &started;
                async move {
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    while started.load(std::sync::atomic::Ordering::SeqCst) < 5 {
                        tokio::task::yield_now().await;
                    }
                    i
                }
            })),
        )
        .await
        .expect("the futures ran concurrently");
        assert_eq!(outputs, [0, 1, 2, 3, 4]);
    }
}
