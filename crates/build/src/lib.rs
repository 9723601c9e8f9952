//! Turning a pushed commit into a release tree: check the commit out, read its Procfile and
//! ENV, detect the runtime, and build it (dependencies cached by the hash of their inputs).
//!
//! Nothing here touches the running release: everything happens in the new release's own
//! directory and in new cache entries, which the daemon only switches to once they are ready.
//! `detect` and `plan` are pure (they get file names, the environment and a tool lookup
//! handed in); `run` executes a plan, starting every command through `berth-supervise`.

mod clojure;
mod detect;
mod go;
mod java;
mod node;
mod plan;
mod python;
mod ruby;
mod run;
mod rust;
mod source;
mod wsgi;

pub use detect::{Runtime, detect};
pub use plan::{BuildPlan, DependencyStep, Placement, PlanContext, Tool, VersionCheck, plan};
pub use run::{BuildDirs, BuildOutcome, installed_pythons, run_plan, version_matches, which};
pub use source::{AppFiles, Source, checkout, read_app_files};
pub use wsgi::wsgi_command;
