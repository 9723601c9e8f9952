//! Handing files to the user app processes run as, when the daemon runs as root.

use std::path::Path;

use berth_supervise::RunAs;

/// Changes the owner of `path` and everything below it, without following symlinks.
pub fn chown_tree(path: &Path, run_as: RunAs) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(run_as.uid), Some(run_as.gid))?;
    if path.symlink_metadata()?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), run_as)?;
        }
    }
    Ok(())
}
