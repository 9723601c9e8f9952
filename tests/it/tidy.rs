//! Tidy checks of the tree: every source file says what it is for, every crate has a README
//! and is on the architecture map.

use std::path::{Path, PathBuf};

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_opens_with_a_doc_line() {
    let mut files = Vec::new();
    for dir in ["src", "crates", "tests"] {
        rust_files(&project().join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let missing: Vec<_> =
        files.iter().filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!")).collect();
    assert!(missing.is_empty(), "files without a `//!` first line: {missing:?}");
}

#[test]
fn every_crate_has_a_readme_and_is_on_the_map() {
    let architecture = std::fs::read_to_string(project().join("docs/ARCHITECTURE.md")).unwrap();
    for entry in std::fs::read_dir(project().join("crates")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(entry.path().join("README.md").exists(), "crates/{name} has no README.md");
        assert!(
            architecture.contains(&format!("crates/{name}")),
            "docs/ARCHITECTURE.md does not describe crates/{name}"
        );
    }
}
