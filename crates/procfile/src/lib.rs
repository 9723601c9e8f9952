//! Pure parsers for what a user pushes: app names, the Procfile and the ENV file.
//!
//! Every parser takes a `&str` and returns what it could understand together with
//! diagnostics that carry 1-based line numbers. Nothing here does I/O, and no user input
//! can make these functions panic; a bad line becomes a [`Diagnostic`], never a crash.

pub mod app_name;
pub mod env;
pub mod procfile;

pub use app_name::{AppNameError, validate_app_name};
pub use env::parse_env;
pub use procfile::{ProcessEntry, ProcessKind, Procfile, parse_procfile};

use std::fmt;

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Severity {
    /// The line was not understood and was left out of the parsed value.
    Error,
    /// The line was understood, but probably not in the way the user meant.
    Warning,
}

/// A message about one line of parsed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The 1-based line number the message is about.
    pub line: usize,
    pub severity: Severity,
    /// What is wrong and what to do about it, in lower case without a trailing period.
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn error(line: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic { line, severity: Severity::Error, message: message.into() }
    }

    pub(crate) fn warning(line: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic { line, severity: Severity::Warning, message: message.into() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The result of a parse: the value that could be understood plus diagnostics about the rest.
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    pub value: T,
    pub diagnostics: Vec<Diagnostic>,
}

impl<T> Parsed<T> {
    /// The diagnostics of severity [`Severity::Error`], in line order.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }

    /// The diagnostics of severity [`Severity::Warning`], in line order.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Warning)
    }

    /// Whether any diagnostic is an error, which means part of the input was left out.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

/// Splits text into numbered lines, tolerating a UTF-8 byte order mark and CRLF line endings.
pub(crate) fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n').enumerate().map(|(index, line)| {
        let line = line.strip_suffix('\r').unwrap_or(line);
        (index + 1, line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostic_display_names_the_line() {
        let cases = [
            (Diagnostic::error(3, "bad thing"), "line 3: bad thing"),
            (Diagnostic::warning(12, "odd thing"), "line 12: odd thing"),
        ];
        for (diagnostic, want) in cases {
            assert_eq!(diagnostic.to_string(), want);
        }
    }

    #[test]
    fn parsed_splits_errors_from_warnings() {
        let parsed = Parsed {
            value: (),
            diagnostics: vec![
                Diagnostic::warning(1, "w1"),
                Diagnostic::error(2, "e1"),
                Diagnostic::warning(3, "w2"),
            ],
        };
        let errors: Vec<_> = parsed.errors().map(|d| d.message.as_str()).collect();
        let warnings: Vec<_> = parsed.warnings().map(|d| d.message.as_str()).collect();
        assert_eq!(errors, ["e1"]);
        assert_eq!(warnings, ["w1", "w2"]);
        assert!(parsed.has_errors());

        let clean = Parsed { value: (), diagnostics: vec![Diagnostic::warning(1, "w")] };
        assert!(!clean.has_errors());
    }

    #[test]
    fn numbered_lines_handles_bom_and_crlf() {
        let cases: &[(&str, &[(usize, &str)])] = &[
            ("", &[(1, "")]),
            ("a\nb", &[(1, "a"), (2, "b")]),
            ("a\r\nb\r\n", &[(1, "a"), (2, "b"), (3, "")]),
            ("\u{feff}a\nb", &[(1, "a"), (2, "b")]),
            ("a\rb", &[(1, "a\rb")]),
        ];
        for (text, want) in cases {
            let got: Vec<_> = numbered_lines(text).collect();
            assert_eq!(&got, want, "text: {text:?}");
        }
    }
}
