//! Applying [`Limits`] to processes with cgroups: v2 where the host has a unified hierarchy
//! with the memory controller, v1 where the controllers are mounted one hierarchy each.
//!
//! Each process gets a group `BASE/APP/GROUP` (e.g. `berth/myapp/web.1`) under the mount point
//! of each hierarchy. The child joins it between fork and exec by writing `0` to the group's
//! `cgroup.procs`, opened by the daemon beforehand: the kernel checks the credentials of the
//! file's opener, so this works after the child dropped root.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use crate::limits::Limits;

/// The CFS period, in microseconds, that CPU quotas are given against (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The controllers Berth uses, with the knob that sets each one's limit (for messages).
const CONTROLLERS: [(&str, &str); 3] =
    [("memory", "BERTH_MEMORY_LIMIT"), ("cpu", "BERTH_CPU_LIMIT"), ("pids", "BERTH_PIDS_LIMIT")];

/// Which cgroup interface limits are applied through, and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSupport {
    V2 {
        root: PathBuf,
    },
    /// The mount point of each controller's hierarchy; `None` when it is missing or read-only.
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    Unsupported,
}

/// The cgroup mounts of the host and the groups Berth makes in them.
#[derive(Debug, Clone)]
pub struct Cgroups {
    base: String,
    support: CgroupSupport,
    mounts: Mounts,
}

/// The cgroup filesystems found in mountinfo, read-only ones included (for the warning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Mounts {
    unified: Option<Mount>,
    memory: Option<Mount>,
    cpu: Option<Mount>,
    pids: Option<Mount>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    path: PathBuf,
    read_only: bool,
}

impl Mounts {
    fn v1(&self, controller: &str) -> Option<&Mount> {
        match controller {
            "memory" => self.memory.as_ref(),
            "cpu" => self.cpu.as_ref(),
            "pids" => self.pids.as_ref(),
            _ => None,
        }
    }

    fn v1_mut(&mut self, controller: &str) -> Option<&mut Option<Mount>> {
        match controller {
            "memory" => Some(&mut self.memory),
            "cpu" => Some(&mut self.cpu),
            "pids" => Some(&mut self.pids),
            _ => None,
        }
    }

    fn all(&self) -> impl Iterator<Item = &Mount> {
        [&self.unified, &self.memory, &self.cpu, &self.pids].into_iter().flatten()
    }
}

fn writable(mount: &Option<Mount>) -> Option<PathBuf> {
    mount.as_ref().filter(|m| !m.read_only).map(|m| m.path.clone())
}

impl Cgroups {
    /// Finds the cgroup filesystems in `/proc/self/mountinfo` and picks v2 when its root offers
    /// the memory controller, else the v1 hierarchies. The string, when there is one, is a
    /// warning for the daemon's log: which limits cannot be applied, why, and what to do.
    pub fn detect(base: &str) -> (Cgroups, Option<String>) {
        let mountinfo = match std::fs::read_to_string("/proc/self/mountinfo") {
            Ok(mountinfo) => mountinfo,
            Err(err) => {
                let cgroups = Cgroups {
                    base: base.to_owned(),
                    support: CgroupSupport::Unsupported,
                    mounts: Mounts::default(),
                };
                let warning = format!(
                    "resource limits cannot be applied: cannot read /proc/self/mountinfo to \
                     find the cgroup filesystem ({err}); mount /proc"
                );
                return (cgroups, Some(warning));
            }
        };
        let mut cgroups = Cgroups::from_mountinfo(&mountinfo, base);
        let unified_controllers = cgroups.unified_root().map(|root| {
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default()
        });
        cgroups.choose(unified_controllers.as_deref());
        let warning = cgroups.warning(unified_controllers.as_deref());
        (cgroups, warning)
    }

