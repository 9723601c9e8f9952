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
        "command=\"{} ssh --key {fingerprint} --name dev-laptop --admin --keys-file {}\",\
         no-agent-forwarding,no-port-forwarding,no-X11-forwarding,no-user-rc ssh-ed25519 ",
        bin.display(),
        authorized.display()
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

#[test]
fn admin_keys_add_and_remove_keys_and_names_reach_release_history() {
    let world = World::start("keys");
    let bob = world.tmp.path().join("bob_key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bob@box", "-f"])
        .arg(&bob)
        .status()
        .unwrap();
    assert!(status.success());
    let bob_pub = std::fs::read_to_string(bob.with_extension("pub")).unwrap();

    let out = world.sshd.run_with_input(&["keys:add", "bob"], &bob_pub);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("added key bob (SHA256:"));
    let keys = world.ssh_ok(&["keys"]);
    assert!(keys.lines().any(|l| l.starts_with("bob ") && l.ends_with(" no")), "{keys}");
    let again = world.sshd.run_with_input(&["keys:add", "bob"], &bob_pub);
    assert!(
        output_text(&again).contains("there is a key named bob already"),
        "{}",
        output_text(&again)
    );

    // Bob's key works, is not an admin, and his pushes carry his name.
    let mut bob_ssh = world.sshd.ssh_command();
    let at = bob_ssh.iter().position(|w| w == "-i").unwrap();
    bob_ssh[at + 1] = bob.display().to_string();
    let as_bob = |args: &[&str], input: &str| {
        let mut child = Command::new(&bob_ssh[0])
            .args(&bob_ssh[1..])
            .arg(format!("{}@127.0.0.1", world.sshd.user))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let refused = as_bob(&["keys:add", "eve"], &bob_pub);
    assert_eq!(refused.status.code(), Some(2));
    assert!(output_text(&refused).contains("only admin keys"), "{}", output_text(&refused));
    let repo = world.app_repo("named", "v1", "web: python3 app.py\n", "");
    let push = Command::new("git")
        .args(["push", &world.sshd.remote("named"), "main"])
        .current_dir(&repo.dir)
        .env("GIT_SSH_COMMAND", bob_ssh.join(" "))
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", output_text(&push));
    let releases = world.ssh_ok(&["releases", "named"]);
    assert!(releases.lines().nth(1).unwrap().contains(" bob "), "{releases}");

    // Removed, bob's key no longer gets in.
    world.ssh_ok(&["keys:remove", "bob"]);
    let denied = as_bob(&["apps"], "");
    assert_eq!(denied.status.code(), Some(255), "{}", output_text(&denied));
    let admin_removal = world.ssh(&["keys:remove", "berth-test"]);
    assert_ne!(admin_removal.status.code(), Some(0));
    assert!(
        output_text(&admin_removal).contains("berth-test is an admin key"),
        "{}",
        output_text(&admin_removal)
    );
}
