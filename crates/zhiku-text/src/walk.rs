//! The one directory walker of zhiku: what the CLI sends and what the orchestrator reads
//! under `--ingest-root` are found the same way.
//!
//! - Document ids are paths relative to one base, `/`-separated: the common root of the
//!   inputs ([`Walker::new`]) or a fixed root ([`Walker::confined`]). Two files that still
//!   map to one id are a [`WalkError::Collision`] naming both, so nothing is written.
//! - Symlinks are followed, but every real directory and file is taken at most once (a
//!   visited set of canonical paths): a loop such as `sub/up -> ..` ends at once, and a file
//!   reached by a real path and through a link keeps the real path's id.
//! - What is left out is listed in [`Walk::skipped`] with its reason; nothing is dropped
//!   silently. Fifos, sockets and devices are left out (reading a fifo would block).
//! - The walk is iterative: a deep tree cannot overflow the stack.
//!
//! Walking is blocking I/O: async callers run it on a blocking thread.

use std::collections::{HashMap, VecDeque};
use std::fs::Metadata;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::LoadError;

/// One file a walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkedFile {
    /// The document id: the path relative to the walk's base, `/`-separated.
    pub id: String,
    /// The real (canonical) path: what [`WalkedFile::read`] opens.
    pub path: PathBuf,
    /// Its size when listed, in bytes.
    pub size: u64,
    identity: Identity,
}

/// Which file a path named when it was listed; a file swapped in between the walk and the
/// read is refused rather than read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
}

impl Identity {
    #[cfg(unix)]
    fn of(metadata: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }

    #[cfg(not(unix))]
    fn of(_metadata: &Metadata) -> Self {
        Self {
            device: 0,
            inode: 0,
        }
    }
}

impl WalkedFile {
    /// Reads the file, opened once: its identity is checked on the open handle, and a file
    /// over `max_bytes` is refused before any of it is read.
    pub fn read(&self, max_bytes: u64) -> Result<Vec<u8>, LoadError> {
        let io = |source| LoadError::Io {
            file: self.id.clone(),
            source,
        };
        if self.size > max_bytes {
            return Err(LoadError::TooLarge {
                file: self.id.clone(),
                size: self.size,
                limit: max_bytes,
            });
        }
        let file = std::fs::File::open(&self.path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        if Identity::of(&metadata) != self.identity || !metadata.is_file() {
            return Err(LoadError::Changed {
                file: self.id.clone(),
            });
        }
        if metadata.len() > max_bytes {
            return Err(LoadError::TooLarge {
                file: self.id.clone(),
                size: metadata.len(),
                limit: max_bytes,
            });
        }
        let mut bytes = Vec::with_capacity(metadata.len() as usize);
        // `take` bounds a file that grows while it is read.
        file.take(max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > max_bytes {
            return Err(LoadError::TooLarge {
                file: self.id.clone(),
                size: bytes.len() as u64,
                limit: max_bytes,
            });
        }
        Ok(bytes)
    }
}

/// Why something was left out of a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// A directory or file already taken through another path (a symlink loop, a link to
    /// something walked already, an input given twice).
    AlreadyWalked {
        /// The path it was taken as.
        first: String,
    },
    /// Outside the root a confined walk may read. Every such path gets this same answer,
    /// whether it exists or not.
    OutsideRoot,
    /// Not a regular file or directory (fifo, socket, device).
    NotAFile,
    /// It could not be read or listed; `reason` is what the operating system said.
    Unreadable {
        /// What the operating system said.
        reason: String,
    },
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AlreadyWalked { first } => write!(f, "already taken as `{first}`"),
            Self::OutsideRoot => f.write_str("outside the ingest root"),
            Self::NotAFile => f.write_str("not a regular file or directory"),
            Self::Unreadable { reason } => write!(f, "cannot read: {reason}"),
        }
    }
}

/// One thing a walk left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The path, relative to the base where it lies under it, else as given.
    pub path: String,
    pub reason: SkipReason,
    /// True when it is one of the walk's inputs rather than something found below one.
    pub input: bool,
}

impl Skipped {
    /// True for what the person who asked should treat as a failure: something that could
    /// not be read, or an input outside the root. Links that loop or lead out of the root,
    /// inputs given twice and special files are expected skips.
    pub fn is_failure(&self) -> bool {
        match self.reason {
            SkipReason::Unreadable { .. } => true,
            SkipReason::OutsideRoot => self.input,
            SkipReason::AlreadyWalked { .. } | SkipReason::NotAFile => false,
        }
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// What a walk found.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// The base the ids are relative to.
    pub base: PathBuf,
    /// The files, in id order; ids are unique.
    pub files: Vec<WalkedFile>,
    /// What was left out, in the order met.
    pub skipped: Vec<Skipped>,
}

/// A walk that cannot give every file its own id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// Two different files map to one document id.
    #[error(
        "`{first}` and `{second}` would both be document `{id}`: ingest them in separate calls, or rename one"
    )]
    Collision {
        id: String,
        first: String,
        second: String,
    },
}

