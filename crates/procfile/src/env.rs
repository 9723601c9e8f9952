//! Parsing of the ENV file, in piku's format: one `KEY=VALUE` per line.
//!
//! Values may refer to variables as `$VAR` or `${VAR}`; a name is looked up first among the
//! keys defined earlier in the same file, then through the caller's `lookup` (normally the
//! process environment). Single-quoted values are taken literally. Values can hold secrets,
//! so no diagnostic ever repeats a value.

use std::collections::HashMap;

use crate::{Diagnostic, Parsed, numbered_lines};

/// The example shown when a line is not of the form `KEY=VALUE`.
const EXAMPLE: &str = "DATABASE_URL=postgres://localhost/app";

/// Parses an ENV file into ordered `(key, value)` pairs.
///
/// A key set twice keeps the position of its first definition and the value of its last.
pub fn parse_env(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Parsed<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut diagnostics = Vec::new();
    // Key -> (index in `pairs`, line it was last set on).
    let mut defined: HashMap<String, (usize, usize)> = HashMap::new();

    for (line_number, line) in numbered_lines(text) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = strip_export(line);
        let Some((key, raw_value)) = line.split_once('=') else {
            diagnostics.push(Diagnostic::error(
                line_number,
                format!("expected KEY=VALUE, like \"{EXAMPLE}\"; add an '=' after the name"),
            ));
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            diagnostics.push(Diagnostic::error(
                line_number,
                format!(
                    "the variable name before '=' is missing; write it first, like \"{EXAMPLE}\""
                ),
            ));
            continue;
        }
        if !is_name(key) {
            diagnostics.push(Diagnostic::error(
                line_number,
                format!(
                    "invalid variable name {key:?}: names use letters, digits and '_' and do not \
                     start with a digit (for example \"DATABASE_URL\")"
                ),
            ));
            continue;
        }

        let value = {
            let mut resolve = |name: &str| match defined.get(name) {
                Some(&(index, _)) => Some(pairs[index].1.clone()),
                None => lookup(name),
            };
            parse_value(raw_value.trim(), line_number, &mut resolve, &mut diagnostics)
        };

        match defined.get_mut(key) {
            Some((index, last_line)) => {
                diagnostics.push(Diagnostic::warning(
                    line_number,
                    format!(
                        "{key} is set again (before on line {last_line}); this later value is \
                         used, so remove one of the two lines if that is not what you meant"
                    ),
                ));
                pairs[*index].1 = value;
                *last_line = line_number;
            }
            None => {
                defined.insert(key.to_owned(), (pairs.len(), line_number));
                pairs.push((key.to_owned(), value));
            }
        }
    }
    Parsed { value: pairs, diagnostics }
}

/// Removes a leading `export` keyword followed by whitespace, as in shell scripts.
fn strip_export(line: &str) -> &str {
    match line.strip_prefix("export") {
        Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
        _ => line,
    }
}

/// Whether `s` matches `[A-Za-z_][A-Za-z0-9_]*`.
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Removes matching quotes and expands variables, except inside single quotes.
fn parse_value(
    value: &str,
    line_number: usize,
    resolve: &mut dyn FnMut(&str) -> Option<String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> String {
    for quote in ['\'', '"'] {
        if value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote) {
            let inner = &value[1..value.len() - 1];
            return if quote == '\'' {
                inner.to_owned()
            } else {
                expand(inner, line_number, resolve, diagnostics)
            };
        }
        if value.starts_with(quote) {
            diagnostics.push(Diagnostic::warning(
                line_number,
                format!(
                    "the value starts with {quote} but does not end with it, so it is used as \
                     written, quote included; add the closing {quote} or remove the opening one"
                ),
            ));
        }
    }
    expand(value, line_number, resolve, diagnostics)
}