    /// Picks by mounts alone: the v1 hierarchies of memory, cpu and pids when any of them is
    /// mounted writable, else a writable cgroup2. On a hybrid host the cgroup2 mount stays
    /// visible through [`Cgroups::unified_root`]; [`Cgroups::detect`] prefers it when it has
    /// the memory controller, which takes reading its `cgroup.controllers`.
    pub fn from_mountinfo(mountinfo: &str, base: &str) -> Cgroups {
        let mut mounts = Mounts::default();
        // A hierarchy can be mounted more than once (bind mounts in containers); the first
        // writable mount wins, else the first.
        let keep = |slot: &mut Option<Mount>, mount: Mount| {
            if slot.as_ref().is_none_or(|old| old.read_only && !mount.read_only) {
                *slot = Some(mount);
            }
        };
        for line in mountinfo.lines() {
            let Some(entry) = MountinfoEntry::parse(line) else { continue };
            let mount = Mount { path: entry.mount_point.clone(), read_only: entry.read_only };
            match entry.fstype {
                "cgroup2" => keep(&mut mounts.unified, mount),
                "cgroup" => {
                    for option in entry.super_options.split(',') {
                        if let Some(slot) = mounts.v1_mut(option) {
                            keep(slot, mount.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        let v1 = CgroupSupport::V1 {
            memory: writable(&mounts.memory),
            cpu: writable(&mounts.cpu),
            pids: writable(&mounts.pids),
        };
        let support = if v1 != (CgroupSupport::V1 { memory: None, cpu: None, pids: None }) {
            v1
        } else if let Some(root) = writable(&mounts.unified) {
            CgroupSupport::V2 { root }
        } else {
            CgroupSupport::Unsupported
        };
        Cgroups { base: base.to_owned(), support, mounts }
    }

    pub fn support(&self) -> &CgroupSupport {
        &self.support
    }

    /// The name of the group every app's groups live in, e.g. `berth`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The writable cgroup2 mount, also when [`Cgroups::support`] chose v1.
    pub fn unified_root(&self) -> Option<&Path> {
        self.mounts.unified.as_ref().filter(|m| !m.read_only).map(|m| m.path.as_path())
    }

    /// Switches to v2 when the cgroup2 root offers the memory controller: then the controllers
    /// are there and not bound to v1 hierarchies.
    fn choose(&mut self, unified_controllers: Option<&str>) {
        if let (Some(root), Some(controllers)) = (self.unified_root(), unified_controllers)
            && controllers.split_whitespace().any(|c| c == "memory")
        {
            self.support = CgroupSupport::V2 { root: root.to_owned() };
        }
    }

    /// What the daemon should log when some limits cannot be applied, given the contents of
    /// the cgroup2 root's `cgroup.controllers` when there is one.
    fn warning(&self, unified_controllers: Option<&str>) -> Option<String> {
        let knobs = |controllers: &[&str]| {
            CONTROLLERS
                .iter()
                .filter(|(c, _)| controllers.contains(c))
                .map(|(_, knob)| *knob)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.support {
            CgroupSupport::Unsupported => {
                let read_only: Vec<String> =
                    self.mounts.all().map(|m| m.path.display().to_string()).collect();
                Some(if read_only.is_empty() {
                    "resource limits (BERTH_MEMORY_LIMIT, BERTH_CPU_LIMIT, BERTH_PIDS_LIMIT) \
                     cannot be applied: no cgroup filesystem is mounted (/proc/self/mountinfo \
                     lists none); mount one with `mount -t cgroup2 none /sys/fs/cgroup`, as \
                     systemd does at boot"
                        .to_owned()
                } else {
                    let mut read_only = read_only;
                    read_only.dedup();
                    format!(
                        "resource limits (BERTH_MEMORY_LIMIT, BERTH_CPU_LIMIT, \
                         BERTH_PIDS_LIMIT) cannot be applied: the cgroup filesystem ({}) is \
                         mounted read-only, as in a container; run Berth on the host, or give \
                         its container a writable /sys/fs/cgroup (docker run --privileged, or \
                         --cgroupns=private with -v /sys/fs/cgroup:/sys/fs/cgroup:rw)",
                        read_only.join(", ")
                    )
                })
            }
            CgroupSupport::V2 { root } => {
                let offered: Vec<&str> =
                    unified_controllers.unwrap_or_default().split_whitespace().collect();
                let missing: Vec<&str> =
                    CONTROLLERS.iter().map(|(c, _)| *c).filter(|c| !offered.contains(c)).collect();
                (!missing.is_empty()).then(|| {
                    format!(
                        "{} cannot be applied: the cgroup2 hierarchy at {} does not offer the {} \
                         controller (its cgroup.controllers lists: {}); the kernel was booted \
                         with cgroup_disable={} or the controller is bound to a cgroup v1 \
                         hierarchy: boot with cgroup_enable={} and \
                         systemd.unified_cgroup_hierarchy=1",
                        knobs(&missing),
                        root.display(),
                        missing.join(", "),
                        if offered.is_empty() { "nothing".to_owned() } else { offered.join(" ") },
                        missing[0],
                        missing[0],
                    )
                })
            }
            CgroupSupport::V1 { memory, cpu, pids } => {
                let missing: Vec<&str> = [("memory", memory), ("cpu", cpu), ("pids", pids)]
                    .into_iter()
                    .filter(|(_, path)| path.is_none())
                    .map(|(c, _)| c)
                    .collect();
                (!missing.is_empty()).then(|| {
                    let why: Vec<String> = missing
                        .iter()
                        .map(|c| match self.mounts.v1(c) {
                            Some(m) => format!("{c} at {} is read-only", m.path.display()),
                            None => format!("{c} is not mounted"),
                        })
                        .collect();
                    format!(
                        "{} cannot be applied: no writable cgroup v1 hierarchy has the {} \
                         controller ({}); mount it, e.g. `mkdir -p /sys/fs/cgroup/{} && mount -t \
                         cgroup -o {} cgroup /sys/fs/cgroup/{}`",
                        knobs(&missing),
                        missing.join(", "),
                        why.join(", "),
                        missing[0],
                        missing[0],
                        missing[0],
                    )
                })
            }
        }
    }

    /// The directory of BASE/APP/GROUP in each hierarchy, each once (v1 controllers can share
    /// a hierarchy), or an error when a name would leave its parent.
    fn group_dirs(&self, app: &str, group: &str) -> io::Result<Vec<PathBuf>> {
        for name in [app, group] {
            let mut components = Path::new(name).components();
            if !matches!((components.next(), components.next()), (Some(Component::Normal(_)), None))
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name:?} cannot name a cgroup: it must be one path component"),
                ));
            }
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for mount in self.mount_points() {
            let dir = mount.join(&self.base).join(app).join(group);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        Ok(dirs)
    }

    fn mount_points(&self) -> Vec<&Path> {
        match &self.support {
            CgroupSupport::V2 { root } => vec![root],
            CgroupSupport::V1 { memory, cpu, pids } => {
                [memory, cpu, pids].into_iter().flatten().map(PathBuf::as_path).collect()
            }
            CgroupSupport::Unsupported => Vec::new(),
        }
    }

    /// The group's directory in the hierarchy that has `controller`.
    fn controller_dir(&self, controller: &str, app: &str, group: &str) -> Option<PathBuf> {
        let mount = match &self.support {
            CgroupSupport::V2 { root } => root,
            CgroupSupport::V1 { memory, cpu, pids } => match controller {
                "memory" => memory.as_ref()?,
                "cpu" => cpu.as_ref()?,
                "pids" => pids.as_ref()?,
                _ => return None,
            },
            CgroupSupport::Unsupported => return None,
        };
        Some(mount.join(&self.base).join(app).join(group))
    }

    /// Creates (or reuses) BASE/APP/GROUP in each hierarchy, writes `limits` (a limit left
    /// `None` is reset to unlimited) and opens the group's `cgroup.procs` for the child to
    /// join. An empty group left over is made anew, so that its counters (OOM kills, failures)
    /// describe the new process only. A limit whose controller the host lacks is skipped with
    /// a warning ([`Cgroups::detect`] explained it at startup). `None` when unsupported.
    pub fn prepare(
        &self,
        app: &str,
        group: &str,
        limits: &Limits,
    ) -> io::Result<Option<CgroupPlacement>> {
        let dirs = self.group_dirs(app, group)?;
        if dirs.is_empty() {
            return Ok(None);
        }
        if let CgroupSupport::V2 { root } = &self.support {
            self.enable_v2_controllers(root, app)?;
        }
        for dir in &dirs {
            // Fails when a process is still in it, and then the group is reused.
            let _ = std::fs::remove_dir(dir);
            std::fs::create_dir_all(dir)
                .map_err(|err| with_path(err, "cannot create the cgroup", dir))?;
        }
        match &self.support {
            CgroupSupport::V2 { .. } => self.write_v2_limits(app, group, limits)?,
            CgroupSupport::V1 { .. } => self.write_v1_limits(app, group, limits)?,
            CgroupSupport::Unsupported => {}
        }
        let mut procs = Vec::with_capacity(dirs.len());
        for dir in &dirs {
            let path = dir.join("cgroup.procs");
            // std opens with O_CLOEXEC, so the descriptor does not outlive the child's exec.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|err| with_path(err, "cannot open", &path))?;
            procs.push(OwnedFd::from(file));
        }
        Ok(Some(CgroupPlacement { procs }))
    }

    /// On v2 a controller works in a group only when every ancestor enables it for its
    /// children in `cgroup.subtree_control`: the root, BASE and BASE/APP.
    fn enable_v2_controllers(&self, root: &Path, app: &str) -> io::Result<()> {
        let offered = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|err| with_path(err, "cannot read", &root.join("cgroup.controllers")))?;
        let wanted: Vec<&str> = CONTROLLERS
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| offered.split_whitespace().any(|o| o == *c))
            .collect();
        let mut dir = root.to_owned();
        for part in [Path::new(&self.base), Path::new(app)] {
            enable_in(&dir, &wanted)?;
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(with_path(err, "cannot create the cgroup", &dir));
                }
                _ => {}
            }
        }
        enable_in(&dir, &wanted)
    }

    fn write_v2_limits(&self, app: &str, group: &str, limits: &Limits) -> io::Result<()> {
        let Some(dir) = self.controller_dir("memory", app, group) else { return Ok(()) };
        let available = |file: &str, knob: &str, limited: bool| {
            let exists = dir.join(file).exists();
            if !exists && limited {
                tracing::warn!("{knob} is not applied to {app} {group}: {file} is missing");
            }
            exists
        };
        if available("memory.max", "BERTH_MEMORY_LIMIT", limits.memory_bytes.is_some()) {
            write(&dir.join("memory.max"), &limit_or(limits.memory_bytes, "max"))?;
            // Unlike v1's memsw, memory.max does not count swap: without this the kernel
            // would swap the group out instead of holding it to its limit.
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, if limits.memory_bytes.is_some() { "0" } else { "max" })?;
            }
        }
        if available("cpu.max", "BERTH_CPU_LIMIT", limits.cpu_millicores.is_some()) {
            let quota = limit_or(limits.cpu_millicores.map(cpu_quota_us), "max");
            write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        if available("pids.max", "BERTH_PIDS_LIMIT", limits.pids.is_some()) {
            write(&dir.join("pids.max"), &limit_or(limits.pids, "max"))?;
        }
        Ok(())
    }

