//! The ssh entry: what an authorised key may and may not do, and `setup:ssh`.

use std::path::Path;
use std::process::Command;

use berth_testkit::{TempDir, output_text};

use crate::World;

#[test]
fn refuses_shells_other_commands_and_bad_app_names() {
    let world = World::start("refuse");

    // No command: an interactive login attempt gets a message, not a shell.
    let output = world.ssh(&[]);
    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    assert!(
        output_text(&output).contains("this account gives no shell"),
        "{}",
        output_text(&output)
    );

    for command in [&["bash", "-c", "id"][..], &["id"], &["apps;", "id"], &["scp", "-t", "/tmp"]] {
        let output = world.ssh(command);
        let text = output_text(&output);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {text}");
        assert!(text.contains("is not a Berth command"), "{command:?}: {text}");
        assert!(!text.contains("uid="), "a command ran: {text}");
    }
    let output = world.ssh(&["git-upload-archive", "'app'"]);
    assert_eq!(output.status.code(), Some(2));

    // Bad app names are refused before anything is created.
    let repo = world.app_repo("bad", "v1", "web: python3 app.py\n", "");
    for name in ["../x", "MyApp", "a'b", "my_app"] {
        let output = repo.push(&format!("{}@127.0.0.1:{name}", world.sshd.user));
        let text = output_text(&output);
        assert!(!output.status.success(), "{name}: push accepted:\n{text}");
        assert!(text.contains("app name"), "{name}: {text}");
    }
    // git itself blocks some names before sending them; the entry refuses them all the same.
    for path in ["'-x'", "'../../etc'", "'/root/.ssh'"] {
        let output = world.ssh(&["git-receive-pack", path]);
        assert_eq!(output.status.code(), Some(2), "{path}: {}", output_text(&output));
        assert!(
            output_text(&output).contains("invalid app name"),
            "{path}: {}",
            output_text(&output)
        );
    }
    let repos: Vec<_> = std::fs::read_dir(world.root().join("repos")).unwrap().collect();
    assert!(repos.is_empty(), "a repo was created for a bad name: {repos:?}");
    assert!(!world.root().join("x.git").exists());

    // Fetching an app that does not exist does not create it.
    let output = Command::new("git")
        .args(["ls-remote", &world.sshd.remote("ghost")])
        .env("GIT_SSH_COMMAND", world.sshd.git_ssh_command())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains("there is no app named ghost"),
        "{}",
        output_text(&output)
    );
    assert!(!world.root().join("repos/ghost.git").exists());
}

#[test]
fn setup_ssh_writes_a_restricted_line_once() {
    let bin = Path::new(env!("CARGO_BIN_EXE_berth"));
    let tmp = TempDir::new("keys");
    let key = tmp.path().join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dev@laptop", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let authorized = tmp.path().join("ssh/authorized_keys");
    let setup = || {
        Command::new(bin)
            .arg("setup:ssh")
            .arg(key.with_extension("pub"))
            .arg("--authorized-keys")
            .arg(&authorized)
            .env_remove("BERTH_ROOT")
            .output()
            .unwrap()
    };
    let first = setup();
    assert!(first.status.success(), "{}", output_text(&first));
    let second = setup();
    assert!(second.status.success());
    assert!(output_text(&second).contains("already authorised"), "{}", output_text(&second));

    let text = std::fs::read_to_string(&authorized).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let fingerprint =
        Command::new("ssh-keygen").arg("-lf").arg(key.with_extension("pub")).output().unwrap();
    let fingerprint =
        String::from_utf8_lossy(&fingerprint.stdout).split_whitespace().nth(1).unwrap().to_owned();
    let expected = format!(
        "command=\"{} ssh --key {fingerprint}\",no-agent-forwarding,no-port-forwarding,\
         no-X11-forwarding,no-user-rc ssh-ed25519 ",
        bin.display()
    );
    assert!(text.starts_with(&expected), "{text}\nexpected to start with\n{expected}");
    assert!(text.trim_end().ends_with("dev@laptop"), "{text}");

    // A private key is refused with a hint.
    let output = Command::new(bin)
        .arg("setup:ssh")
        .arg(&key)
        .arg("--authorized-keys")
        .arg(&authorized)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output_text(&output).contains("never the private key"), "{}", output_text(&output));
}
