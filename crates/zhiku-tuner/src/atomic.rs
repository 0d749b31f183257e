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

/// Moves the complete `staging` directory to `dir` (in `parent`, named `name`). A directory
/// of ours already at `dir` (one holding `marker`, or empty) is moved aside first and
/// removed after; `dir` holding anything else is refused.
pub(crate) fn replace_dir(
    staging: &Path,
    dir: &Path,
    parent: &Path,
    name: &str,
    marker: &str,
) -> Result<(), TuneError> {
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let replacing = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(dir)(e)),
        Ok(meta) if meta.is_dir() => {
            let is_empty = std::fs::read_dir(dir).map_err(io(dir))?.next().is_none();
            if !is_empty && !dir.join(marker).is_file() {
                return Err(TuneError::Validation(format!(
                    "{} exists and holds other files than zhiku writes there; choose another place",
                    dir.display()
                )));
            }
            true
        }
        Ok(_) => {
            return Err(TuneError::Validation(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
    };
    if replacing {
        remove_stale(&old)?;
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    if let Err(e) = std::fs::rename(staging, dir) {
        if replacing {
            let _ = std::fs::rename(&old, dir);
        }
        return Err(io(dir)(e));
    }
    sync_dir(parent)?;
    if replacing {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}
