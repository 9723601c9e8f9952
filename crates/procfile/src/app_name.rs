//! Validation of app names, which become directory names, unit names and host names.
//!
//! An app name is `[a-z0-9][a-z0-9-]{0,62}`. Because git clients send the repository path
//! as typed (`git push berth:/my-app.git`), one leading `/` and one trailing `.git` are
//! accepted and stripped. Nothing else is normalised: a name that is refused is refused
//! with a message that says what a good name looks like.

/// The longest app name accepted, so that it fits in a DNS label.
pub const MAX_APP_NAME_LEN: usize = 63;

/// Raw names longer than this are shortened in error messages.
const MAX_SHOWN_LEN: usize = 80;

/// Why a name was refused; the Display text names the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppNameError {
    #[error(
        "the app name is empty: give the app a name of lower-case letters, digits and dashes \
         (for example \"my-app\")"
    )]
    Empty,
    #[error(
        "invalid app name {}: it is {length} characters long, and app names are at most 63 \
         characters (for example \"my-app\")",
        shown(raw)
    )]
    TooLong { raw: String, length: usize },
    #[error(
        "invalid app name {}: app names use lower-case letters, digits and dashes, start with \
         a letter or digit, and are at most 63 characters (for example \"my-app\")",
        shown(raw)
    )]
    Invalid { raw: String },
}

/// Checks `raw` and returns the bare app name, with one leading `/` and one trailing `.git`
/// removed.
pub fn validate_app_name(raw: &str) -> Result<String, AppNameError> {
    if raw.is_empty() {
        return Err(AppNameError::Empty);
    }
    let name = raw.strip_prefix('/').unwrap_or(raw);
    let name = name.strip_suffix(".git").unwrap_or(name);

    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !(first_ok && rest_ok) {
        return Err(AppNameError::Invalid { raw: raw.to_owned() });
    }
    // Only ASCII is left at this point, so bytes and characters agree.
    if name.len() > MAX_APP_NAME_LEN {
        return Err(AppNameError::TooLong { raw: raw.to_owned(), length: name.len() });
    }
    Ok(name.to_owned())
}

/// Quotes a raw name for a message, escaping control characters and shortening long input,
/// because the name comes straight from an untrusted client.
fn shown(raw: &str) -> String {
    if raw.chars().count() <= MAX_SHOWN_LEN {
        format!("{raw:?}")
    } else {
        let head: String = raw.chars().take(MAX_SHOWN_LEN).collect();
        format!("{head:?}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_names() {
        let name_63 = "a".repeat(63);
        let cases: &[(&str, &str)] = &[
            ("x", "x"),
            ("0app", "0app"),
            ("my-app", "my-app"),
            ("app-", "app-"),
            ("a1-b2-c3", "a1-b2-c3"),
            ("app.git", "app"),
            ("/app", "app"),
            ("/myapp.git", "myapp"),
            (&name_63, &name_63),
        ];
        for (raw, want) in cases {
            assert_eq!(validate_app_name(raw).as_deref(), Ok(*want), "raw: {raw:?}");
        }
        let slash_and_git = format!("/{name_63}.git");
        assert_eq!(validate_app_name(&slash_and_git), Ok(name_63.clone()));
    }

    #[test]
    fn refused_names() {
        let name_64 = "a".repeat(64);
        let cases: &[&str] = &[
            "../x",
            "a/b",
            "MyApp",
            "my_app",
            "-app",
            "a'b",
            "a b",
            " app",
            "app ",
            "app.git.git",
            "my.app",
            "café",
            "приложение",
            "/",
            ".git",
            "/.git",
            "//app",
            "app/",
            "app.GIT",
            "app\n",
            "~/app",
        ];
        for raw in cases {
            assert_eq!(
                validate_app_name(raw),
                Err(AppNameError::Invalid { raw: raw.to_string() }),
                "raw: {raw:?}"
            );
        }
        assert_eq!(validate_app_name(""), Err(AppNameError::Empty));
        assert_eq!(
            validate_app_name(&name_64),
            Err(AppNameError::TooLong { raw: name_64.clone(), length: 64 })
        );
    }

    #[test]
    fn messages_name_the_problem_and_the_fix() {
        let long = "b".repeat(100);
        let cases: &[(&str, &str)] = &[
            (
                "../x",
                "invalid app name \"../x\": app names use lower-case letters, digits and \
                 dashes, start with a letter or digit, and are at most 63 characters (for \
                 example \"my-app\")",
            ),
            (
                "",
                "the app name is empty: give the app a name of lower-case letters, digits and \
                 dashes (for example \"my-app\")",
            ),
            (
                "a\u{1b}[31m",
                "invalid app name \"a\\u{1b}[31m\": app names use lower-case letters, digits \
                 and dashes, start with a letter or digit, and are at most 63 characters (for \
                 example \"my-app\")",
            ),
        ];
        for (raw, want) in cases {
            let err = validate_app_name(raw).unwrap_err();
            assert_eq!(err.to_string(), *want, "raw: {raw:?}");
        }

        let too_long = validate_app_name(&long).unwrap_err().to_string();
        let shown = format!("\"{}\"...", "b".repeat(80));
        assert_eq!(
            too_long,
            format!(
                "invalid app name {shown}: it is 100 characters long, and app names are at \
                 most 63 characters (for example \"my-app\")"
            )
        );
    }
}
