//! Parsing of `SSH_ORIGINAL_COMMAND`, the command an ssh client asked the forced command to run.
//!
//! The text comes from an untrusted client and is never handed to a shell: it is split into
//! words the way a POSIX shell would split it, but without any expansion, so `;`, `|`, `$HOME`
//! and globs are just characters. Git's own commands are recognised and their repository
//! path is checked as an app name; everything else becomes arguments for the Berth CLI.

use std::fmt;

use berth_procfile::validate_app_name;

/// What the ssh client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshCommand {
    /// No command: the user tried to open a shell.
    Shell,
    /// `git-receive-pack 'APP'` (push) — also `git receive-pack`.
    ReceivePack { app: String },
    /// `git-upload-pack 'APP'` (fetch/clone) — also `git upload-pack`.
    UploadPack { app: String },
    /// Anything else: Berth CLI arguments, split shell-style (e.g. ["config:set", "app", "A=b c"]).
    Cli { args: Vec<String> },
}

/// Why a command was refused; the message names the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshCommandError(pub String);

impl fmt::Display for SshCommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SshCommandError {}

/// Which git service a command names.
enum GitService {
    ReceivePack,
    UploadPack,
}

/// Parses the forced command's `SSH_ORIGINAL_COMMAND`, which is unset for an interactive login.
pub fn parse_ssh_command(original: Option<&str>) -> Result<SshCommand, SshCommandError> {
    let Some(original) = original.filter(|s| !s.trim().is_empty()) else {
        return Ok(SshCommand::Shell);
    };
    let words = split_words(original)?;

    let (service, rest) = match words.as_slice() {
        [first, rest @ ..] if first == "git-receive-pack" => (GitService::ReceivePack, rest),
        [first, rest @ ..] if first == "git-upload-pack" => (GitService::UploadPack, rest),
        [git, sub, rest @ ..] if git == "git" && sub == "receive-pack" => {
            (GitService::ReceivePack, rest)
        }
        [git, sub, rest @ ..] if git == "git" && sub == "upload-pack" => {
            (GitService::UploadPack, rest)
        }
        [first, ..] if first == "git" || first.starts_with("git-") => {
            let shown = match words.get(1) {
                Some(sub) if first == "git" => format!("git {sub}"),
                _ => first.clone(),
            };
            return Err(SshCommandError(format!(
                "{shown:?} is not supported: Berth accepts git push (git-receive-pack) and git \
                 fetch or clone (git-upload-pack), for example \"git push berth main\""
            )));
        }
        _ => return Ok(SshCommand::Cli { args: words }),
    };

    let service_name = match service {
        GitService::ReceivePack => "git-receive-pack",
        GitService::UploadPack => "git-upload-pack",
    };
    let [path] = rest else {
        return Err(SshCommandError(format!(
            "{service_name} takes exactly one repository path, the app name, but got {}; use a \
             remote like \"berth@host:my-app\"",
            rest.len()
        )));
    };
    let app = validate_app_name(path).map_err(|err| SshCommandError(err.to_string()))?;
    Ok(match service {
        GitService::ReceivePack => SshCommand::ReceivePack { app },
        GitService::UploadPack => SshCommand::UploadPack { app },
    })
}

