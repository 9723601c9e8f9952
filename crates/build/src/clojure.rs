//! Clojure: the CLI (`deps.edn`) fetches dependencies, Leiningen (`project.clj`) builds an
//! uberjar.

use crate::detect::Runtime;
use crate::plan::{BuildPlan, PlanContext, Tool};

pub fn plan(_ctx: &PlanContext<'_>, runtime: Runtime) -> BuildPlan {
    let mut plan;
    if runtime == Runtime::ClojureCli {
        plan = BuildPlan::new(runtime, "Clojure app (deps.edn, clojure -P)");
        plan.tools.push(Tool::new("java", "default-jdk"));
        plan.tools.push(Tool::new("clojure", "clojure"));
        plan.command_env.push(("GITLIBS".to_owned(), "{cache}/gitlibs".to_owned()));
        plan.steps
            .push("clojure -Sdeps '{:mvn/local-repo \"'\"$BERTH_CACHE\"'/m2\"}' -P".to_owned());
    } else {
        plan = BuildPlan::new(runtime, "Clojure app (project.clj, lein uberjar)");
        plan.tools.push(Tool::new("java", "default-jdk"));
        plan.tools.push(Tool::new("lein", "leiningen"));
        plan.command_env.push(("LEIN_HOME".to_owned(), "{cache}/lein".to_owned()));
        plan.steps.push("lein uberjar".to_owned());
    }
    plan
}

#[cfg(test)]
mod tests {
    use crate::plan::tests::plan_with;

    #[test]
    fn clojure_cli_and_leiningen_commands() {
        let plan = plan_with(&["deps.edn"], &[], &["java", "clojure"], "web: clojure -M -m app\n")
            .unwrap();
        assert!(plan.steps[0].starts_with("clojure -Sdeps") && plan.steps[0].ends_with(" -P"));
        let plan = plan_with(&["project.clj"], &[], &["java", "lein"], "web: java -jar app.jar\n")
            .unwrap();
        assert_eq!(plan.steps, ["lein uberjar"]);
        let err = plan_with(&["project.clj"], &[], &["java"], "web: x\n").unwrap_err();
        assert!(err.contains("leiningen"), "{err}");
    }
}
