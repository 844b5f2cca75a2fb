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
}