/// Checks that every id of `items` (`(id, what it came from)`) is used once.
pub fn check_unique_ids<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), WalkError> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (id, from) in items {
        if let Some(first) = seen.insert(id, from) {
            return Err(WalkError::Collision {
                id: id.to_owned(),
                first: first.to_owned(),
                second: from.to_owned(),
            });
        }
    }
    Ok(())
}

/// Finds the files of a list of files and directories.
#[derive(Debug, Clone)]
pub struct Walker {
    /// Canonical root a confined walk stays under.
    confine: Option<PathBuf>,
}

/// Something to look at: a lexical path (for its id) and the real directory or file it is.
struct Entry {
    lexical: PathBuf,
    real: PathBuf,
    metadata: Metadata,
}

impl Walker {
    /// Ids relative to the common root of the inputs: the deepest directory holding every
    /// input directory and the parent of every input file. `docs/` gives `guide.md`,
    /// `a/README.md b/README.md` gives `a/README.md` and `b/README.md`.
    pub fn new() -> Self {
        Self { confine: None }
    }

    /// Ids relative to `root`, and nothing outside it is read: relative inputs are taken
    /// under `root`, an input that lies outside it (by its path, or where its symlinks
    /// lead) is [`SkipReason::OutsideRoot`] without being looked at, and links that lead
    /// out of it are left out.
    pub fn confined(root: &Path) -> std::io::Result<Self> {
        Ok(Self {
            confine: Some(root.canonicalize()?),
        })
    }

    /// Walks `inputs`, directories recursively in name order.
    pub fn walk<P: AsRef<Path>>(&self, inputs: &[P]) -> Result<Walk, WalkError> {
        let cwd = std::env::current_dir().unwrap_or_default();
        let mut skipped = Vec::new();
        let mut roots: Vec<Entry> = Vec::new();
        for input in inputs {
            let given = input.as_ref();
            let lexical = match &self.confine {
                Some(root) => normalize(&root.join(given)),
                None => normalize(&cwd.join(given)),
            };
            let shown = given.display().to_string();
            if let Some(root) = &self.confine
                && !lexical.starts_with(root)
            {
                skipped.push(Skipped {
                    path: shown,
                    reason: SkipReason::OutsideRoot,
                    input: true,
                });
                continue;
            }
            match self.resolve(&lexical) {
                Ok(Some((real, metadata))) => roots.push(Entry {
                    lexical,
                    real,
                    metadata,
                }),
                Ok(None) => skipped.push(Skipped {
                    path: shown,
                    reason: SkipReason::OutsideRoot,
                    input: true,
                }),
                Err(e) => skipped.push(Skipped {
                    path: shown,
                    reason: SkipReason::Unreadable {
                        reason: e.to_string(),
                    },
                    input: true,
                }),
            }
        }
        let base = match &self.confine {
            Some(root) => root.clone(),
            None => common_root(roots.iter().map(|e| {
                if e.metadata.is_dir() {
                    e.lexical.as_path()
                } else {
                    e.lexical.parent().unwrap_or(Path::new("/"))
                }
            })),
        };
        let mut walk = Walk {
            base,
            files: Vec::new(),
            skipped,
        };
        let mut taken: HashMap<PathBuf, String> = HashMap::new();
        // Real entries first, links after: a file reached both ways keeps its real path's id.
        let mut stack: Vec<Entry> = roots.into_iter().rev().collect();
        let mut links: VecDeque<Entry> = VecDeque::new();
        loop {
            let entry = match stack.pop() {
                Some(entry) => entry,
                None => match links.pop_front() {
                    Some(entry) => entry,
                    None => break,
                },
            };
            let id = walk.id(&entry.lexical);
            if let Some(first) = taken.get(&entry.real) {
                walk.skipped.push(Skipped {
                    path: id,
                    reason: SkipReason::AlreadyWalked {
                        first: first.clone(),
                    },
                    input: false,
                });
                continue;
            }
            taken.insert(entry.real.clone(), id.clone());
            if entry.metadata.is_file() {
                walk.files.push(WalkedFile {
                    id,
                    size: entry.metadata.len(),
                    identity: Identity::of(&entry.metadata),
                    path: entry.real,
                });
                continue;
            }
            if !entry.metadata.is_dir() {
                walk.skipped.push(Skipped {
                    path: id,
                    reason: SkipReason::NotAFile,
                    input: false,
                });
                continue;
            }
            let children = match list(&entry.real) {
                Ok(children) => children,
                Err(e) => {
                    walk.skipped.push(Skipped {
                        path: id,
                        reason: SkipReason::Unreadable {
                            reason: e.to_string(),
                        },
                        input: false,
                    });
                    continue;
                }
            };
            let mut real_children = Vec::new();
            for (name, file_type) in children {
                let lexical = entry.lexical.join(&name);
                let real = entry.real.join(&name);
                if file_type.is_symlink() {
                    match self.resolve(&real) {
                        Ok(Some((real, metadata))) => links.push_back(Entry {
                            lexical,
                            real,
                            metadata,
                        }),
                        Ok(None) => walk.skipped.push(Skipped {
                            path: walk.id(&lexical),
                            reason: SkipReason::OutsideRoot,
                            input: false,
                        }),
                        Err(e) => walk.skipped.push(Skipped {
                            path: walk.id(&lexical),
                            reason: SkipReason::Unreadable {
                                reason: e.to_string(),
                            },
                            input: false,
                        }),
                    }
                    continue;
                }
                match std::fs::symlink_metadata(&real) {
                    Ok(metadata) => real_children.push(Entry {
                        lexical,
                        real,
                        metadata,
                    }),
                    Err(e) => walk.skipped.push(Skipped {
                        path: walk.id(&lexical),
                        reason: SkipReason::Unreadable {
                            reason: e.to_string(),
                        },
                        input: false,
                    }),
                }
            }
            stack.extend(real_children.into_iter().rev());
        }
        walk.files.sort_by(|a, b| a.id.cmp(&b.id));
        // Ids are unique by construction unless two names differ only in bytes that are not
        // UTF-8, or only in case on a case-folding file system: name the real files.
        let mut seen: HashMap<&str, &WalkedFile> = HashMap::new();
        for file in &walk.files {
            if let Some(first) = seen.insert(file.id.as_str(), file) {
                return Err(WalkError::Collision {
                    id: file.id.clone(),
                    first: first.path.display().to_string(),
                    second: file.path.display().to_string(),
                });
            }
        }
        Ok(walk)
    }

