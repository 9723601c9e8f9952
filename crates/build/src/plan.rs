//! A build plan: the commands a runtime's build runs, what keys its dependency cache, and
//! what the app's processes need in their environment. Planning is pure.

use std::collections::BTreeMap;

use berth_procfile::Procfile;

use crate::detect::{Runtime, detect};

/// What planning needs to know, handed in so that it does no I/O.
pub struct PlanContext<'a> {
    /// Names of the files at the top of the release tree.
    pub files: &'a [String],
    /// The app's variables (ENV, then config vars): the knobs such as `PYTHON_VERSION`.
    pub env: &'a BTreeMap<String, String>,
    pub procfile: &'a Procfile,
    /// Whether a command is on the PATH.
    pub has_tool: &'a dyn Fn(&str) -> bool,
    /// Python versions installed (`3.11`, `3.12`), from the `python3.N` on the PATH.
    pub pythons: &'a [String],
    /// The contents of `.python-version`, when the app has one.
    pub python_version_file: Option<&'a str>,
}

impl PlanContext<'_> {
    pub fn has_file(&self, name: &str) -> bool {
        self.files.iter().any(|f| f == name)
    }

    pub fn knob(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
    }
}

impl std::fmt::Debug for PlanContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanContext").field("files", &self.files).finish_non_exhaustive()
    }
}

/// A command a build needs, and the Debian package that provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub name: String,
    pub package: String,
}

impl Tool {
    pub fn new(name: &str, package: &str) -> Tool {
        Tool { name: name.to_owned(), package: package.to_owned() }
    }
}

/// A toolchain version the app asked for (`NODE_VERSION=20`), checked before building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCheck {
    /// Prints the installed version, e.g. `node --version` → `v20.11.1`.
    pub command: String,
    pub wanted: String,
    /// The knob that asked for it, for the message.
    pub knob: String,
}

/// Where a dependency step's result lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In the cache entry itself (`$BERTH_DEPS`), which processes use through their
    /// environment (a virtualenv, a bundle path).
    InCache,
    /// The commands write this directory of the release tree (`node_modules`); it is then
    /// kept as the cache entry, and copied (hard links) into the next release whose inputs
    /// are the same.
    Snapshot(String),
}

/// The cacheable part of a build: installing dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyStep {
    /// The cache directory's name under `cache/APP/`.
    pub cache_name: String,
    /// Files of the release whose contents key the cache (those that exist).
    pub inputs: Vec<String>,
    /// Commands whose output keys the cache too (toolchain versions).
    pub key_commands: Vec<String>,
    /// Anything else the result depends on (the package manager, an extra package).
    pub key_extra: String,
    /// Run in the release directory with `$BERTH_DEPS` set to the cache entry.
    pub commands: Vec<String>,
    pub placement: Placement,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    pub runtime: Runtime,
    /// One line for the deploy output.
    pub summary: String,
    pub tools: Vec<Tool>,
    pub version_checks: Vec<VersionCheck>,
    /// Extra environment of the build commands; `{cache}`, `{release}` and `{deps}` are
    /// replaced by the paths.
    pub command_env: Vec<(String, String)>,
    pub dependencies: Option<DependencyStep>,
    /// Run after the dependencies, every time (compiling the app).
    pub steps: Vec<String>,
    /// Extra environment of the app's processes (placeholders as in `command_env`).
    pub process_env: Vec<(String, String)>,
    /// Directories put in front of the processes' PATH (placeholders as in `command_env`).
    pub path_prefix: Vec<String>,
    pub warnings: Vec<String>,
}

