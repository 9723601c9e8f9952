//! Rust: `cargo build --release` with the target directory in the cache; the built
//! executables are copied into the release, so the running release keeps its own.

use crate::detect::Runtime;
use crate::plan::{BuildPlan, PlanContext, Tool};

pub fn plan(_ctx: &PlanContext<'_>) -> BuildPlan {
    let mut plan = BuildPlan::new(Runtime::Rust, "Rust app (Cargo.toml, cargo build --release)");
    plan.tools.push(Tool::new("cargo", "cargo (or rustup)"));
    plan.command_env.push(("CARGO_TARGET_DIR".to_owned(), "{cache}/cargo-target".to_owned()));
    plan.steps.push("cargo build --release".to_owned());
    plan.steps.push(
        "mkdir -p target/release && find \"$CARGO_TARGET_DIR/release\" -maxdepth 1 -type f \
         -perm -u+x -exec cp {} target/release/ \\;"
            .to_owned(),
    );
    plan.path_prefix.push("{release}/target/release".to_owned());
    plan
}

#[cfg(test)]
mod tests {
    use crate::plan::tests::plan_with;

    #[test]
    fn cargo_builds_in_the_cache_and_copies_executables() {
        let plan =
            plan_with(&["Cargo.toml"], &[], &["cargo"], "web: ./target/release/app\n").unwrap();
        assert_eq!(plan.steps[0], "cargo build --release");
        assert!(plan.steps[1].contains("cp {} target/release/"));
        assert!(
            plan.command_env.contains(&("CARGO_TARGET_DIR".into(), "{cache}/cargo-target".into()))
        );
    }
}