/// Splits `s` into words like a POSIX shell, without any expansion.
///
/// Whitespace separates words; single quotes keep everything literally; double quotes keep
/// everything except that a backslash escapes `"`, `\`, `$` and `` ` ``; outside quotes a
/// backslash escapes any character. Quotes can join parts into one word (`a'b c'` is `ab c`)
/// and an empty pair of quotes is an empty word.
pub fn split_words(s: &str) -> Result<Vec<String>, SshCommandError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word has started, so that `''` yields an empty word rather than none.
    let mut in_word = false;
    let mut chars = s.chars();

    while let Some(c) = chars.next() {
        match c {
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => {
                            return Err(SshCommandError(
                                "the command has an unterminated single quote; close it with \
                                 another ' or escape it as \\'"
                                    .to_owned(),
                            ));
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(escaped @ ('"' | '\\' | '$' | '`')) => word.push(escaped),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => return Err(unterminated_double_quote()),
                        },
                        Some(c) => word.push(c),
                        None => return Err(unterminated_double_quote()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(escaped) => word.push(escaped),
                    None => {
                        return Err(SshCommandError(
                            "the command ends with a lone backslash; remove it or write \\\\ for \
                             a literal backslash"
                                .to_owned(),
                        ));
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The error for a double quote that is never closed.
fn unterminated_double_quote() -> SshCommandError {
    SshCommandError(
        "the command has an unterminated double quote; close it with another \" or escape it \
         as \\\""
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP_NAME_HELP: &str = "app names use lower-case letters, digits and dashes, start \
                                 with a letter or digit, and are at most 63 characters (for \
                                 example \"my-app\")";

    #[test]
    fn split_words_table() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   \t\n ", &[]),
            ("apps", &["apps"]),
            ("  config:set  app\tA=b  ", &["config:set", "app", "A=b"]),
            ("config:set app 'A=b c'", &["config:set", "app", "A=b c"]),
            ("config:set app \"A=b c\"", &["config:set", "app", "A=b c"]),
            ("config:set app A=b\\ c", &["config:set", "app", "A=b c"]),
            ("a'b c'd", &["ab cd"]),
            ("a\"b c\"d'e'", &["ab cde"]),
            ("'' \"\" x", &["", "", "x"]),
            ("'$HOME' \"$HOME\" $HOME", &["$HOME", "$HOME", "$HOME"]),
            ("'a\\b'", &["a\\b"]),
            ("'it'\\''s'", &["it's"]),
            ("\"a\\\"b\"", &["a\"b"]),
            ("\"a\\\\b\"", &["a\\b"]),
            ("\"\\$x \\` \\n\"", &["$x ` \\n"]),
            ("\"it's\"", &["it's"]),
            ("'say \"hi\"'", &["say \"hi\""]),
            ("\\'\\\"\\\\\\ ", &["'\"\\ "]),
            ("apps; rm -rf /", &["apps;", "rm", "-rf", "/"]),
            ("apps && reboot | cat > /x", &["apps", "&&", "reboot", "|", "cat", ">", "/x"]),
            ("*.rs ~ $(id) `id`", &["*.rs", "~", "$(id)", "`id`"]),
            ("a\nb", &["a", "b"]),
            ("café ünï", &["café", "ünï"]),
        ];
        for (input, want) in cases {
            let got = split_words(input);
            let want: Vec<String> = want.iter().map(|w| w.to_string()).collect();
            assert_eq!(got, Ok(want), "input: {input:?}");
        }
    }

    #[test]
    fn split_words_errors() {
        let single = "the command has an unterminated single quote; close it with another ' or \
                      escape it as \\'";
        let double = "the command has an unterminated double quote; close it with another \" or \
                      escape it as \\\"";
        let backslash = "the command ends with a lone backslash; remove it or write \\\\ for a literal \
             backslash";
        let cases: &[(&str, &str)] = &[
            ("'", single),
            ("apps 'x", single),
            ("a\"b'c\"'", single),
            ("\"", double),
            ("config:set \"A=b", double),
            ("\"abc\\\"", double),
            ("\"abc\\", double),
            ("x\\", backslash),
        ];
        for (input, want) in cases {
            assert_eq!(split_words(input), Err(SshCommandError(want.to_string())), "{input:?}");
        }
    }

    #[test]
    fn parse_git_and_cli_commands() {
        let receive = |app: &str| SshCommand::ReceivePack { app: app.to_string() };
        let upload = |app: &str| SshCommand::UploadPack { app: app.to_string() };
        let cli =
            |args: &[&str]| SshCommand::Cli { args: args.iter().map(|a| a.to_string()).collect() };
        let cases: Vec<(Option<&str>, SshCommand)> = vec![
            (None, SshCommand::Shell),
            (Some(""), SshCommand::Shell),
            (Some("  \t "), SshCommand::Shell),
            (Some("git-receive-pack 'myapp'"), receive("myapp")),
            (Some("git-receive-pack '/myapp.git'"), receive("myapp")),
            (Some("git-receive-pack myapp"), receive("myapp")),
            (Some("git receive-pack 'myapp'"), receive("myapp")),
            (Some("  git-receive-pack   \"my-app\"  "), receive("my-app")),
            (Some("git-upload-pack 'myapp'"), upload("myapp")),
            (Some("git upload-pack '/myapp.git'"), upload("myapp")),
            (Some("apps"), cli(&["apps"])),
            (Some("config:set app 'A=b c'"), cli(&["config:set", "app", "A=b c"])),
            (Some("apps; rm -rf /"), cli(&["apps;", "rm", "-rf", "/"])),
            (Some("''"), cli(&[""])),
            (Some("github"), cli(&["github"])),
            // The password of auth:set comes on stdin, which ssh hands over as it is.
            (Some("auth:set myapp alice"), cli(&["auth:set", "myapp", "alice"])),
            (Some("gitlab-sync app"), cli(&["gitlab-sync", "app"])),
        ];
        for (input, want) in cases {
            assert_eq!(parse_ssh_command(input), Ok(want), "input: {input:?}");
        }
    }

    #[test]
    fn parse_refusals() {
        let not_supported = |shown: &str| {
            format!(
                "{shown:?} is not supported: Berth accepts git push (git-receive-pack) and git \
                 fetch or clone (git-upload-pack), for example \"git push berth main\""
            )
        };
        let path_count = |service: &str, n: usize| {
            format!(
                "{service} takes exactly one repository path, the app name, but got {n}; use a \
                 remote like \"berth@host:my-app\""
            )
        };
        let bad_name = |raw: &str| format!("invalid app name {raw:?}: {APP_NAME_HELP}");
        let cases: Vec<(&str, String)> = vec![
            ("git-receive-pack '../etc'", bad_name("../etc")),
            ("git-receive-pack 'MyApp'", bad_name("MyApp")),
            ("git-receive-pack \"a'b\"", bad_name("a'b")),
            ("git-upload-pack 'a/b'", bad_name("a/b")),
            ("git upload-pack '~/app'", bad_name("~/app")),
            ("git-receive-pack 'app.git.git'", bad_name("app.git.git")),
            (
                "git-receive-pack ''",
                "the app name is empty: give the app a name of lower-case letters, digits and \
                 dashes (for example \"my-app\")"
                    .to_string(),
            ),
            ("git-receive-pack", path_count("git-receive-pack", 0)),
            ("git receive-pack", path_count("git-receive-pack", 0)),
            ("git-upload-pack a b", path_count("git-upload-pack", 2)),
            ("git-receive-pack 'app'; rm -rf /", path_count("git-receive-pack", 4)),
            ("git-upload-archive 'app'", not_supported("git-upload-archive")),
            ("git upload-archive 'app'", not_supported("git upload-archive")),
            ("git", not_supported("git")),
            ("git-shell", not_supported("git-shell")),
            ("config:set app 'A=b", "the command has an unterminated single quote; close it with another ' or escape it as \\'".to_string()),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_ssh_command(Some(input)),
                Err(SshCommandError(want.clone())),
                "input: {input:?}"
            );
            assert_eq!(SshCommandError(want.clone()).to_string(), want);
        }
    }
}
