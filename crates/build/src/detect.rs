//! Which runtime an app needs, from the files at the top of its tree, in piku's order.

/// The runtimes Berth builds. `Generic` apps run their Procfile as it is (static sites too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `requirements.txt`.
    PythonRequirements,
    /// `pyproject.toml` (uv, poetry or pip).
    PythonProject,
    Ruby,
    Node,
    Maven,
    Gradle,
    Go,
    ClojureCli,
    Leiningen,
    Rust,
    Generic,
}

impl Runtime {
    /// The name users read in the deploy output.
    pub fn label(self) -> &'static str {
        match self {
            Runtime::PythonRequirements | Runtime::PythonProject => "Python",
            Runtime::Ruby => "Ruby",
            Runtime::Node => "Node.js",
            Runtime::Maven => "Java (Maven)",
            Runtime::Gradle => "Java (Gradle)",
            Runtime::Go => "Go",
            Runtime::ClojureCli => "Clojure (CLI)",
            Runtime::Leiningen => "Clojure (Leiningen)",
            Runtime::Rust => "Rust",
            Runtime::Generic => "Generic",
        }
    }
}

/// Detects the runtime from the names of the files at the top of the tree. The order is
/// piku's, so an app with both `requirements.txt` and `package.json` builds as Python there
/// and here.
pub fn detect(files: &[String]) -> Runtime {
    let has = |name: &str| files.iter().any(|f| f == name);
    if has("requirements.txt") {
        Runtime::PythonRequirements
    } else if has("pyproject.toml") {
        Runtime::PythonProject
    } else if has("Gemfile") {
        Runtime::Ruby
    } else if has("package.json") {
        Runtime::Node
    } else if has("pom.xml") {
        Runtime::Maven
    } else if has("build.gradle") || has("build.gradle.kts") {
        Runtime::Gradle
    } else if has("go.mod") || has("Godeps") || files.iter().any(|f| f.ends_with(".go")) {
        Runtime::Go
    } else if has("deps.edn") {
        Runtime::ClojureCli
    } else if has("project.clj") {
        Runtime::Leiningen
    } else if has("Cargo.toml") {
        Runtime::Rust
    } else {
        Runtime::Generic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(files: &[&str], expected: Runtime) {
        let files: Vec<String> = files.iter().map(|f| f.to_string()).collect();
        assert_eq!(detect(&files), expected, "{files:?}");
    }

    #[test]
    fn detection_follows_piku_order() {
        check(&["Procfile", "requirements.txt", "app.py"], Runtime::PythonRequirements);
        check(&["pyproject.toml", "uv.lock"], Runtime::PythonProject);
        check(&["requirements.txt", "pyproject.toml"], Runtime::PythonRequirements);
        check(&["Gemfile", "Gemfile.lock", "package.json"], Runtime::Ruby);
        check(&["package.json", "package-lock.json"], Runtime::Node);
        check(&["requirements.txt", "package.json"], Runtime::PythonRequirements);
        check(&["pom.xml"], Runtime::Maven);
        check(&["build.gradle"], Runtime::Gradle);
        check(&["build.gradle.kts"], Runtime::Gradle);
        check(&["go.mod", "main.go"], Runtime::Go);
        check(&["main.go"], Runtime::Go);
        check(&["Godeps"], Runtime::Go);
        check(&["deps.edn"], Runtime::ClojureCli);
        check(&["project.clj"], Runtime::Leiningen);
        check(&["Cargo.toml", "Cargo.lock"], Runtime::Rust);
        check(&["Procfile", "index.html"], Runtime::Generic);
        check(&["Procfile", "cargo.toml"], Runtime::Generic);
    }
}