    fn write_v1_limits(&self, app: &str, group: &str, limits: &Limits) -> io::Result<()> {
        let missing = |knob: &str| {
            tracing::warn!("{knob} is not applied to {app} {group}: no cgroup v1 hierarchy for it")
        };
        match self.controller_dir("memory", app, group) {
            Some(dir) => {
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                let memsw = memsw.exists().then_some(memsw);
                // memsw (memory + swap) may never be below the memory limit, so it is lifted
                // first and set to the same value after: then swap cannot dodge the limit.
                if let Some(memsw) = &memsw {
                    write(memsw, "-1")?;
                }
                write(&dir.join("memory.limit_in_bytes"), &limit_or(limits.memory_bytes, "-1"))?;
                if let (Some(memsw), Some(bytes)) = (&memsw, limits.memory_bytes) {
                    write(memsw, &bytes.to_string())?;
                }
            }
            None if limits.memory_bytes.is_some() => missing("BERTH_MEMORY_LIMIT"),
            None => {}
        }
        match self.controller_dir("cpu", app, group) {
            Some(dir) => {
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                let quota = limit_or(limits.cpu_millicores.map(cpu_quota_us), "-1");
                write(&dir.join("cpu.cfs_quota_us"), &quota)?;
            }
            None if limits.cpu_millicores.is_some() => missing("BERTH_CPU_LIMIT"),
            None => {}
        }
        match self.controller_dir("pids", app, group) {
            Some(dir) => write(&dir.join("pids.max"), &limit_or(limits.pids, "max"))?,
            None if limits.pids.is_some() => missing("BERTH_PIDS_LIMIT"),
            None => {}
        }
        Ok(())
    }

