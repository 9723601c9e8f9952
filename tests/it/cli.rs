//! Berth's CLI over ssh: every command of the walking skeleton, its output and exit code.

use berth_testkit::output_text;

use crate::World;

#[test]
fn cli_commands_over_ssh() {
    let world = World::start("cli");
    let out = world.ssh_ok(&["apps"]);
    assert!(out.contains("no apps yet"), "{out}");

    let procfile = "web: python3 app.py\nworker: echo worker up; exec sleep 600\n";
    let repo = world.app_repo("shop", "v1", procfile, "GREETING=Hello\n");
    world.push_ok(&repo, "shop");

    let out = world.ssh_ok(&["apps"]);
    let row = out.lines().find(|l| l.starts_with("shop")).unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("running") && row.contains("v1") && row.contains("http://shop.berth.test:"),
        "{out}"
    );

    let out = world.ssh_ok(&["ps", "shop"]);
    assert!(out.starts_with("shop: running, release v1 (commit "), "{out}");
    let header: Vec<&str> = out.lines().nth(2).unwrap_or_default().split_whitespace().collect();
    assert_eq!(header[..3], ["PROCESS", "PID", "PORT"], "{out}");
    let web = out.lines().find(|l| l.starts_with("web.1")).unwrap_or_else(|| panic!("{out}"));
    assert!(web.contains("running"), "{out}");
    let worker = out.lines().find(|l| l.starts_with("worker.1")).unwrap_or_else(|| panic!("{out}"));
    assert!(worker.split_whitespace().nth(2) == Some("-"), "a worker has no port:\n{out}");

    // Logs of all processes, of one process, and of the build.
    let _ = world.get("shop", "/logged");
    let out = world.ssh_ok(&["logs", "shop"]);
    assert!(out.contains("web.1 | web listening on"), "{out}");
    assert!(out.contains("worker.1 | worker up"), "{out}");
    let out = world.ssh_ok(&["logs", "shop", "web", "--lines", "50"]);
    assert!(out.contains("GET /logged"), "{out}");
    assert!(!out.contains("worker.1"), "{out}");
    let out = world.ssh_ok(&["logs", "shop", "build"]);
    assert!(out.contains("build/1 | -----> Deploying shop v1"), "{out}");
    let output = world.ssh(&["logs", "shop", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output_text(&output).contains("no logs for a process named nope"));

    // Config.
    let out = world.ssh_ok(&["config", "shop"]);
    assert!(out.contains("has no config vars"), "{out}");
    world.ssh_ok(&["config:set", "shop", "B=2", "A=1"]);
    assert_eq!(world.ssh_ok(&["config", "shop"]), "A=1\nB=2\n");
    assert_eq!(world.ssh_ok(&["config:get", "shop", "B"]), "2\n");
    let output = world.ssh(&["config:get", "shop", "MISSING"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output_text(&output).contains("shop has no config var MISSING"));
    world.ssh_ok(&["config:unset", "shop", "A"]);
    assert_eq!(world.ssh_ok(&["config", "shop"]), "B=2\n");
    let output = world.ssh(&["config:set", "shop", "NOEQUALS"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output_text(&output).contains("is not KEY=VALUE"));

    // Restart gives new processes; stop makes the router answer 502; start brings it back.
    let pid = web_pid(&world, "shop");
    let out = world.ssh_ok(&["restart", "shop"]);
    assert!(out.contains("shop was restarted"), "{out}");
    assert_ne!(web_pid(&world, "shop"), pid);
    assert_eq!(world.get("shop", "/").status, 200);

    let out = world.ssh_ok(&["stop", "shop"]);
    assert!(out.contains("shop is stopped"), "{out}");
    let page = world.get("shop", "/");
    assert_eq!(page.status, 502);
    assert!(
        page.body.contains("shop is not running") || page.body.contains("shop</"),
        "{}",
        page.body
    );
    assert!(world.ssh_ok(&["ps", "shop"]).contains("no processes are running"));
    let output = world.ssh(&["restart", "shop"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output_text(&output).contains("start it with"));
    let out = world.ssh_ok(&["start", "shop"]);
    assert!(out.contains("shop is running at http://shop.berth.test:"), "{out}");
    assert_eq!(world.get("shop", "/").body, "Hello v1");

    // Unknown apps are named in the error.
    let output = world.ssh(&["ps", "nosuch"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output_text(&output).contains("there is no app named nosuch"),
        "{}",
        output_text(&output)
    );

    // Destroy asks for the name again; a wrong answer changes nothing.
    let output = world.sshd.run_with_input(&["destroy", "shop"], "shoe\n");
    assert_eq!(output.status.code(), Some(1));
    assert!(output_text(&output).contains("destroy cancelled"), "{}", output_text(&output));
    assert_eq!(world.get("shop", "/").status, 200);

    let output = world.sshd.run_with_input(&["destroy", "shop"], "shop\n");
    assert!(output.status.success(), "{}", output_text(&output));
    assert!(output_text(&output).contains("shop was destroyed"));
    assert_eq!(world.get("shop", "/").status, 404);
    assert!(!world.root().join("repos/shop.git").exists());
    assert!(!world.root().join("releases/shop").exists());
    assert!(world.ssh_ok(&["apps"]).contains("no apps yet"));

    // --force skips the question.
    let repo = world.app_repo("temp", "v1", "web: python3 app.py\n", "");
    world.push_ok(&repo, "temp");
    let out = world.ssh_ok(&["destroy", "temp", "--force"]);
    assert!(out.contains("temp was destroyed"), "{out}");
}

fn web_pid(world: &World, app: &str) -> String {
    let ps = world.ssh_ok(&["ps", app]);
    let line = ps.lines().find(|l| l.starts_with("web.1")).unwrap_or_else(|| panic!("{ps}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

#[test]
fn help_lists_the_commands() {
    let world = World::start("help");
    let out = world.ssh_ok(&["help"]);
    let commands = [
        "apps",
        "ps",
        "logs",
        "config:set",
        "config:unset",
        "restart",
        "stop",
        "start",
        "destroy",
        "apps:rename",
        "apps:clone",
    ];
    for command in commands {
        assert!(out.contains(command), "help does not mention {command}:\n{out}");
    }
    assert!(!out.contains("daemon"), "help shows a server-only command:\n{out}");
    // Grouped like piku's: each family under its heading, in that order.
    let at = |heading: &str| out.find(heading).unwrap_or_else(|| panic!("no {heading}:\n{out}"));
    assert!(at("\nApps:\n") < at("\nConfig:\n") && at("\nConfig:\n") < at("\nAccess:\n"));
    assert!(at("\nAccess:\n") < at("  auth:set "), "{out}");
}

#[test]
fn config_secrets_live_import_json_help_and_typos() {
    let world = World::start("cli2");
    let repo = world.app_repo("full", "v1", "web: python3 app.py\n", "GREETING=Hello\n");
    world.push_ok(&repo, "full");

    world.ssh_ok(&["config:set", "full", "API_TOKEN=abcdef123", "DEBUG=1"]);
    let config = world.ssh_ok(&["config", "full"]);
    assert!(
        config.contains("API_TOKEN=abc… (masked; --reveal shows it)") && config.contains("DEBUG=1"),
        "{config}"
    );
    assert!(world.ssh_ok(&["config", "full", "--reveal"]).contains("API_TOKEN=abcdef123"));

    // What a web process really gets, every layer together.
    let live = world.ssh_ok(&["config:live", "full", "--reveal"]);
    for expected in
        ["GREETING=Hello", "API_TOKEN=abcdef123", "BERTH_PROCESS=web.1", "BERTH_APP=full", "PORT="]
    {
        assert!(live.lines().any(|l| l.starts_with(expected)), "{expected} missing:\n{live}");
    }

    // --no-restart keeps the running process; the change applies at the next restart.
    let pid = web_pid(&world, "full");
    let out = world.ssh_ok(&["config:set", "full", "GREETING=Later", "--no-restart"]);
    assert_eq!(out, "set GREETING on full\n");
    assert_eq!(web_pid(&world, "full"), pid);
    assert_eq!(world.get("full", "/").body, "Hello v1");
    world.ssh_ok(&["restart", "full"]);
    assert_eq!(world.get("full", "/").body, "Later v1");

    // A dotenv file on stdin, as one change.
    let output = world.sshd.run_with_input(
        &["config:import", "full"],
        "# from .env\nGREETING=\"Imported value\"\nexport EXTRA=1\n",
    );
    assert!(output.status.success(), "{}", output_text(&output));
    assert!(output_text(&output).contains("imported EXTRA, GREETING on full; restarted"));
    assert_eq!(world.get("full", "/").body, "Imported value v1");
    let output = world.sshd.run_with_input(&["config:import", "full"], "not a pair\n");
    assert_eq!(output.status.code(), Some(2));
    assert!(output_text(&output).contains("line 1"), "{}", output_text(&output));

    // --json for scripts.
    let apps: serde_json::Value = serde_json::from_str(&world.ssh_ok(&["apps", "--json"])).unwrap();
    assert_eq!(apps[0]["name"], "full");
    let ps: serde_json::Value =
        serde_json::from_str(&world.ssh_ok(&["ps", "full", "--json"])).unwrap();
    assert_eq!(ps["processes"][0]["process_type"], "web");

    // help COMMAND, a typo, apps:info.
    let help = world.ssh_ok(&["help", "config:set"]);
    assert!(help.contains("Example: berth config:set myapp"), "{help}");
    let output = world.ssh(&["confg", "full"]);
    assert!(output_text(&output).contains("did you mean `config`?"), "{}", output_text(&output));
    let info = world.ssh_ok(&["apps:info", "full"]);
    assert!(
        info.contains("releases: ")
            && info.contains("config keys: API_TOKEN, DEBUG, EXTRA, GREETING"),
        "{info}"
    );
}
