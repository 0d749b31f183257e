//! Durable, all-or-nothing file writes: temporary names, fsync, rename, fsync of the
//! directory. The adapter and the checkpoint writers share them.

use std::path::Path;

use crate::error::TuneError;

/// Removes a leftover temporary directory of ours (from a crashed run).
pub(crate) fn remove_stale(path: &Path) -> Result<(), TuneError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(io(path)),
        Ok(_) => Err(TuneError::Validation(format!(
            "{} is in the way (not a directory zhiku left); remove it",
            path.display()
        ))),
        Err(_) => Ok(()),
    }
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TuneError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

pub(crate) fn sync_file(path: &Path) -> Result<(), TuneError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), TuneError> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> TuneError + '_ {
    move |source| TuneError::Io {
        path: path.display().to_string(),
        source,
    }
}