    /// Removes BASE/APP/GROUP, and BASE/APP when no other group is left in it. A group that
    /// is gone already or still has processes is left as it is.
    pub fn remove(&self, app: &str, group: &str) {
        let Ok(dirs) = self.group_dirs(app, group) else { return };
        for dir in dirs {
            remove_group(&dir);
            if let Some(app_dir) = dir.parent() {
                remove_group(app_dir);
            }
        }
    }

    /// The group's current memory use in bytes (page cache included, as the limit counts it).
    pub fn memory_usage(&self, app: &str, group: &str) -> Option<u64> {
        let dir = self.controller_dir("memory", app, group)?;
        let file = match self.support {
            CgroupSupport::V2 { .. } => "memory.current",
            _ => "memory.usage_in_bytes",
        };
        std::fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Whether the kernel killed a process of the group for going over its memory limit.
    pub fn oom_killed(&self, app: &str, group: &str) -> bool {
        let Some(dir) = self.controller_dir("memory", app, group) else { return false };
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
        match self.support {
            CgroupSupport::V2 { .. } => {
                read("memory.events").and_then(|t| counter(&t, "oom_kill")).is_some_and(|n| n > 0)
            }
            _ => match read("memory.oom_control").and_then(|t| counter(&t, "oom_kill")) {
                Some(kills) => kills > 0,
                // Kernels before 4.13 do not count kills; hitting the limit is the best sign
                // there is, though reclaim may have resolved it without a kill.
                None => read("memory.failcnt")
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0),
            },
        }
    }
}

/// The opened `cgroup.procs` files of a group, ready for a child to join.
#[derive(Debug)]
pub struct CgroupPlacement {
    procs: Vec<OwnedFd>,
}

