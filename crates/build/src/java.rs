//! Java: `mvn package` for a pom.xml, gradle (the project's wrapper when it has one) for a
//! build.gradle, with the dependency repositories kept in the cache.

use crate::detect::Runtime;
use crate::plan::{BuildPlan, PlanContext, Tool};

pub fn plan(ctx: &PlanContext<'_>, runtime: Runtime) -> BuildPlan {
    let mut plan;
    if runtime == Runtime::Maven {
        plan = BuildPlan::new(runtime, "Java app (pom.xml, mvn package)");
        plan.tools.push(Tool::new("java", "default-jdk"));
        plan.tools.push(Tool::new("mvn", "maven"));
        plan.steps
            .push("mvn -B -DskipTests -Dmaven.repo.local=\"$BERTH_CACHE/m2\" package".to_owned());
    } else {
        plan = BuildPlan::new(runtime, "Java app (build.gradle, gradle build)");
        plan.tools.push(Tool::new("java", "default-jdk"));
        plan.command_env.push(("GRADLE_USER_HOME".to_owned(), "{cache}/gradle".to_owned()));
        if ctx.has_file("gradlew") {
            plan.steps.push("sh ./gradlew build -x test --no-daemon".to_owned());
        } else {
            plan.tools.push(Tool::new("gradle", "gradle"));
            plan.steps.push("gradle build -x test --no-daemon".to_owned());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use crate::plan::tests::plan_with;

    #[test]
    fn maven_and_gradle_commands() {
        let plan =
            plan_with(&["pom.xml"], &[], &["java", "mvn"], "web: java -jar target/app.jar\n")
                .unwrap();
        assert_eq!(
            plan.steps,
            ["mvn -B -DskipTests -Dmaven.repo.local=\"$BERTH_CACHE/m2\" package"]
        );
        let plan = plan_with(&["build.gradle", "gradlew"], &[], &["java"], "web: x\n").unwrap();
        assert_eq!(plan.steps, ["sh ./gradlew build -x test --no-daemon"]);
        let err = plan_with(&["build.gradle"], &[], &["java"], "web: x\n").unwrap_err();
        assert!(err.contains("`gradle`") && err.contains("apt-get install gradle"), "{err}");
        let err = plan_with(&["pom.xml"], &[], &[], "web: x\n").unwrap_err();
        assert!(err.contains("`java`") && err.contains("default-jdk"), "{err}");
    }
}
