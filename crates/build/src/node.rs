//! Node.js: `npm ci` with a lock file, `npm install` without; yarn or pnpm on request;
//! `node_modules` kept in the cache and reused while the lock file does not change.

use crate::detect::Runtime;
use crate::plan::{BuildPlan, DependencyStep, Placement, PlanContext, Tool, VersionCheck};

pub fn plan(ctx: &PlanContext<'_>) -> Result<BuildPlan, String> {
    let manager = ctx.knob("NODE_PACKAGE_MANAGER").unwrap_or("npm").to_ascii_lowercase();
    let (command, tool) = match manager.as_str() {
        "npm" if ctx.has_file("package-lock.json") || ctx.has_file("npm-shrinkwrap.json") => {
            ("npm ci", Tool::new("npm", "npm"))
        }
        "npm" => ("npm install", Tool::new("npm", "npm")),
        "yarn" if ctx.has_file("yarn.lock") => (
            "yarn install --frozen-lockfile",
            Tool::new("yarn", "yarnpkg (or npm install -g yarn)"),
        ),
        "yarn" => ("yarn install", Tool::new("yarn", "yarnpkg (or npm install -g yarn)")),
        "pnpm" if ctx.has_file("pnpm-lock.yaml") => {
            ("pnpm install --frozen-lockfile", Tool::new("pnpm", "pnpm (or npm install -g pnpm)"))
        }
        "pnpm" => ("pnpm install", Tool::new("pnpm", "pnpm (or npm install -g pnpm)")),
        other => {
            return Err(format!(
                "NODE_PACKAGE_MANAGER={other} is not one Berth knows; use npm, yarn or pnpm"
            ));
        }
    };
    let mut plan = BuildPlan::new(Runtime::Node, format!("Node.js app (package.json, {command})"));
    plan.tools.push(Tool::new("node", "nodejs"));
    plan.tools.push(tool);
    if let Some(wanted) = ctx.knob("NODE_VERSION") {
        plan.version_checks.push(VersionCheck {
            command: "node --version".to_owned(),
            wanted: wanted.to_owned(),
            knob: "NODE_VERSION".to_owned(),
        });
    }
    plan.dependencies = Some(DependencyStep {
        cache_name: "node_modules".to_owned(),
        inputs: [
            "package.json",
            "package-lock.json",
            "npm-shrinkwrap.json",
            "yarn.lock",
            "pnpm-lock.yaml",
        ]
        .map(String::from)
        .to_vec(),
        key_commands: vec!["node --version".to_owned()],
        key_extra: manager.clone(),
        commands: vec![command.to_owned()],
        placement: Placement::Snapshot("node_modules".to_owned()),
    });
    plan.path_prefix.push("{release}/node_modules/.bin".to_owned());
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use crate::plan::Placement;
    use crate::plan::tests::plan_with;

    fn command(files: &[&str], env: &[(&str, &str)]) -> String {
        let plan =
            plan_with(files, env, &["node", "npm", "yarn", "pnpm"], "web: node app.js\n").unwrap();
        plan.dependencies.unwrap().commands.join("; ")
    }

    #[test]
    fn the_command_follows_the_lock_file_and_the_manager() {
        assert_eq!(command(&["package.json", "package-lock.json"], &[]), "npm ci");
        assert_eq!(command(&["package.json"], &[]), "npm install");
        assert_eq!(
            command(&["package.json", "yarn.lock"], &[("NODE_PACKAGE_MANAGER", "yarn")]),
            "yarn install --frozen-lockfile"
        );
        assert_eq!(command(&["package.json"], &[("NODE_PACKAGE_MANAGER", "pnpm")]), "pnpm install");
        assert_eq!(
            command(&["package.json", "pnpm-lock.yaml"], &[("NODE_PACKAGE_MANAGER", "PNPM")]),
            "pnpm install --frozen-lockfile"
        );
    }

    #[test]
    fn node_modules_are_snapshotted_and_node_version_checked() {
        let plan =
            plan_with(&["package.json"], &[("NODE_VERSION", "18")], &["node", "npm"], "web: x\n")
                .unwrap();
        let deps = plan.dependencies.as_ref().unwrap();
        assert_eq!(deps.placement, Placement::Snapshot("node_modules".into()));
        assert_eq!(plan.version_checks[0].wanted, "18");
        let err =
            plan_with(&["package.json"], &[("NODE_PACKAGE_MANAGER", "bun")], &["node"], "web: x\n")
                .unwrap_err();
        assert!(err.contains("use npm, yarn or pnpm"), "{err}");
        let err = plan_with(
            &["package.json"],
            &[("NODE_PACKAGE_MANAGER", "yarn")],
            &["node", "npm"],
            "web: x\n",
        )
        .unwrap_err();
        assert!(err.contains("`yarn`"), "{err}");
    }
}