impl CgroupPlacement {
    /// Makes the child join the groups before it execs: a `pre_exec` hook writes `0` (the
    /// writer itself) to each opened `cgroup.procs`. The hook runs after `Command::uid` dropped
    /// privileges, which is fine because the kernel checks the credentials the file was opened
    /// with. A failed write fails the spawn.
    #[allow(unsafe_code, reason = "pre_exec is unsafe; the hook only calls write(2)")]
    pub fn apply(self, cmd: &mut tokio::process::Command) {
        let procs = self.procs;
        let hook = move || -> io::Result<()> {
            for fd in &procs {
                nix::unistd::write(fd, b"0")?;
            }
            Ok(())
        };
        // SAFETY: the hook runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed. It iterates over a Vec built before the fork
        // (no allocation), calls write(2) on descriptors opened before the fork, and turns an
        // errno into io::Error's OS variant, which does not allocate either. It takes no
        // locks. The descriptors are O_CLOEXEC, so they close at exec and the app never sees
        // them; the parent's copies close when `cmd` is dropped.
        unsafe {
            cmd.pre_exec(hook);
        }
    }
}

/// The CFS quota per [`CPU_PERIOD_US`] for a share of cores in thousandths.
fn cpu_quota_us(millicores: u32) -> u64 {
    u64::from(millicores) * CPU_PERIOD_US / 1000
}

fn limit_or(limit: Option<impl ToString>, unlimited: &str) -> String {
    limit.map_or_else(|| unlimited.to_owned(), |value| value.to_string())
}

/// Adds `+CONTROLLER` to `dir`'s `cgroup.subtree_control` for each one not enabled yet.
fn enable_in(dir: &Path, controllers: &[&str]) -> io::Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let enabled =
        std::fs::read_to_string(&path).map_err(|err| with_path(err, "cannot read", &path))?;
    for controller in controllers {
        if !enabled.split_whitespace().any(|c| c == *controller) {
            std::fs::write(&path, format!("+{controller}")).map_err(|err| {
                // cgroup v2 hands controllers only to groups whose parent has no processes.
                let hint = if err.kind() == io::ErrorKind::ResourceBusy {
                    " (the group has processes of its own, as the root of a container's cgroup \
                     namespace does; start Berth in a child group, e.g. `mkdir \
                     /sys/fs/cgroup/init && echo $$ > /sys/fs/cgroup/init/cgroup.procs`)"
                } else {
                    ""
                };
                let path = path.display();
                io::Error::new(
                    err.kind(),
                    format!("cannot enable {controller} in {path}: {err}{hint}"),
                )
            })?;
        }
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|err| with_path(err, &format!("cannot write {value:?} to"), path))
}

fn with_path(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

/// rmdir of a cgroup; one with processes or child groups (busy) or one already gone is fine.
fn remove_group(dir: &Path) {
    use io::ErrorKind::{DirectoryNotEmpty, NotFound, ResourceBusy};
    if let Err(err) = std::fs::remove_dir(dir)
        && !matches!(err.kind(), NotFound | ResourceBusy | DirectoryNotEmpty)
    {
        tracing::warn!("cannot remove the cgroup {}: {err}", dir.display());
    }
}

/// `KEY N` from a flat-keyed cgroup file such as memory.events.
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The fields of a /proc/self/mountinfo line Berth needs.
struct MountinfoEntry<'a> {
    mount_point: PathBuf,
    read_only: bool,
    fstype: &'a str,
    super_options: &'a str,
}

impl<'a> MountinfoEntry<'a> {
    /// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`
    fn parse(line: &'a str) -> Option<MountinfoEntry<'a>> {
        let (mount, filesystem) = line.split_once(" - ")?;
        let mut mount = mount.split(' ');
        let mount_point = mount.nth(4)?;
        let options = mount.next()?;
        let mut filesystem = filesystem.split(' ');
        let fstype = filesystem.next()?;
        let super_options = filesystem.nth(1).unwrap_or("");
        let read_only = options.split(',').chain(super_options.split(',')).any(|o| o == "ro");
        Some(MountinfoEntry {
            mount_point: PathBuf::from(unescape(mount_point)),
            read_only,
            fstype,
            super_options,
        })
    }
}

/// Mountinfo writes space, tab, newline and backslash in paths as `\NNN` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    /// Ubuntu 18.04 under systemd: v1 controllers (cpu and cpuacct share a hierarchy) and a
    /// cgroup2 for systemd's own tracking.
    const HYBRID_SYSTEMD: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
27 25 0:25 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
28 27 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup rw
29 27 0:27 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
33 27 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
34 27 0:32 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpuset
35 27 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
36 27 0:34 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,pids
";

    /// Ubuntu 22.04, Debian 12, Fedora: only the unified hierarchy.
    const V2_ONLY: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// This machine: v1 controllers under a tmpfs, and a cgroup2 beside them.
    const V1_AND_UNIFIED: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A docker container without --privileged: the cgroup2 is mounted read-only.
    const DOCKER_READ_ONLY: &str = "\
612 611 0:61 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
613 612 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate
";

