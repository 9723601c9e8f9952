//! Ruby: `bundle install` into a cache entry keyed by the Gemfile and its lock.

use crate::detect::Runtime;
use crate::plan::{BuildPlan, DependencyStep, Placement, PlanContext, Tool};

pub fn plan(_ctx: &PlanContext<'_>) -> BuildPlan {
    let mut plan = BuildPlan::new(Runtime::Ruby, "Ruby app (Gemfile, bundle install)");
    plan.tools.push(Tool::new("ruby", "ruby"));
    plan.tools.push(Tool::new("bundle", "ruby-bundler"));
    plan.command_env.push(("BUNDLE_PATH".to_owned(), "{deps}".to_owned()));
    plan.command_env.push(("BUNDLE_WITHOUT".to_owned(), "development:test".to_owned()));
    plan.dependencies = Some(DependencyStep {
        cache_name: "bundle".to_owned(),
        inputs: vec!["Gemfile".to_owned(), "Gemfile.lock".to_owned()],
        key_commands: vec!["ruby --version".to_owned()],
        key_extra: String::new(),
        commands: vec!["bundle install".to_owned()],
        placement: Placement::InCache,
    });
    plan.process_env.push(("BUNDLE_PATH".to_owned(), "{deps}".to_owned()));
    plan.process_env.push(("BUNDLE_WITHOUT".to_owned(), "development:test".to_owned()));
    plan
}

#[cfg(test)]
mod tests {
    use crate::plan::tests::plan_with;

    #[test]
    fn bundle_installs_into_the_cache() {
        let plan = plan_with(&["Gemfile"], &[], &["ruby", "bundle"], "web: ruby app.rb\n").unwrap();
        let deps = plan.dependencies.unwrap();
        assert_eq!(deps.commands, ["bundle install"]);
        assert_eq!(deps.inputs, ["Gemfile", "Gemfile.lock"]);
        assert!(plan.process_env.contains(&("BUNDLE_PATH".into(), "{deps}".into())));
    }
}