    /// The real path and metadata of `path` (symlinks followed); `None` when a confined
    /// walk must not go there.
    fn resolve(&self, path: &Path) -> std::io::Result<Option<(PathBuf, Metadata)>> {
        let real = path.canonicalize()?;
        if let Some(root) = &self.confine
            && !real.starts_with(root)
        {
            return Ok(None);
        }
        let metadata = std::fs::metadata(&real)?;
        Ok(Some((real, metadata)))
    }
}

impl Default for Walker {
    fn default() -> Self {
        Self::new()
    }
}

impl Walk {
    fn id(&self, lexical: &Path) -> String {
        let relative = lexical.strip_prefix(&self.base).unwrap_or(lexical);
        let parts: Vec<String> = relative
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        if parts.is_empty() {
            lexical
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| lexical.display().to_string())
        } else {
            parts.join("/")
        }
    }
}

/// A directory's entries, sorted by name, with their types (not following links).
fn list(dir: &Path) -> std::io::Result<Vec<(std::ffi::OsString, std::fs::FileType)>> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        children.push((entry.file_name(), entry.file_type()?));
    }
    children.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(children)
}

/// `path` with `.` and `..` resolved by its text alone (nothing on disk is looked at).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => out.push(component.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
        }
    }
    out
}

/// The deepest directory that holds every path of `dirs`.
fn common_root<'a>(dirs: impl Iterator<Item = &'a Path>) -> PathBuf {
    let mut root: Option<Vec<Component<'a>>> = None;
    for dir in dirs {
        let components: Vec<Component<'a>> = dir.components().collect();
        root = Some(match root {
            None => components,
            Some(mut common) => {
                let same = common
                    .iter()
                    .zip(&components)
                    .take_while(|(a, b)| a == b)
                    .count();
                common.truncate(same);
                common
            }
        });
    }
    root.map(|c| c.iter().collect())
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_by_text() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../../x")), PathBuf::from("/x"));
    }

    #[test]
    fn common_root_of_directories() {
        let dirs = [Path::new("/w/a/x"), Path::new("/w/a/y"), Path::new("/w/a")];
        assert_eq!(common_root(dirs.into_iter()), PathBuf::from("/w/a"));
        let dirs = [Path::new("/w/a"), Path::new("/v")];
        assert_eq!(common_root(dirs.into_iter()), PathBuf::from("/"));
    }

    #[test]
    fn duplicate_ids_name_both() {
        let err = check_unique_ids([("a", "x/a"), ("b", "x/b"), ("a", "y/a")]).unwrap_err();
        assert_eq!(
            err,
            WalkError::Collision {
                id: "a".into(),
                first: "x/a".into(),
                second: "y/a".into()
            }
        );
        assert!(check_unique_ids([("a", "1"), ("b", "2")]).is_ok());
    }
}