    /// An old layout with memory read-only and no pids hierarchy; a path with a space.
    const V1_PARTIAL: &str = "\
40 27 0:40 / /cg/memory ro,relatime - cgroup cgroup rw,memory
41 27 0:41 / /cg/my\\040cpu rw,relatime - cgroup cgroup rw,cpuacct,cpu
";

    const NONE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
";

    fn p(path: &str) -> Option<PathBuf> {
        Some(PathBuf::from(path))
    }

    #[test]
    fn support_by_mounts() {
        let v1 = |memory, cpu, pids| CgroupSupport::V1 { memory, cpu, pids };
        let cases = [
            (
                HYBRID_SYSTEMD,
                v1(
                    p("/sys/fs/cgroup/memory"),
                    p("/sys/fs/cgroup/cpu,cpuacct"),
                    p("/sys/fs/cgroup/pids"),
                ),
                p("/sys/fs/cgroup/unified"),
            ),
            (V2_ONLY, CgroupSupport::V2 { root: "/sys/fs/cgroup".into() }, p("/sys/fs/cgroup")),
            (
                V1_AND_UNIFIED,
                v1(p("/sys/fs/cgroup/memory"), p("/sys/fs/cgroup/cpu"), p("/sys/fs/cgroup/pids")),
                p("/sys/fs/cgroup/unified"),
            ),
            (DOCKER_READ_ONLY, CgroupSupport::Unsupported, None),
            (V1_PARTIAL, v1(None, p("/cg/my cpu"), None), None),
            (NONE, CgroupSupport::Unsupported, None),
        ];
        for (mountinfo, support, unified) in cases {
            let cgroups = Cgroups::from_mountinfo(mountinfo, "berth");
            assert_eq!(cgroups.support(), &support, "{mountinfo}");
            assert_eq!(cgroups.unified_root().map(Path::to_owned), unified, "{mountinfo}");
        }
    }

    #[test]
    fn v2_is_preferred_when_it_has_the_memory_controller() {
        let mut hybrid = Cgroups::from_mountinfo(V1_AND_UNIFIED, "berth");
        hybrid.choose(Some("hugetlb\n"));
        assert!(matches!(hybrid.support(), CgroupSupport::V1 { .. }));
        assert_eq!(hybrid.warning(Some("hugetlb\n")), None);
        hybrid.choose(Some("cpuset cpu io memory hugetlb pids rdma misc\n"));
        assert_eq!(hybrid.support(), &CgroupSupport::V2 { root: "/sys/fs/cgroup/unified".into() });
    }

