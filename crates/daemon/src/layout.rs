//! Where everything lives under `$BERTH_ROOT` (see DESIGN.md, "On disk").

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("berth.db")
    }

    pub fn repo(&self, app: &str) -> PathBuf {
        self.root.join("repos").join(format!("{app}.git"))
    }

    pub fn releases(&self, app: &str) -> PathBuf {
        self.root.join("releases").join(app)
    }

    pub fn release(&self, app: &str, number: i64) -> PathBuf {
        self.releases(app).join(number.to_string())
    }

    pub fn cache(&self, app: &str) -> PathBuf {
        self.root.join("cache").join(app)
    }

    pub fn data(&self, app: &str) -> PathBuf {
        self.root.join("data").join(app)
    }

    /// The home directory of the app's Unix user.
    pub fn home(&self, app: &str) -> PathBuf {
        self.root.join("homes").join(app)
    }

    pub fn logs(&self, app: &str) -> PathBuf {
        self.root.join("logs").join(app)
    }

    pub fn instance_log(&self, app: &str, process_type: &str, index: u32) -> PathBuf {
        self.logs(app).join(format!("{process_type}.{index}.log"))
    }

    /// Where each running instance is recorded (pid, port), so that a restarted daemon finds
    /// its processes again: `run/instances/APP/RELEASE/TYPE.N.json`.
    pub fn instance_records(&self) -> PathBuf {
        self.run_dir().join("instances")
    }

    pub fn instance_record(
        &self,
        app: &str,
        release: i64,
        process_type: &str,
        index: u32,
    ) -> PathBuf {
        record_in(&self.instance_records(), app, release, process_type, index)
    }

    /// Where each process of a running preview (`releases:start`) is recorded, so that a
    /// restarted daemon brings the preview back: `run/previews/APP/RELEASE/TYPE.N.json`.
    pub fn preview_records(&self) -> PathBuf {
        self.run_dir().join("previews")
    }

    pub fn preview_record(
        &self,
        app: &str,
        release: i64,
        process_type: &str,
        index: u32,
    ) -> PathBuf {
        record_in(&self.preview_records(), app, release, process_type, index)
    }

    pub fn build_log(&self, app: &str, number: i64) -> PathBuf {
        self.logs(app).join("build").join(format!("{number}.log"))
    }

    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("berth.sock")
    }

    /// The router's bound HTTPS address, when it serves HTTPS.
    pub fn https_addr_file(&self) -> PathBuf {
        self.run_dir().join("https.addr")
    }

    /// The socket keeper's own socket.
    pub fn keeper_socket(&self) -> PathBuf {
        self.run_dir().join("keeper.sock")
    }

    /// The router's bound address, written at start so that scripts and tests that asked for
    /// port 0 can find it.
    pub fn http_addr_file(&self) -> PathBuf {
        self.run_dir().join("http.addr")
    }

    /// Creates the top-level directories.
    pub fn create(&self) -> std::io::Result<()> {
        for dir in ["repos", "releases", "cache", "data", "homes", "logs", "certs", "run"] {
            std::fs::create_dir_all(self.root.join(dir))?;
        }
        Ok(())
    }
}

/// `DIR/APP/RELEASE/TYPE.N.json`: a process record under `dir`.
fn record_in(dir: &Path, app: &str, release: i64, process_type: &str, index: u32) -> PathBuf {
    dir.join(app).join(release.to_string()).join(format!("{process_type}.{index}.json"))
}
