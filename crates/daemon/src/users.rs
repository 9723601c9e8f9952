//! A Unix user per app, so that apps cannot read or signal each other, made with the system's
//! own `useradd` and `userdel` (which know about /etc/shadow, locks, nscd and SELinux).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use berth_supervise::RunAs;
use nix::unistd::{Group, User};
use sha2::{Digest, Sha256};

/// useradd's longest user name.
const MAX_USER_NAME_LEN: usize = 32;
const PREFIX: &str = "berth-";
/// How often a command that found /etc/passwd locked (by a concurrent useradd) is tried.
const LOCK_ATTEMPTS: u32 = 20;

/// Held while users are made or removed. useradd looks for the name before it locks
/// /etc/passwd, so two at once both succeed and the second rewrites the first one's uid;
/// within the daemon the calls therefore take turns.
static USERS_LOCK: Mutex<()> = Mutex::new(());

/// The Unix user name of an app: `berth-APP`. One longer than useradd's 32 characters is cut
/// and ends in `-` and 6 hex digits of a SHA-256 of the app name, so two long names that
/// share a beginning still get users of their own.
pub fn app_user_name(app: &str) -> String {
    let name = format!("{PREFIX}{app}");
    if name.len() <= MAX_USER_NAME_LEN {
        return name;
    }
    let digest = Sha256::digest(app.as_bytes());
    let hash: String = digest.iter().take(3).map(|byte| format!("{byte:02x}")).collect();
    let mut cut = MAX_USER_NAME_LEN - 1 - hash.len();
    // App names are ASCII; this only keeps a stray non-ASCII name from panicking.
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash}", &name[..cut])
}

/// Creates the app's system user, with a group of the same name, home `home` (mode 0700,
/// owned by the user) and no login shell, or finds it when it exists (also when a concurrent
/// call made it first). A group left behind by an earlier user of the name is reused.
/// Calls within the process take turns (see [`USERS_LOCK`]). An existing user keeps the home it
/// was made with; only the directory `home` is (re)made.
pub fn ensure_app_user(app: &str, home: &Path) -> Result<RunAs, String> {
    let name = app_user_name(app);
    if let Some(parent) = home.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
    }
    let user = {
        let _turn = USERS_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if user(&name)?.is_none() {
            create_user(&name, home)?;
        }
        user(&name)?
    };
    let user = user.ok_or_else(|| {
        format!("useradd made the user {name}, but it cannot be found; check /etc/nsswitch.conf")
    })?;
    if user.uid.is_root() || user.gid.as_raw() == 0 {
        return Err(format!(
            "the user {name} has uid {} and gid {}, and apps never run as root; give it \
             other ids with `usermod` and `groupmod`, or remove it with `userdel {name}`",
            user.uid, user.gid
        ));
    }
    // useradd leaves a directory that exists as it is, e.g. one kept from an earlier user.
    std::fs::create_dir_all(home)
        .map_err(|err| format!("cannot create {}: {err}", home.display()))?;
    std::os::unix::fs::chown(home, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .map_err(|err| format!("cannot hand {} to {name}: {err}", home.display()))?;
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| format!("cannot make {} private (mode 0700): {err}", home.display()))?;
    Ok(RunAs { uid: user.uid.as_raw(), gid: user.gid.as_raw() })
}

fn create_user(name: &str, home: &Path) -> Result<(), String> {
    let home = home.to_string_lossy();
    let shell = nologin();
    let mut args = vec!["--system", "--create-home", "--home-dir", &home, "--shell", shell];
    // A group of the name without its user is left over from an earlier user (userdel
    // keeps a private group that others were added to); --user-group would refuse it.
    match group(name)? {
        Some(_) => args.extend(["--gid", name]),
        None => args.push("--user-group"),
    }
    args.push(name);
    match run("useradd", &args)? {
        Ok(()) => Ok(()),
        // Exit status 9: the name is taken, by another program that made the user first.
        Err(_) if user(name)?.is_some() => Ok(()),
        Err(failure) => Err(failure),
    }
}

/// Removes the app's user and its group. A missing user is fine. Files the user owns,
/// its home included, stay: they may be app data that outlives the app.
pub fn remove_app_user(app: &str) -> Result<(), String> {
    let name = app_user_name(app);
    let _turn = USERS_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if user(&name)?.is_some() {
        match run("userdel", &[&name])? {
            Ok(()) => {}
            // Gone already: a concurrent call removed it.
            Err(_) if user(&name)?.is_none() => {}
            Err(failure) => return Err(failure),
        }
    }
    // userdel keeps the group when it is not the user's private one (USERGROUPS_ENAB no).
    if group(&name)?.is_some() {
        match run("groupdel", &[&name])? {
            Ok(()) => {}
            Err(_) if group(&name)?.is_none() => {}
            Err(failure) => return Err(failure),
        }
    }
    Ok(())
}

fn user(name: &str) -> Result<Option<User>, String> {
    User::from_name(name).map_err(|err| format!("cannot look up the user {name}: {err}"))
}

fn group(name: &str) -> Result<Option<Group>, String> {
    Group::from_name(name).map_err(|err| format!("cannot look up the group {name}: {err}"))
}

/// Debian and Fedora have both; some systems only one.
fn nologin() -> &'static str {
    ["/usr/sbin/nologin", "/sbin/nologin"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .unwrap_or("/usr/sbin/nologin")
}

