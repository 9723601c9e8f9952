//! `apps:rename` and `apps:clone` over ssh: everything of an app follows its new name, a
//! refusal changes nothing, and a clone runs the source's code without its domains.

use berth_testkit::{DEADLINE, http_get, output_text, poll};

use crate::World;

/// The exit status and everything a command printed, for a command that must fail.
fn refused(world: &World, args: &[&str]) -> String {
    let output = world.ssh(args);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{args:?} was not refused:\n{text}");
    text
}

#[test]
fn renaming_moves_everything_and_refusals_change_nothing() {
    let world = World::start("rename");
    // The web process refuses to start under the name in NOT_AS: a rename that fails mid-way.
    let procfile = "web: test \"$APP\" != \"$NOT_AS\" && exec python3 app.py\n\
                    worker: echo worker up; exec sleep 600\n";
    let repo = world.app_repo("kiosk", "v1", procfile, "GREETING=Hello\n");
    world.push_ok(&repo, "kiosk");
    world.ssh_ok(&["config:set", "kiosk", "SECRET_KEY=abc"]);
    world.ssh_ok(&["domains:add", "kiosk", "www.kiosk.test"]);
    world.ssh_ok(&["ps:scale", "kiosk", "worker=2"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    world.ssh_ok(&["ports:add", "kiosk", &port.to_string()]);
    let by_port = || http_get(([127, 0, 0, 1], port).into(), "any.name", "/").unwrap().body;
    let data = world.root().join("data/kiosk/kept.txt");
    std::fs::write(&data, "mine").unwrap();

    // Refusals name the problem and leave the app as it was.
    let text = refused(&world, &["apps:rename", "kiosk", "Bad_Name"]);
    assert!(text.contains("invalid app name"), "{text}");
    let text = refused(&world, &["apps:rename", "nosuch", "other"]);
    assert!(text.contains("there is no app named nosuch"), "{text}");
    world.ssh_ok(&["apps:lock", "kiosk", "release", "freeze"]);
    let text = refused(&world, &["apps:rename", "kiosk", "bazaar"]);
    assert!(
        text.contains("kiosk is locked (release freeze)") && text.contains("apps:unlock"),
        "{text}"
    );
    world.ssh_ok(&["apps:unlock", "kiosk"]);
    std::fs::create_dir_all(world.root().join("data/bazaar")).unwrap();
    let text = refused(&world, &["apps:rename", "kiosk", "bazaar"]);
    assert!(text.contains("data/bazaar exists already") && text.contains("move it away"), "{text}");
    std::fs::remove_dir(world.root().join("data/bazaar")).unwrap();
    assert_eq!(world.get("kiosk", "/").body, "Hello v1");
    assert!(world.root().join("repos/kiosk.git").exists());
    assert!(world.ssh_ok(&["ps", "kiosk"]).contains("worker.1"));

    // A rename whose processes do not start under the new name is undone: nothing is lost.
    world.ssh_ok(&["config:set", "kiosk", "NOT_AS=bazaar", "--no-restart"]);
    let text = refused(&world, &["apps:rename", "kiosk", "bazaar"]);
    assert!(
        text.contains(
            "kiosk did not start as bazaar, so the rename was undone and kiosk runs as before"
        ),
        "{text}"
    );
    assert_eq!(world.get("kiosk", "/").body, "Hello v1");
    assert_eq!(world.daemon.get("www.kiosk.test", "/").unwrap().body, "Hello v1");
    assert_eq!(by_port(), "Hello v1");
    assert_eq!(world.get("bazaar", "/").status, 404);
    assert!(refused(&world, &["ps", "bazaar"]).contains("no app named bazaar"));
    assert!(world.ssh_ok(&["ps", "kiosk"]).starts_with("kiosk: running, release v3"));
    assert!(world.ssh_ok(&["config", "kiosk", "--reveal"]).contains("SECRET_KEY=abc"));
    for dir in ["repos/kiosk.git", "releases/kiosk/1", "logs/kiosk", "data/kiosk/kept.txt"] {
        assert!(world.root().join(dir).exists(), "{dir} is missing");
    }
    assert!(!world.root().join("repos/bazaar.git").exists());
    world.ssh_ok(&["config:unset", "kiosk", "NOT_AS"]);

    let out = world.ssh_ok(&["apps:rename", "kiosk", "bazaar"]);
    assert!(
        out.contains("kiosk is now bazaar, at http://bazaar.berth.test:")
            && out.contains("domains moved with it: www.kiosk.test")
            && out.contains("git remote set-url"),
        "{out}"
    );
    // The new name serves, the old one is gone, the added domain follows.
    assert_eq!(world.get("bazaar", "/").body, "Hello v1");
    assert_eq!(world.get("kiosk", "/").status, 404);
    assert_eq!(world.daemon.get("www.kiosk.test", "/").unwrap().body, "Hello v1");
    assert_eq!(by_port(), "Hello v1");
    assert_eq!(world.ssh_ok(&["ports", "bazaar"]), format!("{port}\n"));
    let ps = world.ssh_ok(&["ps", "bazaar"]);
    assert!(ps.starts_with("bazaar: running, release v4") && ps.contains("worker.2"), "{ps}");
    assert!(refused(&world, &["ps", "kiosk"]).contains("no app named kiosk"));

    // On disk: every directory moved, nothing is left under the old name.
    for dir in ["repos/bazaar.git", "releases/bazaar", "logs/bazaar", "data/bazaar"] {
        assert!(world.root().join(dir).exists(), "{dir} is missing");
    }
    for dir in ["repos/kiosk.git", "releases/kiosk", "logs/kiosk", "data/kiosk", "cache/kiosk"] {
        assert!(!world.root().join(dir).exists(), "{dir} is still there");
    }
    assert_eq!(std::fs::read_to_string(world.root().join("data/bazaar/kept.txt")).unwrap(), "mine");
    // Config, releases and logs came along; the processes run with the new name.
    assert!(world.ssh_ok(&["config", "bazaar", "--reveal"]).contains("SECRET_KEY=abc"));
    assert!(world.ssh_ok(&["releases", "bazaar"]).contains("*v4"));
    let build_log = std::fs::read_to_string(world.root().join("logs/bazaar/build/1.log")).unwrap();
    assert!(build_log.contains("Deploying kiosk v1"), "{build_log}");
    assert!(world.ssh_ok(&["logs", "bazaar", "worker"]).contains("worker.1 | worker up"));
    assert_eq!(world.get("bazaar", "/env/BERTH_APP").body, "bazaar");
    assert!(world.get("bazaar", "/env/DATA_ROOT").body.ends_with("/data/bazaar"));
    if nix::unistd::geteuid().is_root() {
        assert_eq!(world.ssh_ok(&["run", "bazaar", "--", "id", "-un"]), "berth-bazaar\n");
    }

    // A push to the new name deploys it.
    repo.commit(&[("app.py", &crate::app_source("v2"))], "v2").unwrap();
    let out = world.push_ok(&repo, "bazaar");
    assert!(out.contains("Deploying bazaar v5"), "{out}");
    assert_eq!(world.get("bazaar", "/").body, "Hello v2");

    // Cloning: the copy runs the same code and config, without the domains.
    let out = world.ssh_ok(&["apps:clone", "bazaar", "stall"]);
    assert!(
        out.contains("Cloned bazaar into stall")
            && out.contains("bazaar's domains stay with bazaar: www.kiosk.test")
            && out.contains(&format!("bazaar's ports stay with bazaar: {port}"))
            && out.contains("Deploying the code of bazaar v5")
            && out.contains("Deploying stall v1"),
        "{out}"
    );
    assert_eq!(world.get("stall", "/").body, "Hello v2");
    assert!(world.ssh_ok(&["config", "stall", "--reveal"]).contains("SECRET_KEY=abc"));
    let domains = world.ssh_ok(&["domains", "stall"]);
    assert!(!domains.contains("www.kiosk.test"), "{domains}");
    assert_eq!(world.daemon.get("www.kiosk.test", "/").unwrap().body, "Hello v2");
    assert!(world.ssh_ok(&["ps", "stall"]).contains("worker.2"), "the scale came along");

    // The copy's repository is its own: a push there leaves the source alone. While it
    // deploys, the copy keeps its name.
    let slow = format!("{procfile}release: sleep 3\n");
    let files = [("app.py", crate::app_source("v3")), ("Procfile", slow)];
    let files: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    repo.commit(&files, "v3").unwrap();
    let out = std::thread::scope(|scope| {
        let push = scope.spawn(|| world.push_ok(&repo, "stall"));
        let build_log = world.root().join("logs/stall/build/2.log");
        poll("the deploy of stall v2 to run its release command", DEADLINE, || {
            let log = std::fs::read_to_string(&build_log).ok()?;
            log.contains("Running release command").then_some(())
        });
        let text = refused(&world, &["apps:rename", "stall", "booth"]);
        assert!(text.contains("stall is busy (a deploy"), "{text}");
        push.join().expect("the push")
    });
    assert!(out.contains("Deploying stall v2"), "{out}");
    assert_eq!(world.get("stall", "/").body, "Hello v3");
    assert_eq!(world.get("bazaar", "/").body, "Hello v2");

    // Taken names are refused, for a rename and for a clone.
    let text = refused(&world, &["apps:rename", "bazaar", "stall"]);
    assert!(text.contains("an app named stall already exists"), "{text}");
    let text = refused(&world, &["apps:clone", "bazaar", "stall"]);
    assert!(text.contains("an app named stall already exists"), "{text}");
    assert_eq!(world.get("bazaar", "/").body, "Hello v2");
    assert_eq!(world.get("stall", "/").body, "Hello v3");

    // Destroying a renamed app removes its user, which has the new name.
    for app in ["bazaar", "stall"] {
        world.ssh_ok(&["destroy", app, "--force"]);
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name(&format!("berth-{app}")).unwrap();
            assert!(user.is_none(), "berth-{app} is still there");
        }
    }
    assert!(nix::unistd::User::from_name("berth-kiosk").unwrap().is_none());
}
