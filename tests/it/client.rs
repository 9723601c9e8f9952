//! The local client: `berth COMMAND` inside an app's repository runs on the server of its
//! `berth` remote over ssh.

use std::path::Path;
use std::process::{Command, Output};

use berth_testkit::output_text;

use crate::World;

fn berth_in(dir: &Path, world: &World, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .current_dir(dir)
        .env_remove("BERTH_ROOT")
        .env("HOME", world.tmp.path())
        .env("GIT_SSH_COMMAND", world.sshd.git_ssh_command())
        .output()
        .unwrap()
}

#[test]
fn the_local_client_runs_commands_on_the_server_of_the_remote() {
    let world = World::start("client");
    let repo = world.app_repo("localapp", "v1", "web: python3 app.py\n", "");
    world.push_ok(&repo, "localapp");
    let url = format!("ssh://{}@127.0.0.1:{}/localapp", world.sshd.user, world.sshd.port);
    repo.git(&["remote", "add", "berth", &url]).unwrap();

    let ps = berth_in(&repo.dir, &world, &["ps"]);
    assert!(ps.status.success(), "{}", output_text(&ps));
    assert!(
        String::from_utf8_lossy(&ps.stdout).starts_with("localapp: running"),
        "{}",
        output_text(&ps)
    );

    let set = berth_in(&repo.dir, &world, &["config:set", "GREETING=Yo there"]);
    assert!(
        String::from_utf8_lossy(&set.stdout).contains("set GREETING on localapp; restarted"),
        "{}",
        output_text(&set)
    );
    assert_eq!(world.get("localapp", "/").body, "Yo there v1");

    let run = berth_in(&repo.dir, &world, &["run", "--", "echo $GREETING; exit 3"]);
    assert_eq!(run.status.code(), Some(3), "{}", output_text(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "Yo there\n");

    let apps = berth_in(&repo.dir, &world, &["apps"]);
    assert!(String::from_utf8_lossy(&apps.stdout).contains("localapp"), "{}", output_text(&apps));

    let other = berth_in(&repo.dir, &world, &["-a", "otherapp", "ps"]);
    assert_eq!(other.status.code(), Some(1));
    assert!(
        output_text(&other).contains("there is no app named otherapp"),
        "{}",
        output_text(&other)
    );

    let missing = berth_in(&repo.dir, &world, &["-r", "nosuch", "ps"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        output_text(&missing).contains("no git remote named nosuch"),
        "{}",
        output_text(&missing)
    );
}

#[test]
fn init_remote_add_completions_and_man() {
    let world = World::start("init");
    let dir = world.tmp.path().join("newapp");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(Command::new("git").args(["init", "-q"]).current_dir(&dir).status().unwrap().success());

    let out = berth_in(&dir, &world, &["init"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(std::fs::read_to_string(dir.join("Procfile")).unwrap().contains("web: "));
    let again = berth_in(&dir, &world, &["init"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("Procfile exists; left as it is"));

    let out = berth_in(&dir, &world, &["remote", "add", "example.com"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let url = Command::new("git")
        .args(["remote", "get-url", "berth"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&url.stdout).trim(), "berth@example.com:newapp");

    let completions = berth_in(&dir, &world, &["completions", "bash"]);
    assert!(String::from_utf8_lossy(&completions.stdout).contains("config:set"));
    let man = berth_in(&dir, &world, &["man"]);
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH berth"));
}
