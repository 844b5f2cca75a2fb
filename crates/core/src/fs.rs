//! Files that appear whole or not at all: written under a private temporary name (created
//! with `O_EXCL`, so a planted symlink is never followed), then renamed. Synchronous.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file being written to a temporary name beside `path`; removed unless committed.
pub(crate) struct PartialFile {
    file: Option<File>,
    tmp: PathBuf,
    path: PathBuf,
}

fn temp_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}-{n}.dockhand-partial",
        std::process::id()
    ))
}

impl PartialFile {
    pub(crate) fn create(path: &Path) -> io::Result<PartialFile> {
        let tmp = temp_name(path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        Ok(PartialFile {
            file: Some(file),
            tmp,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until committed")
    }

    /// Renames the file to its final name.
    pub(crate) fn commit(mut self) -> io::Result<()> {
        let mut file = self.file.take().expect("open until committed");
        file.flush()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes a file through a temporary name, so a half-written file is never there.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = PartialFile::create(path)?;
    f.file().write_all(bytes)?;
    f.commit()
}

/// A hard link to `from` at `to`, else a copy (another filesystem).
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(|_| ()))
}

/// Renames `from` to `to`, replacing what `to` names: a file or symlink atomically (the
/// symlink itself, not what it points to), a directory (or, for a directory, anything) by
/// removing it first.
pub(crate) fn replace(from: &Path, to: &Path) -> io::Result<()> {
    let moving_dir = std::fs::symlink_metadata(from)?.is_dir();
    match std::fs::symlink_metadata(to) {
        Ok(m) if m.is_dir() => remove_tree(to)?,
        Ok(_) if moving_dir => std::fs::remove_file(to)?,
        _ => {}
    }
    std::fs::rename(from, to)
}

/// Removes `path` and everything under it, never following a symlink; read-only
/// directories (a rootfs holds them) are made writable first. Nothing there is fine.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    // Walked with a list, not recursion: a tree may be deeper than the stack allows.
    let mut todo = vec![path.to_path_buf()];
    while let Some(dir) = todo.last().cloned() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let mut subdirs = false;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                todo.push(entry.path());
                subdirs = true;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        if !subdirs {
            std::fs::remove_dir(&dir)?;
            todo.pop();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        let path = dir.path().join("digest");
        // Whatever name is planted, the temporary name is new and created exclusively.
        std::os::unix::fs::symlink(&outside, path.with_extension("dockhand-partial")).unwrap();
        write_file(&path, b"sha256:x").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(std::fs::read(&path).unwrap(), b"sha256:x");
    }

    #[test]
    fn replace_swaps_a_symlink_for_the_directory_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"keep").unwrap();
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("rootfs")).unwrap();
        let new = dir.path().join("new");
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("f"), b"new").unwrap();
        replace(&new, &dest.join("rootfs")).unwrap();
        assert_eq!(std::fs::read(dest.join("rootfs/f")).unwrap(), b"new");
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");
        assert!(!dest.join("rootfs").is_symlink());
    }

    #[test]
    fn remove_tree_removes_read_only_directories_and_not_what_symlinks_point_to() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        std::fs::set_permissions(tree.join("a"), std::fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.is_dir());
        remove_tree(&tree).unwrap();
    }
}