/// Expands `$VAR`, `${VAR}` and `$$`; any other `$` is kept as written.
fn expand(
    value: &str,
    line_number: usize,
    resolve: &mut dyn FnMut(&str) -> Option<String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            match braced.split_once('}') {
                Some((name, tail)) if is_name(name) => (name, tail),
                _ => {
                    diagnostics.push(Diagnostic::warning(
                        line_number,
                        "\"${\" is not followed by a variable name and '}', so it is kept as \
                         written; write ${NAME} to expand a variable or $$ for a literal '$'",
                    ));
                    out.push('$');
                    rest = after;
                    continue;
                }
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            if !is_name(name) {
                // A lone `$`, or `$` before a digit: not a reference.
                out.push('$');
                rest = after;
                continue;
            }
            (name, &after[end..])
        };
        match resolve(name) {
            Some(found) => out.push_str(&found),
            None => diagnostics.push(Diagnostic::warning(
                line_number,
                format!(
                    "variable {name} is not defined earlier in this file or in the environment, \
                     so it expands to an empty string; define it above this line or write $$ for \
                     a literal '$'"
                ),
            )),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;

    /// The environment the tests look variables up in.
    fn lookup(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/berth".into()),
            "PATH" => Some("/usr/bin".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    /// Renders a parse result one item per line, so tables can compare whole results.
    fn render(parsed: &Parsed<Vec<(String, String)>>) -> String {
        let mut out = Vec::new();
        for (key, value) in &parsed.value {
            out.push(format!("{key}={value:?}"));
        }
        for diagnostic in &parsed.diagnostics {
            let severity = match diagnostic.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            out.push(format!("{severity} {diagnostic}"));
        }
        out.join("\n")
    }

    fn check(cases: &[(&str, &str)]) {
        for (text, want) in cases {
            let got = render(&parse_env(text, &lookup));
            assert_eq!(got, *want, "\n--- ENV ---\n{text}\n--- got ---\n{got}\n");
        }
    }

    #[test]
    fn plain_pairs_comments_and_layout() {
        check(&[
            ("", ""),
            ("\n\n  \n", ""),
            ("A=1\nB=2", "A=\"1\"\nB=\"2\""),
            ("# comment\nA=1\n  # indented\n\nB=2\n", "A=\"1\"\nB=\"2\""),
            ("  A  =  hello world  ", "A=\"hello world\""),
            ("A=", "A=\"\""),
            ("A=b=c", "A=\"b=c\""),
            ("_private=1\nA_2=x", "_private=\"1\"\nA_2=\"x\""),
            ("A=x # kept", "A=\"x # kept\""),
            ("URL=http://h/#frag", "URL=\"http://h/#frag\""),
            ("A=1\r\nB=2\r\n", "A=\"1\"\nB=\"2\""),
            ("\u{feff}A=1\n", "A=\"1\""),
        ]);
    }

    #[test]
    fn export_prefix() {
        check(&[
            ("export A=1", "A=\"1\""),
            ("export   A = 1", "A=\"1\""),
            ("export\tA=1", "A=\"1\""),
            ("export=1", "export=\"1\""),
            ("exported=1", "exported=\"1\""),
            (
                "EXPORT A=1",
                "error line 1: invalid variable name \"EXPORT A\": names use letters, digits and '_' and do not start with a digit (for example \"DATABASE_URL\")",
            ),
        ]);
    }

    #[test]
    fn quotes() {
        check(&[
            ("A='x y'", "A=\"x y\""),
            ("A=\"x y\"", "A=\"x y\""),
            ("A=''", "A=\"\""),
            ("A=\"\"", "A=\"\""),
            ("A='$HOME'", "A=\"$HOME\""),
            ("A=\"$HOME\"", "A=\"/home/berth\""),
            ("A=  ' padded '  ", "A=\" padded \""),
            ("A='it\"s'", "A=\"it\\\"s\""),
            ("A=\"it's\"", "A=\"it's\""),
            (
                "A='x\"",
                "A=\"'x\\\"\"\nwarning line 1: the value starts with ' but does not end with it, so it is used as written, quote included; add the closing ' or remove the opening one",
            ),
            (
                "A=\"x",
                "A=\"\\\"x\"\nwarning line 1: the value starts with \" but does not end with it, so it is used as written, quote included; add the closing \" or remove the opening one",
            ),
            (
                "A='",
                "A=\"'\"\nwarning line 1: the value starts with ' but does not end with it, so it is used as written, quote included; add the closing ' or remove the opening one",
            ),
            ("A=x'", "A=\"x'\""),
        ]);
    }

    #[test]
    fn expansion() {
        check(&[
            ("A=$HOME/app", "A=\"/home/berth/app\""),
            ("A=${HOME}app", "A=\"/home/berthapp\""),
            ("A=1\nB=$A-${A}", "A=\"1\"\nB=\"1-1\""),
            // Earlier keys win over the environment; later keys are not seen.
            ("HOME=/srv\nA=$HOME", "HOME=\"/srv\"\nA=\"/srv\""),
            (
                "A=$B\nB=2",
                "A=\"\"\nB=\"2\"\nwarning line 1: variable B is not defined earlier in this file or in the environment, so it expands to an empty string; define it above this line or write $$ for a literal '$'",
            ),
            ("PATH=$PATH:/opt/bin", "PATH=\"/usr/bin:/opt/bin\""),
            ("A=x$EMPTY.y", "A=\"x.y\""),
            (
                "A=$NOPE!",
                "A=\"!\"\nwarning line 1: variable NOPE is not defined earlier in this file or in the environment, so it expands to an empty string; define it above this line or write $$ for a literal '$'",
            ),
            (
                "\n\nA=${NOPE}",
                "A=\"\"\nwarning line 3: variable NOPE is not defined earlier in this file or in the environment, so it expands to an empty string; define it above this line or write $$ for a literal '$'",
            ),
            ("A=$$HOME", "A=\"$HOME\""),
            ("A=a$$$$b", "A=\"a$$b\""),
            ("A=cost: 5$", "A=\"cost: 5$\""),
            ("A=$ x", "A=\"$ x\""),
            ("A=$1", "A=\"$1\""),
            ("A=$-", "A=\"$-\""),
            (
                "A=${}",
                "A=\"${}\"\nwarning line 1: \"${\" is not followed by a variable name and '}', so it is kept as written; write ${NAME} to expand a variable or $$ for a literal '$'",
            ),
            (
                "A=${HOME",
                "A=\"${HOME\"\nwarning line 1: \"${\" is not followed by a variable name and '}', so it is kept as written; write ${NAME} to expand a variable or $$ for a literal '$'",
            ),
            (
                "A=${HO ME}",
                "A=\"${HO ME}\"\nwarning line 1: \"${\" is not followed by a variable name and '}', so it is kept as written; write ${NAME} to expand a variable or $$ for a literal '$'",
            ),
            // Expanded text is not expanded again.
            ("A=$$B\nC=$A", "A=\"$B\"\nC=\"$B\""),
            ("A=é$HOMEé", "A=\"é/home/berthé\""),
        ]);
    }

    #[test]
    fn duplicates() {
        check(&[
            (
                "A=1\nB=2\nA=3",
                "A=\"3\"\nB=\"2\"\nwarning line 3: A is set again (before on line 1); this later value is used, so remove one of the two lines if that is not what you meant",
            ),
            (
                "A=1\nA=$A$A\nA=${A}x",
                "A=\"11x\"\nwarning line 2: A is set again (before on line 1); this later value is used, so remove one of the two lines if that is not what you meant\nwarning line 3: A is set again (before on line 2); this later value is used, so remove one of the two lines if that is not what you meant",
            ),
            (
                "export A=1\nA=1",
                "A=\"1\"\nwarning line 2: A is set again (before on line 1); this later value is used, so remove one of the two lines if that is not what you meant",
            ),
        ]);
    }

    #[test]
    fn bad_lines_report_their_line() {
        check(&[
            (
                "A=1\nJUST_A_WORD\nB=2",
                "A=\"1\"\nB=\"2\"\nerror line 2: expected KEY=VALUE, like \"DATABASE_URL=postgres://localhost/app\"; add an '=' after the name",
            ),
            (
                "# c\r\n\r\n=x\r\n",
                "error line 3: the variable name before '=' is missing; write it first, like \"DATABASE_URL=postgres://localhost/app\"",
            ),
            (
                "1A=x",
                "error line 1: invalid variable name \"1A\": names use letters, digits and '_' and do not start with a digit (for example \"DATABASE_URL\")",
            ),
            (
                "MY-VAR=x\nOK=1",
                "OK=\"1\"\nerror line 1: invalid variable name \"MY-VAR\": names use letters, digits and '_' and do not start with a digit (for example \"DATABASE_URL\")",
            ),
            (
                "\u{feff}\nA B=1",
                "error line 2: invalid variable name \"A B\": names use letters, digits and '_' and do not start with a digit (for example \"DATABASE_URL\")",
            ),
            (
                "export A",
                "error line 1: expected KEY=VALUE, like \"DATABASE_URL=postgres://localhost/app\"; add an '=' after the name",
            ),
            (
                "CAFÉ=1",
                "error line 1: invalid variable name \"CAFÉ\": names use letters, digits and '_' and do not start with a digit (for example \"DATABASE_URL\")",
            ),
        ]);
    }

    #[test]
    fn diagnostics_never_repeat_values() {
        let parsed = parse_env("SECRET=\"hunter2\nSECRET=${hunter2\nSECRET=hunter2", &lookup);
        assert_eq!(parsed.warnings().count(), 4);
        assert!(!parsed.has_errors());
        for diagnostic in &parsed.diagnostics {
            assert!(!diagnostic.message.contains("hunter2"), "{diagnostic}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        let cases =
            ["=", "==", "$", "A=$", "A=${", "A=\"", "A='", "A=\"$\"", "A=é", "A=${é}", "\r"];
        for text in cases {
            let _ = parse_env(text, &|_| None);
        }
    }
}