    #[test]
    fn warnings() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            (V2_ONLY, Some("cpuset cpu io memory pids\n"), None),
            (HYBRID_SYSTEMD, Some(""), None),
            (
                V2_ONLY,
                Some("cpuset cpu io pids\n"),
                Some(
                    "BERTH_MEMORY_LIMIT cannot be applied: the cgroup2 hierarchy at \
                     /sys/fs/cgroup does not offer the memory controller (its cgroup.controllers \
                     lists: cpuset cpu io pids); the kernel was booted with cgroup_disable=memory",
                ),
            ),
            (
                DOCKER_READ_ONLY,
                None,
                Some(
                    "resource limits (BERTH_MEMORY_LIMIT, BERTH_CPU_LIMIT, BERTH_PIDS_LIMIT) \
                     cannot be applied: the cgroup filesystem (/sys/fs/cgroup) is mounted \
                     read-only, as in a container; run Berth on the host",
                ),
            ),
            (
                V1_PARTIAL,
                None,
                Some(
                    "BERTH_MEMORY_LIMIT, BERTH_PIDS_LIMIT cannot be applied: no writable cgroup \
                     v1 hierarchy has the memory, pids controller (memory at /cg/memory is \
                     read-only, pids is not mounted); mount it",
                ),
            ),
            (NONE, None, Some("cannot be applied: no cgroup filesystem is mounted")),
        ];
        for (mountinfo, controllers, expected) in cases {
            let mut cgroups = Cgroups::from_mountinfo(mountinfo, "berth");
            cgroups.choose(*controllers);
            let warning = cgroups.warning(*controllers);
            match (expected, &warning) {
                (None, None) => {}
                (Some(part), Some(warning)) if warning.contains(part) => {}
                _ => panic!("{mountinfo}: got {warning:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn names_must_stay_inside_the_base() {
        let cgroups = Cgroups::from_mountinfo(V2_ONLY, "berth");
        for (app, group) in [("..", "web.1"), ("app", "../../x"), ("a/b", "web.1"), ("", "web.1")] {
            let err = cgroups.prepare(app, group, &Limits::default()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{app} {group}");
        }
    }

    #[test]
    fn counters_and_escapes() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(counter(events, "oom_kill"), Some(1));
        assert_eq!(counter(events, "oom"), Some(1));
        assert_eq!(counter("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"), None);
        assert_eq!(unescape(r"/a\040b\011c\134d\\x\9"), "/a b\tc\\d\\\\x\\9");
        assert_eq!(cpu_quota_us(500), 50_000);
        assert_eq!(cpu_quota_us(2000), 200_000);
    }

    // The tests below make real cgroups, so they need root and a writable cgroup filesystem
    // with the memory, cpu and pids controllers, as Berth's test machines have.

    /// A base group of its own, removed with everything in it when dropped.
    struct TestGroups {
        cgroups: Cgroups,
    }

    impl TestGroups {
        fn new() -> TestGroups {
            static N: AtomicU32 = AtomicU32::new(0);
            let base =
                format!("berth-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
            let (cgroups, warning) = Cgroups::detect(&base);
            assert_eq!(warning, None, "these tests need cgroups with memory, cpu and pids");
            TestGroups { cgroups }
        }

        fn file(&self, controller: &str, group: &str, file: &str) -> String {
            let dir = self.cgroups.controller_dir(controller, "app", group).unwrap();
            std::fs::read_to_string(dir.join(file)).unwrap().trim().to_owned()
        }

        fn v2(&self) -> bool {
            matches!(self.cgroups.support(), CgroupSupport::V2 { .. })
        }
    }

    impl Drop for TestGroups {
        fn drop(&mut self) {
            for mount in self.cgroups.mount_points() {
                let base = mount.join(&self.cgroups.base);
                if let Ok(apps) = std::fs::read_dir(&base) {
                    for app in apps.flatten() {
                        for group in std::fs::read_dir(app.path()).into_iter().flatten().flatten() {
                            if group.path().is_dir() {
                                let _ = std::fs::remove_dir(group.path());
                            }
                        }
                        let _ = std::fs::remove_dir(app.path());
                    }
                }
                let _ = std::fs::remove_dir(&base);
            }
        }
    }

    fn command(script: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(script).stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    async fn finish(child: tokio::process::Child) -> std::process::Output {
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the process did not end within 60 s")
            .unwrap()
    }

    #[tokio::test]
    async fn memory_limit_kills_a_process_that_goes_over_it() {
        let t = TestGroups::new();
        let limits = Limits { memory_bytes: Some(64 << 20), ..Limits::default() };
        let placement = t.cgroups.prepare("app", "web.1", &limits).unwrap().unwrap();
        let mut cmd = tokio::process::Command::new("python3");
        cmd.args(["-c", "b = bytearray(200*1024*1024); import time; time.sleep(5)"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        placement.apply(&mut cmd);
        let output = finish(cmd.spawn().unwrap()).await;
        assert_eq!(output.status.signal(), Some(9), "{output:?}");
        assert!(t.cgroups.oom_killed("app", "web.1"));
        // Only memory was limited; the other controllers are reset to unlimited.
        if !t.v2() {
            assert_eq!(
                t.file("memory", "web.1", "memory.limit_in_bytes"),
                (64u64 << 20).to_string()
            );
            assert_eq!(t.file("cpu", "web.1", "cpu.cfs_quota_us"), "-1");
            assert_eq!(t.file("pids", "web.1", "pids.max"), "max");
        }

        // A new process in the group starts with fresh counters.
        t.cgroups.prepare("app", "web.1", &limits).unwrap().unwrap();
        assert!(!t.cgroups.oom_killed("app", "web.1"));
    }

    #[tokio::test]
    async fn pids_limit_stops_forks() {
        let t = TestGroups::new();
        let limits = Limits { pids: Some(5), ..Limits::default() };
        let placement = t.cgroups.prepare("app", "worker.1", &limits).unwrap().unwrap();
        let mut cmd = command("for i in $(seq 20); do sleep 2 & done; wait");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        placement.apply(&mut cmd);
        let output = finish(cmd.spawn().unwrap()).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.to_lowercase().contains("fork"), "stderr: {stderr}");
        assert_eq!(t.file("pids", "worker.1", "pids.max"), "5");
        let failures = counter(&t.file("pids", "worker.1", "pids.events"), "max").unwrap();
        assert!(failures > 0, "no fork failed");
        let peak = t.cgroups.controller_dir("pids", "app", "worker.1").unwrap().join("pids.peak");
        if let Ok(peak) = std::fs::read_to_string(peak) {
            assert!(peak.trim().parse::<u64>().unwrap() <= 5, "peak {peak}");
        }
    }

    #[tokio::test]
    async fn cpu_limit_is_written_and_reset() {
        let t = TestGroups::new();
        let limits =
            Limits { cpu_millicores: Some(500), memory_bytes: Some(256 << 20), pids: None };
        t.cgroups.prepare("app", "web.1", &limits).unwrap().unwrap();
        if t.v2() {
            assert_eq!(t.file("cpu", "web.1", "cpu.max"), "50000 100000");
        } else {
            assert_eq!(t.file("cpu", "web.1", "cpu.cfs_quota_us"), "50000");
            assert_eq!(t.file("cpu", "web.1", "cpu.cfs_period_us"), "100000");
            let memsw = t.file("memory", "web.1", "memory.memsw.limit_in_bytes");
            assert_eq!(memsw, (256u64 << 20).to_string());
        }

        t.cgroups.prepare("app", "web.1", &Limits::default()).unwrap().unwrap();
        if t.v2() {
            assert_eq!(t.file("cpu", "web.1", "cpu.max"), "max 100000");
            assert_eq!(t.file("memory", "web.1", "memory.max"), "max");
        } else {
            assert_eq!(t.file("cpu", "web.1", "cpu.cfs_quota_us"), "-1");
            let unlimited: u64 =
                t.file("memory", "web.1", "memory.limit_in_bytes").parse().unwrap();
            assert!(unlimited > 1 << 60, "{unlimited}");
        }
    }

    #[tokio::test]
    async fn a_process_that_dropped_root_joins_and_remove_cleans_up() {
        let t = TestGroups::new();
        let limits =
            Limits { memory_bytes: Some(128 << 20), cpu_millicores: Some(1000), pids: Some(50) };
        let placement = t.cgroups.prepare("app", "web.1", &limits).unwrap().unwrap();
        let mut cmd = command("exec sleep 30");
        cmd.uid(65534).gid(65534);
        placement.apply(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();

        let group = format!("/{}/app/web.1", t.cgroups.base);
        let mut in_group = String::new();
        for _ in 0..100 {
            // The hook ran before exec; wait for exec so /proc shows sleep's descriptors.
            in_group = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            if std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.ends_with("sleep"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let joined = in_group.lines().filter(|line| line.ends_with(&group)).count();
        assert_eq!(joined, t.cgroups.mount_points().len(), "{in_group}");
        assert!(t.cgroups.memory_usage("app", "web.1").is_some());
        assert!(!t.cgroups.oom_killed("app", "web.1"));
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            // sleep opens and closes its locale files as it starts: a descriptor listed a
            // moment ago may be gone. A leaked one would stay open.
            let target = match std::fs::read_link(fd.unwrap().path()) {
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                target => target.unwrap(),
            };
            assert!(!target.ends_with("cgroup.procs"), "leaked into the app: {target:?}");
        }

        // A group with a process stays.
        t.cgroups.remove("app", "web.1");
        let dirs = t.cgroups.group_dirs("app", "web.1").unwrap();
        assert!(dirs.iter().all(|dir| dir.is_dir()));

        child.kill().await.unwrap();
        t.cgroups.remove("app", "web.1");
        for dir in dirs {
            assert!(!dir.exists(), "{dir:?} is left");
            assert!(!dir.parent().unwrap().exists(), "the app's group is left");
        }
        assert_eq!(t.cgroups.memory_usage("app", "web.1"), None);
    }

    #[tokio::test]
    async fn a_process_joins_a_cgroup2_group() {
        // On a v2 host this is the chosen hierarchy; on a hybrid one (like Berth's test
        // machines) the cgroup2 beside the v1 hierarchies, whose controllers may be elsewhere.
        let mut t = TestGroups::new();
        let root = t.cgroups.unified_root().expect("a writable cgroup2 is mounted").to_owned();
        t.cgroups.support = CgroupSupport::V2 { root: root.clone() };
        let limits = Limits { pids: Some(5), ..Limits::default() };
        let placement = t.cgroups.prepare("app", "web.1", &limits).unwrap().unwrap();
        let mut cmd = command("cat /proc/self/cgroup");
        cmd.uid(65534).gid(65534).stdout(Stdio::piped());
        placement.apply(&mut cmd);
        let output = finish(cmd.spawn().unwrap()).await;
        assert!(output.status.success(), "{output:?}");
        let cgroups = String::from_utf8(output.stdout).unwrap();
        let expected = format!("0::/{}/app/web.1", t.cgroups.base);
        assert!(cgroups.lines().any(|line| line == expected), "{cgroups}");
        let offered = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap();
        if offered.split_whitespace().any(|c| c == "pids") {
            assert_eq!(t.file("pids", "web.1", "pids.max"), "5");
        }
        t.cgroups.remove("app", "web.1");
        assert!(!root.join(&t.cgroups.base).join("app").exists());
    }
}
