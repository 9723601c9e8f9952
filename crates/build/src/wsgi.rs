//! `wsgi: module:callable` as a command: gunicorn by default, uwsgi on request, with piku's
//! uWSGI knobs mapped to the nearest setting of the server in use.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsgiServer {
    Gunicorn,
    Uwsgi,
}

impl WsgiServer {
    pub fn from_env(env: &BTreeMap<String, String>) -> WsgiServer {
        match env.get("WSGI_SERVER").map(|s| s.trim().to_ascii_lowercase()) {
            Some(s) if s == "uwsgi" => WsgiServer::Uwsgi,
            _ => WsgiServer::Gunicorn,
        }
    }

    /// The package that provides the server.
    pub fn package(self) -> &'static str {
        match self {
            WsgiServer::Gunicorn => "gunicorn",
            WsgiServer::Uwsgi => "uwsgi",
        }
    }
}

/// A knob's value when it is a positive number.
fn number(env: &BTreeMap<String, String>, key: &str) -> Option<u32> {
    env.get(key).and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0)
}

/// The command that serves the WSGI callable `target` (`module:callable`) on
/// `$BIND_ADDRESS:$PORT`, and notes about knobs the server has no equivalent for.
pub fn wsgi_command(target: &str, env: &BTreeMap<String, String>) -> (String, Vec<String>) {
    let target = target.trim();
    let processes = number(env, "UWSGI_PROCESSES");
    let threads = number(env, "UWSGI_THREADS");
    let max_requests = number(env, "UWSGI_MAX_REQUESTS");
    let idle = number(env, "UWSGI_IDLE");
    let mut notes = Vec::new();
    let command = match WsgiServer::from_env(env) {
        WsgiServer::Gunicorn => {
            let mut cmd = format!(
                "exec gunicorn --bind \"$BIND_ADDRESS:$PORT\" --workers {} --access-logfile -",
                processes.unwrap_or(1)
            );
            if let Some(threads) = threads {
                cmd.push_str(&format!(" --threads {threads}"));
            }
            if let Some(max) = max_requests {
                cmd.push_str(&format!(" --max-requests {max}"));
            }
            if idle.is_some() {
                notes.push(
                    "UWSGI_IDLE has no gunicorn equivalent (gunicorn keeps its workers); \
                     set WSGI_SERVER=uwsgi to use it"
                        .to_owned(),
                );
            }
            cmd.push_str(&format!(" {}", shell_word(target)));
            cmd
        }
        WsgiServer::Uwsgi => {
            let mut cmd = format!(
                "exec uwsgi --http-socket \"$BIND_ADDRESS:$PORT\" --master --die-on-term \
                 --enable-threads --processes {}",
                processes.unwrap_or(1)
            );
            if let Some(threads) = threads {
                cmd.push_str(&format!(" --threads {threads}"));
            }
            if let Some(max) = max_requests {
                cmd.push_str(&format!(" --max-requests {max}"));
            }
            if let Some(idle) = idle {
                cmd.push_str(&format!(" --idle {idle}"));
            }
            cmd.push_str(&format!(" --module {}", shell_word(target)));
            cmd
        }
    };
    (command, notes)
}

/// Quotes a word for /bin/sh when it holds anything beyond a module path.
fn shell_word(word: &str) -> String {
    if word.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn gunicorn_by_default_with_piku_knobs() {
        let (cmd, notes) = wsgi_command("app:app", &env(&[]));
        assert_eq!(
            cmd,
            "exec gunicorn --bind \"$BIND_ADDRESS:$PORT\" --workers 1 --access-logfile - app:app"
        );
        assert!(notes.is_empty());
        let knobs = env(&[
            ("UWSGI_PROCESSES", "4"),
            ("UWSGI_THREADS", "2"),
            ("UWSGI_MAX_REQUESTS", "1000"),
            ("UWSGI_IDLE", "60"),
        ]);
        let (cmd, notes) = wsgi_command("web.wsgi:application", &knobs);
        assert_eq!(
            cmd,
            "exec gunicorn --bind \"$BIND_ADDRESS:$PORT\" --workers 4 --access-logfile - \
             --threads 2 --max-requests 1000 web.wsgi:application"
        );
        assert_eq!(notes.len(), 1);
        assert!(notes[0].starts_with("UWSGI_IDLE has no gunicorn equivalent"));
    }

    #[test]
    fn uwsgi_on_request() {
        let knobs =
            env(&[("WSGI_SERVER", "uWSGI"), ("UWSGI_PROCESSES", "2"), ("UWSGI_IDLE", "30")]);
        let (cmd, notes) = wsgi_command("app:app", &knobs);
        assert_eq!(
            cmd,
            "exec uwsgi --http-socket \"$BIND_ADDRESS:$PORT\" --master --die-on-term \
             --enable-threads --processes 2 --idle 30 --module app:app"
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn odd_values_are_ignored_or_quoted() {
        let (cmd, _) = wsgi_command("app:app; rm -rf /", &env(&[("UWSGI_PROCESSES", "lots")]));
        assert!(cmd.contains("--workers 1"), "{cmd}");
        assert!(cmd.ends_with("'app:app; rm -rf /'"), "{cmd}");
    }
}