impl BuildPlan {
    pub fn new(runtime: Runtime, summary: impl Into<String>) -> BuildPlan {
        BuildPlan {
            runtime,
            summary: summary.into(),
            tools: Vec::new(),
            version_checks: Vec::new(),
            command_env: Vec::new(),
            dependencies: None,
            steps: Vec::new(),
            process_env: Vec::new(),
            path_prefix: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Plans the build of the app described by `ctx`. Fails at once, naming the tool and its
/// package, when the server lacks a tool the build needs.
pub fn plan(ctx: &PlanContext<'_>) -> Result<BuildPlan, String> {
    let runtime = detect(ctx.files);
    let mut plan = match runtime {
        Runtime::PythonRequirements | Runtime::PythonProject => crate::python::plan(ctx, runtime)?,
        Runtime::Node => crate::node::plan(ctx)?,
        Runtime::Ruby => crate::ruby::plan(ctx),
        Runtime::Go => crate::go::plan(ctx),
        Runtime::Rust => crate::rust::plan(ctx),
        Runtime::Maven | Runtime::Gradle => crate::java::plan(ctx, runtime),
        Runtime::ClojureCli | Runtime::Leiningen => crate::clojure::plan(ctx, runtime),
        Runtime::Generic => {
            BuildPlan::new(Runtime::Generic, "Generic app: the Procfile runs as it is")
        }
    };
    if runtime != Runtime::PythonRequirements
        && runtime != Runtime::PythonProject
        && let Some(wsgi) = ctx.procfile.get("wsgi")
    {
        return Err(format!(
            "Procfile line {}: `wsgi:` runs a Python app, but this app has no requirements.txt or \
             pyproject.toml; add one (it may be empty) or use `web:`",
            wsgi.line
        ));
    }
    if let Some(missing) = plan.tools.iter().find(|tool| !(ctx.has_tool)(&tool.name)) {
        return Err(format!(
            "this {} app needs `{}`, which this server does not have; install it with \
             `apt-get install {}`",
            runtime.label(),
            missing.name,
            missing.package
        ));
    }
    plan.tools.dedup();
    Ok(plan)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_procfile::parse_procfile;

    /// Plans with the given files, knobs and tools; `procfile` defaults to a web line.
    pub fn plan_with(
        files: &[&str],
        env: &[(&str, &str)],
        tools: &[&str],
        procfile: &str,
    ) -> Result<BuildPlan, String> {
        let files: Vec<String> = files.iter().map(|s| s.to_string()).collect();
        let env: BTreeMap<String, String> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let procfile = parse_procfile(procfile).value;
        let tools: Vec<String> = tools.iter().map(|s| s.to_string()).collect();
        let has_tool = move |name: &str| tools.iter().any(|t| t == name);
        let pythons = vec!["3.11".to_owned()];
        let ctx = PlanContext {
            files: &files,
            env: &env,
            procfile: &procfile,
            has_tool: &has_tool,
            pythons: &pythons,
            python_version_file: None,
        };
        plan(&ctx)
    }

    #[test]
    fn a_missing_tool_names_the_tool_and_its_package() {
        let err = plan_with(&["go.mod", "main.go"], &[], &[], "web: ./bin/app\n").unwrap_err();
        assert_eq!(
            err,
            "this Go app needs `go`, which this server does not have; install it with \
             `apt-get install golang-go`"
        );
        let err = plan_with(&["Gemfile"], &[], &["ruby"], "web: ruby app.rb\n").unwrap_err();
        assert!(err.contains("`bundle`") && err.contains("ruby-bundler"), "{err}");
    }

    #[test]
    fn generic_apps_have_nothing_to_build() {
        let plan = plan_with(&["Procfile", "index.html"], &[], &[], "static: .\n").unwrap();
        assert_eq!(plan.runtime, Runtime::Generic);
        assert!(plan.dependencies.is_none() && plan.steps.is_empty());
    }

    #[test]
    fn wsgi_without_python_is_refused_with_the_fix() {
        let err =
            plan_with(&["package.json"], &[], &["node", "npm"], "wsgi: app:app\n").unwrap_err();
        assert!(err.starts_with("Procfile line 1: `wsgi:` runs a Python app"), "{err}");
    }
}
