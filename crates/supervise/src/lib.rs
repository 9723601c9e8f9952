//! Starting and watching app processes: one supervised instance per process, one-off tasks
//! with streamed output, and the readiness check of a web instance's port.
//!
//! Every instance runs `/bin/sh -c COMMAND` in a process group of its own, so that stopping it
//! reaches the whole tree the command started (a shell, its children, a server's workers).

pub mod adopt;
mod cgroup;
pub mod cron;
mod instance;
mod limits;
pub mod logs;
mod task;

pub use cgroup::{CgroupPlacement, CgroupSupport, Cgroups};
pub use instance::{
    CgroupRequest, Instance, InstanceState, InstanceStatus, ProcessSpec, wait_for_port,
};
pub use limits::{Limits, limits_for};
pub use task::{TaskSpec, run_command, run_task};

/// The uid and gid a process runs as, when the daemon runs as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}