/// The tool from the sbin directories, which a daemon's PATH may lack.
fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .into_iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a shadow tool, again while another one holds the lock on /etc/passwd. The outer
/// error is for a tool that cannot be run; the inner one for a tool that failed, with its
/// output and the fix.
fn run(name: &str, args: &[&str]) -> Result<Result<(), String>, String> {
    let command_line = format!("{name} {}", args.join(" "));
    for attempt in 1.. {
        let output = std::process::Command::new(tool(name)).args(args).output().map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{name} not found: install it (Debian/Ubuntu: apt-get install passwd; \
                     Fedora: dnf install shadow-utils; Alpine: apk add shadow)"
                )
            } else {
                format!("cannot run `{command_line}`: {err}")
            }
        })?;
        if output.status.success() {
            return Ok(Ok(()));
        }
        let text = output_text(&output);
        if text.contains("cannot lock") && attempt < LOCK_ATTEMPTS {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let fix = if !nix::unistd::geteuid().is_root() {
            "; the daemon must run as root to manage app users"
        } else if name == "userdel" && output.status.code() == Some(8) {
            "; stop the app's processes first"
        } else {
            ""
        };
        return Ok(Err(format!("`{command_line}` failed ({}): {text}{fix}", output.status)));
    }
    unreachable!("the loop returns on its last attempt")
}

fn output_text(output: &Output) -> String {
    let text = [&output.stderr, &output.stdout]
        .iter()
        .map(|bytes| String::from_utf8_lossy(bytes).trim().to_owned())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if text.is_empty() { "no output".to_owned() } else { text }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn user_names() {
        let long = "a-very-long-application-name-indeed";
        let cases = [
            ("myapp", "berth-myapp"),
            // 26 characters of app name make exactly 32.
            ("abcdefghijklmnopqrstuvwxyz", "berth-abcdefghijklmnopqrstuvwxyz"),
            ("abcdefghijklmnopqrstuvwxyz1", "berth-abcdefghijklmnopqrs-f9ea13"),
            (long, "berth-a-very-long-applica-2a688c"),
        ];
        for (app, expected) in cases {
            let name = app_user_name(app);
            assert_eq!(name, expected, "{app}");
            assert!(name.len() <= MAX_USER_NAME_LEN, "{name}");
        }
        // Long names that share the first 25 characters still differ.
        assert_ne!(app_user_name(&format!("{long}-1")), app_user_name(&format!("{long}-2")));
        assert_eq!(app_user_name("é".repeat(20).as_str()).len(), 31);
    }

    /// A temporary directory for homes, removed when dropped, with the users made in it.
    struct Scratch {
        dir: PathBuf,
        apps: Vec<String>,
    }

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("berth-users-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch { dir, apps: Vec::new() }
        }

        fn app(&mut self, tag: &str) -> String {
            let app = format!("t{}{tag}", std::process::id());
            self.apps.push(app.clone());
            app
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            for app in &self.apps {
                let _ = remove_app_user(app);
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn passwd_line(name: &str) -> Option<String> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        passwd.lines().find(|line| line.starts_with(&format!("{name}:"))).map(str::to_owned)
    }

    fn group_line(name: &str) -> Option<String> {
        let groups = std::fs::read_to_string("/etc/group").unwrap();
        groups.lines().find(|line| line.starts_with(&format!("{name}:"))).map(str::to_owned)
    }

    #[test]
    fn ensure_and_remove_a_real_user() {
        let mut scratch = Scratch::new("real");
        let app = scratch.app("");
        let name = app_user_name(&app);
        let home = scratch.dir.join("home").join(&app);

        // Concurrent calls agree on one user.
        let run_as = std::thread::scope(|s| {
            let calls: Vec<_> = (0..3).map(|_| s.spawn(|| ensure_app_user(&app, &home))).collect();
            let results: Vec<RunAs> =
                calls.into_iter().map(|c| c.join().unwrap().unwrap()).collect();
            assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
            results[0]
        });
        assert_ne!(run_as.uid, 0);
        assert_eq!(ensure_app_user(&app, &home), Ok(run_as), "a second call finds the user");

        let line = passwd_line(&name).expect("the user is in /etc/passwd");
        let fields: Vec<&str> = line.split(':').collect();
        assert_eq!(fields[2], run_as.uid.to_string(), "{line}");
        assert_eq!(fields[3], run_as.gid.to_string(), "{line}");
        assert_eq!(fields[5], home.to_str().unwrap(), "{line}");
        assert!(fields[6].ends_with("/nologin"), "{line}");
        assert!(group_line(&name).is_some());
        let meta = std::fs::metadata(&home).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (run_as.uid, run_as.gid, 0o700));

        remove_app_user(&app).unwrap();
        assert_eq!(passwd_line(&name), None);
        assert_eq!(group_line(&name), None);
        assert!(home.exists(), "the home is kept");
        remove_app_user(&app).expect("removing a missing user is fine");
    }

    #[test]
    fn a_left_over_group_is_reused() {
        let mut scratch = Scratch::new("group");
        let app = scratch.app("g");
        let name = app_user_name(&app);
        let added = std::process::Command::new(tool("groupadd"))
            .args(["--system", &name])
            .status()
            .unwrap();
        assert!(added.success());
        let gid = Group::from_name(&name).unwrap().unwrap().gid.as_raw();

        let home = scratch.dir.join(&app);
        let run_as = ensure_app_user(&app, &home).unwrap();
        assert_eq!(run_as.gid, gid);

        remove_app_user(&app).unwrap();
        assert_eq!((passwd_line(&name), group_line(&name)), (None, None));
    }
}
