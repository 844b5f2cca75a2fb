//! `rootfs.tar`: the unpacked rootfs as one tarball, as `docker export` writes it. Synchronous.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::unpack::xattr_wanted;
use crate::fs::PartialFile;

/// The extended attributes `in` applies (see [`xattr_wanted`]) as a PAX
/// header for the entry that follows, as `docker export` writes them.
fn append_xattrs<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    buf: &mut XattrBuffers,
) -> io::Result<()> {
    let len = match rustix::fs::llistxattr(path, &mut buf.names[..]) {
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        other => other?,
    };
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for name in buf.names[..len].split(|b| *b == 0) {
        let (Ok(text), true) = (std::str::from_utf8(name), xattr_wanted(name)) else {
            continue;
        };
        let cname = std::ffi::CString::new(name).expect("split at NUL");
        let n = rustix::fs::lgetxattr(path, cname.as_c_str(), &mut buf.value[..])?;
        records.push((format!("SCHILY.xattr.{text}"), buf.value[..n].to_vec()));
    }
    tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
}

/// Room for any name list and any value: Linux caps both at 64 KiB (XATTR_LIST_MAX,
/// XATTR_SIZE_MAX). Allocated once per archive.
struct XattrBuffers {
    names: Vec<u8>,
    value: Vec<u8>,
}

impl XattrBuffers {
    fn new() -> XattrBuffers {
        XattrBuffers {
            names: vec![0; 64 << 10],
            value: vec![0; 64 << 10],
        }
    }
}

/// `rootfs.tar`: the unpacked rootfs as one tarball, as `docker export` writes it (hardlinks
/// as links, symlinks not followed), without unpacking anything twice.
pub(crate) fn write_rootfs_tar(rootfs: &Path, path: &Path) -> io::Result<()> {
    let mut partial = PartialFile::create(path)?;
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, partial.file()));
    tar.follow_symlinks(false);
    let mut inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut xattrs = XattrBuffers::new();
    walk(rootfs, Path::new(""), &mut tar, &mut inodes, &mut xattrs)?;
    tar.into_inner()?.flush()?;
    partial.commit()
}

fn walk<W: Write>(
    base: &Path,
    rel: &Path,
    tar: &mut tar::Builder<W>,
    inodes: &mut HashMap<(u64, u64), PathBuf>,
    xattrs: &mut XattrBuffers,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(base.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = rel.join(entry.file_name());
        let full = base.join(&name);
        let meta = std::fs::symlink_metadata(&full)?;
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let ft = meta.file_type();
        if ft.is_file() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = inodes.get(&key) {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                tar.append_link(&mut h, &name, first)?;
                continue;
            }
            inodes.insert(key, name.clone());
        }
        if ft.is_dir() || ft.is_file() {
            append_xattrs(tar, &full, xattrs)?;
        }
        if ft.is_dir() {
            tar.append_data(&mut h, &name, io::empty())?;
            walk(base, &name, tar, inodes, xattrs)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&full)?;
            h.set_size(0);
            tar.append_link(&mut h, &name, target)?;
        } else if ft.is_file() {
            let file = std::fs::File::open(&full)?;
            tar.append_data(&mut h, &name, file)?;
        } else {
            // Fifos and devices: the header says it all.
            h.set_size(0);
            tar.append_data(&mut h, &name, io::empty())?;
        }
    }
    Ok(())
}
