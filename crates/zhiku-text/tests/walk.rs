//! The directory walker on real directories: ids relative to the common root, symlink loops
//! walked once, links out of a confined root left out, and the open-once read.

use std::path::Path;

use zhiku_text::walk::{SkipReason, Walker};
use zhiku_text::{LoadError, WalkError};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn ids(walk: &zhiku_text::Walk) -> Vec<&str> {
    walk.files.iter().map(|f| f.id.as_str()).collect()
}

#[test]
fn same_named_files_in_two_directories_get_two_ids() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a/README.md"), "a");
    write(&dir.path().join("b/README.md"), "b");
    let walk = Walker::new()
        .walk(&[
            dir.path().join("a/README.md"),
            dir.path().join("b/README.md"),
        ])
        .unwrap();
    assert_eq!(ids(&walk), ["a/README.md", "b/README.md"]);
    let walk = Walker::new()
        .walk(&[dir.path().join("a"), dir.path().join("b")])
        .unwrap();
    assert_eq!(ids(&walk), ["a/README.md", "b/README.md"]);
    assert!(walk.skipped.is_empty(), "{:?}", walk.skipped);
}

#[test]
fn one_directory_or_one_file_gives_names_below_it() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("docs/guide.md"), "g");
    write(&dir.path().join("docs/sub/notes.txt"), "n");
    let walk = Walker::new().walk(&[dir.path().join("docs")]).unwrap();
    assert_eq!(ids(&walk), ["guide.md", "sub/notes.txt"]);
    // A file inside a directory that is also given is taken once.
    let walk = Walker::new()
        .walk(&[
            dir.path().join("docs"),
            dir.path().join("docs/sub/notes.txt"),
        ])
        .unwrap();
    assert_eq!(ids(&walk), ["guide.md", "sub/notes.txt"]);
    let walk = Walker::new()
        .walk(&[dir.path().join("docs/sub/notes.txt")])
        .unwrap();
    assert_eq!(ids(&walk), ["notes.txt"]);
    assert_eq!(walk.files[0].read(1 << 20).unwrap(), b"n");
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_is_walked_once_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("kb/a.txt"), "a");
    std::fs::create_dir(dir.path().join("kb/sub")).unwrap();
    std::os::unix::fs::symlink("..", dir.path().join("kb/sub/up")).unwrap();
    let walk = Walker::new().walk(&[dir.path().join("kb")]).unwrap();
    assert_eq!(ids(&walk), ["a.txt"]);
    assert_eq!(walk.skipped.len(), 1, "{:?}", walk.skipped);
    assert_eq!(walk.skipped[0].path, "sub/up");
    assert!(
        matches!(walk.skipped[0].reason, SkipReason::AlreadyWalked { .. }),
        "{:?}",
        walk.skipped
    );
    assert!(!walk.skipped[0].is_failure());
}

#[cfg(unix)]
#[test]
fn a_file_reached_by_a_link_keeps_its_real_id() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("kb/z/real.txt"), "r");
    // The link sorts before the real directory; the real path still wins.
    std::os::unix::fs::symlink("z", dir.path().join("kb/a-link")).unwrap();
    let walk = Walker::new().walk(&[dir.path().join("kb")]).unwrap();
    assert_eq!(ids(&walk), ["z/real.txt"]);
    assert_eq!(walk.skipped[0].path, "a-link");
}

#[cfg(unix)]
#[test]
fn a_confined_walk_never_leaves_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write(&root.join("in.txt"), "in");
    write(&dir.path().join("secret.txt"), "secret");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("leak.txt")).unwrap();
    let walker = Walker::confined(&root).unwrap();
    let walk = walker
        .walk(&[
            ".",
            "../secret.txt",
            "../does-not-exist.txt",
            "/etc/passwd",
            "leak.txt",
        ])
        .unwrap();
    assert_eq!(ids(&walk), ["in.txt"]);
    // Outside paths get one answer, whether they exist or not; the link inside is refused
    // where it leads.
    let outside: Vec<(&str, bool)> = walk
        .skipped
        .iter()
        .filter(|s| s.reason == SkipReason::OutsideRoot)
        .map(|s| (s.path.as_str(), s.is_failure()))
        .collect();
    assert_eq!(
        outside,
        [
            ("../secret.txt", true),
            ("../does-not-exist.txt", true),
            ("/etc/passwd", true),
            ("leak.txt", true),
            ("leak.txt", false),
        ]
    );
}

#[test]
fn reading_checks_the_size_on_the_open_file() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.txt");
    // Sparse: 200 MiB that take no disk.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    write(&dir.path().join("small.txt"), "s");
    let walk = Walker::new().walk(&[dir.path()]).unwrap();
    assert_eq!(ids(&walk), ["big.txt", "small.txt"]);
    let err = walk.files[0].read(64 << 20).unwrap_err();
    assert!(matches!(err, LoadError::TooLarge { .. }), "{err}");
    assert!(err.to_string().starts_with("big.txt: too large"), "{err}");
    assert_eq!(walk.files[1].read(64 << 20).unwrap(), b"s");
}

#[test]
fn a_file_replaced_after_the_walk_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.txt");
    write(&path, "old");
    let walk = Walker::new().walk(&[dir.path()]).unwrap();
    let replacement = dir.path().join("new.txt");
    write(&replacement, "new");
    std::fs::rename(&replacement, &path).unwrap();
    let err = walk.files[0].read(1 << 20).unwrap_err();
    assert!(matches!(err, LoadError::Changed { .. }), "{err}");
}

#[test]
fn a_missing_input_is_a_failure_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.txt"), "a");
    let walk = Walker::new()
        .walk(&[dir.path().join("a.txt"), dir.path().join("nope.txt")])
        .unwrap();
    assert_eq!(ids(&walk), ["a.txt"]);
    assert_eq!(walk.skipped.len(), 1);
    assert!(walk.skipped[0].is_failure());
}

#[test]
fn collisions_are_an_error_naming_both() {
    let err = zhiku_text::walk::check_unique_ids([("x.txt", "a/x.txt"), ("x.txt", "b/x.txt")])
        .unwrap_err();
    let WalkError::Collision { first, second, .. } = &err;
    assert_eq!((first.as_str(), second.as_str()), ("a/x.txt", "b/x.txt"));
    assert!(err.to_string().contains("a/x.txt") && err.to_string().contains("b/x.txt"));
}
