//! Go: `go build` of every main package into `bin/`, with the build and module caches kept.

use crate::detect::Runtime;
use crate::plan::{BuildPlan, PlanContext, Tool};

pub fn plan(ctx: &PlanContext<'_>) -> BuildPlan {
    let module = ctx.has_file("go.mod");
    let mut plan = BuildPlan::new(
        Runtime::Go,
        if module { "Go app (go.mod, go build)" } else { "Go app (*.go, go build)" },
    );
    plan.tools.push(Tool::new("go", "golang-go"));
    plan.command_env.push(("GOCACHE".to_owned(), "{cache}/go-build".to_owned()));
    plan.command_env.push(("GOMODCACHE".to_owned(), "{cache}/go-mod".to_owned()));
    plan.command_env.push(("GOPATH".to_owned(), "{cache}/go".to_owned()));
    if module {
        plan.steps.push("go build -o bin/ ./...".to_owned());
    } else {
        // Without go.mod, the files are built as one package the old (GOPATH) way.
        plan.command_env.push(("GO111MODULE".to_owned(), "off".to_owned()));
        plan.steps.push("mkdir -p bin && go build -o bin/ .".to_owned());
    }
    plan.path_prefix.push("{release}/bin".to_owned());
    plan
}

#[cfg(test)]
mod tests {
    use crate::plan::tests::plan_with;

    #[test]
    fn go_builds_into_bin() {
        let plan = plan_with(&["go.mod", "main.go"], &[], &["go"], "web: ./bin/app\n").unwrap();
        assert_eq!(plan.steps, ["go build -o bin/ ./..."]);
        assert!(plan.dependencies.is_none());
        assert!(plan.command_env.iter().any(|(k, v)| k == "GOCACHE" && v == "{cache}/go-build"));
        let plan = plan_with(&["main.go"], &[], &["go"], "web: ./bin/app\n").unwrap();
        assert!(plan.command_env.contains(&("GO111MODULE".into(), "off".into())));
    }
}
