//! The `pre-receive` hook of every app repository: deploys the pushed commit through the
//! daemon and rejects the push when the deploy fails, so the branch only moves to code that
//! runs.

use std::io::{BufRead, Write};
use std::path::Path;

use berth_api::{Client, DeployRequest};
use http::Method;

use crate::EXIT_FAILURE;

/// Git's quarantine variables: the pushed objects are only visible through them until the
/// hook accepts the push.
const GIT_VARIABLES: [&str; 3] =
    ["GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_QUARANTINE_PATH"];

pub fn run(root: &Path, app: &str) -> anyhow::Result<u8> {
    let app = berth_procfile::validate_app_name(app)?;
    let client = Client::new(root.join("run").join("berth.sock"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let git_env: Vec<(String, String)> = GIT_VARIABLES
        .iter()
        .filter_map(|&name| Some((name.to_owned(), std::env::var(name).ok()?)))
        .collect();
    let pushed_by = std::env::var("BERTH_KEY").unwrap_or_else(|_| "local".to_owned());

    let mut failed = false;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut fields = line.split_whitespace();
        let (Some(old), Some(new), Some(git_ref)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // A deleted branch has nothing to deploy.
        if new.bytes().all(|b| b == b'0') {
            continue;
        }
        let request = DeployRequest {
            commit: new.to_owned(),
            git_ref: git_ref.to_owned(),
            git_env: git_env.clone(),
            pushed_by: pushed_by.clone(),
            old_commit: Some(old.to_owned()),
        };
        let mut stdout = std::io::stdout();
        let path = format!("/apps/{app}/deploys");
        let outcome = runtime.block_on(client.stream(Method::POST, &path, &request, |line| {
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                for line in error.lines() {
                    println!(" !     {line}");
                }
                println!(" !     Push rejected: fix the problem above and push again.");
                failed = true;
            }
            Err(err) => {
                println!(" !     {err}");
                failed = true;
            }
        }
    }
    Ok(if failed { EXIT_FAILURE } else { 0 })
}
