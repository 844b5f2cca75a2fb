//! Applying image layers to a directory, as `docker export` would show the result, and
//! safely against hostile layers.
//!
//! Layer semantics follow the image spec's changeset rules
//! (<https://github.com/opencontainers/image-spec/blob/main/layer.md>): whiteouts `.wh.NAME`,
//! opaque directories `.wh..wh..opq` (lower layers only), hardlinks (also to files of lower
//! layers), later entries replacing earlier ones.
//!
//! Confinement: every path, and every hardlink target, is resolved with
//! `openat2(RESOLVE_IN_ROOT)` against the root's file descriptor: `..` stops at the root,
//! absolute symlinks planted by earlier entries resolve inside it, and nothing is ever
//! written outside. Kernels without `openat2` (before 5.6) get an equivalent component walk.
//! The final component is always created with `O_EXCL`/`O_NOFOLLOW` or `*at` calls that do
//! not follow it.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

use super::framing::ExtensionLimit;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// The longest member name or link target accepted, in bytes: Linux's `PATH_MAX`, beyond
/// which no system call takes the path anyway.
pub(crate) const MAX_PATH_BYTES: usize = 4096;
/// The most components a member name may have once cleaned. Real images stay far below
/// (deep `node_modules` trees reach a few dozen).
pub(crate) const MAX_PATH_DEPTH: usize = 256;
/// The deepest directory tree removed for a whiteout or a replaced directory. Symlinks let
/// a layer build trees deeper than [`MAX_PATH_DEPTH`]; removal recurses and holds one file
/// descriptor per level, so it stops here.
const MAX_REMOVE_DEPTH: usize = 1024;
/// How much of a refused name an error shows.
const SHOWN_NAME_BYTES: usize = 80;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    #[error("cannot read the layer archive")]
    Archive(#[source] io::Error),
    #[error("cannot apply {path:?}")]
    Apply {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A member over one of the limits above; `name` is shortened.
    #[error("member {name:?}: {problem}")]
    Refused { name: String, problem: String },
}

/// The start of `raw`, for an error message.
fn shown(raw: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&raw[..raw.len().min(SHOWN_NAME_BYTES)]).into_owned();
    if raw.len() > SHOWN_NAME_BYTES {
        s.push_str("...");
    }
    s
}

/// Refuses a member name or link target over [`MAX_PATH_BYTES`].
fn check_length(name: &[u8], what: &str, value: &[u8]) -> Result<(), UnpackError> {
    if value.len() > MAX_PATH_BYTES {
        return Err(UnpackError::Refused {
            name: shown(name),
            problem: format!(
                "{what} of {} bytes is over the limit of {MAX_PATH_BYTES} bytes",
                value.len()
            ),
        });
    }
    Ok(())
}

/// Counts of what was skipped, for the log.
#[derive(Debug, Default)]
pub(crate) struct Skipped {
    pub devices: usize,
    /// Extended attributes the filesystem or our privileges refused.
    pub xattrs: usize,
}

/// Extended attributes (PAX `SCHILY.xattr.<name>` records) applied to files and directories:
/// file capabilities (`security.capability`: `ping` and friends) and `user.*`. Others are
/// left out on purpose: `trusted.*` (`trusted.overlay.*` would change how overlayfs reads the
/// rootfs when it serves as a lower directory) and `security.selinux` (the host's policy, not
/// the image's, labels files).
pub(crate) fn xattr_wanted(name: &[u8]) -> bool {
    name == b"security.capability" || (name.starts_with(b"user.") && name.len() > 5)
}

/// The wanted extended attributes an entry carries.
fn entry_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for ext in extensions {
        let ext = ext?;
        if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
            if xattr_wanted(name) {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// Directory metadata applied after all layers: a read-only directory must not stop later
/// layers from writing into it, and adding children changes a directory's mtime.
struct DirMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// The buffer file contents are copied through: large, so that a big file is written in
/// few system calls.
const COPY_BUFFER: usize = 1 << 20;

/// Applies layers, in order, to one root directory.
pub(crate) struct Unpacker {
    root: OwnedFd,
    as_root: bool,
    dirs: HashMap<Vec<u8>, DirMeta>,
    /// The directory the last entry was written in, by path: a layer lists a directory's
    /// entries together, so the next one is most often written in the same directory. An
    /// entry never changes what its own parent's path resolves to (only an entry at that
    /// path or above it can), so the handle stays right while the parent stays the same.
    last_parent: Option<(Vec<u8>, OwnedFd)>,
    buffer: Vec<u8>,
    pub skipped: Skipped,
}

impl Unpacker {
    /// `root` must exist and should be empty.
    pub(crate) fn new(root: &Path) -> io::Result<Unpacker> {
        let fd = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Unpacker {
            root: fd,
            as_root: rustix::process::geteuid().is_root(),
            dirs: HashMap::new(),
            last_parent: None,
            buffer: Vec::new(),
            skipped: Skipped::default(),
        })
    }

    /// Applies one uncompressed layer tar stream.
    /// Extension headers, names and link targets are bounded (see the constants), so
    /// memory stays flat whatever the layer holds.
    pub(crate) fn apply_layer<R: Read>(&mut self, layer: R) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(ExtensionLimit::new(layer));
        // Paths written by this layer: an opaque marker clears only what lower layers put in
        // its directory. Whole paths only (their parents are found by prefix), so memory is
        // linear in the names' total length.
        let mut this_layer: BTreeSet<Vec<u8>> = BTreeSet::new();
        for entry in archive.entries().map_err(UnpackError::Archive)? {
            let mut entry = entry.map_err(UnpackError::Archive)?;
            let raw = entry.path_bytes().into_owned();
            check_length(&raw, "name", &raw)?;
            if let Some(link) = entry.link_name_bytes() {
                check_length(&raw, "link target", &link)?;
            }
            let Some(components) = clean(&raw) else {
                continue;
            };
            if components.len() > MAX_PATH_DEPTH {
                return Err(UnpackError::Refused {
                    name: shown(&raw),
                    problem: format!(
                        "a path of {} components is over the limit of {MAX_PATH_DEPTH}",
                        components.len()
                    ),
                });
            }
            let path = components.join(&b'/');
            let (name, parent) = components.split_last().expect("clean() is never empty");
            let fail = |source: io::Error| UnpackError::Apply {
                path: String::from_utf8_lossy(&path).into_owned(),
                source,
            };
            if *name == OPAQUE {
                self.last_parent = None;
                self.opaque(parent, &this_layer).map_err(fail)?;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                self.last_parent = None;
                self.whiteout(parent, hidden).map_err(fail)?;
                continue;
            }
            this_layer.insert(path.clone());
            self.apply_entry(&mut entry, parent, name, &path)
                .map_err(fail)?;
        }
        Ok(())
    }

    /// Sets the recorded directory modes, owners and times. Call once, after the last layer.
    pub(crate) fn finish(mut self) -> io::Result<Skipped> {
        let mut dirs: Vec<_> = self.dirs.drain().collect();
        // Deepest first, so setting a parent's mtime is the last change inside it.
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.iter().filter(|b| **b == b'/').count()));
        for (path, meta) in dirs {
            let components: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
            let (name, parent) = components.split_last().expect("non-empty");
            let Ok(dir) = self.resolve_dir(parent, false) else {
                continue;
            };
            let Ok(st) = rustix::fs::statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                continue;
            }
            // Only what is not already right, as for files.
            let chown = self.as_root && !owned_by(&st, meta.uid, meta.gid);
            if chown {
                rustix::fs::chownat(
                    &dir,
                    *name,
                    Some(uid(meta.uid)),
                    Some(gid(meta.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            if chown || st.st_mode & 0o7777 != meta.mode & 0o7777 {
                rustix::fs::chmodat(
                    &dir,
                    *name,
                    Mode::from_raw_mode(meta.mode & 0o7777),
                    AtFlags::empty(),
                )?;
            }
            rustix::fs::utimensat(&dir, *name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Ok(self.skipped)
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &[&[u8]],
        name: &[u8],
        path: &[u8],
    ) -> io::Result<()> {
        let xattrs = entry_xattrs(entry)?;
        let header = entry.header();
        let mode = header.mode()?;
        let old = header.as_old();
        let (uid_, gid_) = (
            numeric_or_zero(&old.uid, header.uid())?,
            numeric_or_zero(&old.gid, header.gid())?,
        );
        // Base-256 fields hold up to 64 bits; truncated, 2^32 would be root.
        if u32::try_from(uid_).is_err() || u32::try_from(gid_).is_err() {
            return Err(io::Error::other(format!(
                "owner {uid_}:{gid_} does not fit in 32 bits"
            )));
        }
        let mtime = header.mtime().unwrap_or(0);
        let parent_path = parent.join(&b'/');
        let dir = match self.last_parent.take() {
            Some((path, fd)) if path == parent_path => fd,
            _ => self.resolve_dir(parent, true)?,
        };
        self.write_entry(entry, &dir, name, path, xattrs, (mode, uid_, gid_, mtime))?;
        self.last_parent = Some((parent_path, dir));
        Ok(())
    }

    /// Writes one entry named `name` in `dir`, replacing what is there unless both are
    /// directories. The entry is created first, and what holds the name is looked at only
    /// when the name is taken: most names are new, and this saves a lookup per entry.
    fn write_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dir: &OwnedFd,
        name: &[u8],
        path: &[u8],
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
        meta: (u32, u64, u64, u64),
    ) -> io::Result<()> {
        let kind = entry.header().entry_type();
        if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| io::Error::other("hardlink without a target"))?;
            if clean(&target).is_some_and(|t| t.join(&b'/') == path) {
                return Ok(());
            }
        }
        if let Made::Taken = self.make(entry, dir, name, path, &xattrs, meta)? {
            // What holds the name goes (a directory over a directory was kept by `make`).
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    remove_all(dir, name)?
                }
                Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty())?,
                Err(_) => {}
            }
            if let Made::Taken = self.make(entry, dir, name, path, &xattrs, meta)? {
                return Err(rustix::io::Errno::EXIST.into());
            }
        }
        Ok(())
    }

    /// Creates the entry named `name` in `dir` (a directory that is there already stays),
    /// then sets its owner, mode, extended attributes and times. [`Made::Taken`] when the
    /// name is taken, before anything was written.
    fn make<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dir: &OwnedFd,
        name: &[u8],
        path: &[u8],
        xattrs: &[(Vec<u8>, Vec<u8>)],
        (mode, uid_, gid_, mtime): (u32, u64, u64, u64),
    ) -> io::Result<Made> {
        let taken = |e: rustix::io::Errno| -> io::Result<Made> {
            if e == rustix::io::Errno::EXIST {
                Ok(Made::Taken)
            } else {
                Err(e.into())
            }
        };
        let header = entry.header();
        let kind = header.entry_type();
        match kind {
            k if k.is_dir() => {
                if let Err(e) = rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
                    let is_dir = || {
                        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                            FileType::from_raw_mode(st.st_mode) == FileType::Directory
                        })
                    };
                    if e != rustix::io::Errno::EXIST || !is_dir() {
                        return taken(e);
                    }
                }
                if !xattrs.is_empty() {
                    let fd = rustix::fs::openat(
                        dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    self.set_xattrs(&fd, xattrs);
                }
                self.dirs.insert(
                    path.to_vec(),
                    DirMeta {
                        mode,
                        uid: uid_,
                        gid: gid_,
                        mtime,
                    },
                );
            }
            k if k.is_file() || k == tar::EntryType::Continuous || k.is_gnu_sparse() => {
                // Created with its permission bits (the umask may take some away; the
                // setuid, setgid and sticky bits come after the owner, which clears them).
                let fd = match rustix::fs::openat(
                    dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(mode & 0o777),
                ) {
                    Ok(fd) => fd,
                    Err(e) => return taken(e),
                };
                let mut file = std::fs::File::from(fd);
                copy_through(entry, &mut file, &mut self.buffer)?;
                // Owner and mode are changed only when they are not already right: each
                // change is an inode update in the filesystem's journal.
                let st = rustix::fs::fstat(&file)?;
                let chown = self.as_root && !owned_by(&st, uid_, gid_);
                if chown {
                    rustix::fs::fchown(&file, Some(uid(uid_)), Some(gid(gid_)))?;
                }
                // After chown, which clears setuid and setgid.
                if chown || st.st_mode & 0o7777 != mode & 0o7777 {
                    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o7777))?;
                }
                // After chown too, which clears file capabilities.
                self.set_xattrs(&file, xattrs);
                rustix::fs::futimens(&file, &times(mtime))?;
            }
            k if k.is_symlink() => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| io::Error::other("symlink without a target"))?;
                // Stored as given, absolute or not; never followed here.
                if let Err(e) = rustix::fs::symlinkat(OsStr::from_bytes(&target), dir, name) {
                    return taken(e);
                }
                if self.as_root {
                    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                    if !owned_by(&st, uid_, gid_) {
                        rustix::fs::chownat(
                            dir,
                            name,
                            Some(uid(uid_)),
                            Some(gid(gid_)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )?;
                    }
                }
                rustix::fs::utimensat(dir, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            k if k.is_hard_link() => {
                let target = entry.link_name_bytes().expect("checked by write_entry");
                let Some(target) = clean(&target) else {
                    return Err(io::Error::other("hardlink to the root"));
                };
                let (tname, tparent) = target.split_last().expect("non-empty");
                let tdir = self.resolve_dir(tparent, false)?;
                if let Err(e) = rustix::fs::linkat(&tdir, *tname, dir, name, AtFlags::empty()) {
                    return taken(e);
                }
            }
            k if k.is_character_special() || k.is_block_special() || k.is_fifo() => {
                let ft = if k.is_fifo() {
                    FileType::Fifo
                } else if k.is_character_special() {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                // Fifos often carry blank device fields.
                let dev = rustix::fs::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                match rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(mode & 0o7777), dev) {
                    Ok(()) => {}
                    Err(e) if e == rustix::io::Errno::EXIST => return Ok(Made::Taken),
                    Err(e)
                        if ft != FileType::Fifo
                            && (e == rustix::io::Errno::PERM || e == rustix::io::Errno::ACCESS) =>
                    {
                        self.skipped.devices += 1;
                        return Ok(Made::Made);
                    }
                    Err(e) => return Err(e.into()),
                }
                if self.as_root {
                    rustix::fs::chownat(
                        dir,
                        name,
                        Some(uid(uid_)),
                        Some(gid(gid_)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )?;
                }
                rustix::fs::chmodat(
                    dir,
                    name,
                    Mode::from_raw_mode(mode & 0o7777),
                    AtFlags::empty(),
                )?;
            }
            // Global and per-file extended headers are read by `tar` itself; anything else
            // (GNU volume labels, unknown types) carries nothing to write.
            _ => {}
        }
        Ok(Made::Made)
    }

    /// Sets extended attributes on an open file; what is refused (no privilege, a
    /// filesystem without them, a value too large) is counted, not fatal.
    fn set_xattrs(&mut self, fd: &impl AsFd, xattrs: &[(Vec<u8>, Vec<u8>)]) {
        for (name, value) in xattrs {
            let Ok(cname) = std::ffi::CString::new(name.as_slice()) else {
                continue;
            };
            if let Err(e) =
                rustix::fs::fsetxattr(fd, cname.as_c_str(), value, rustix::fs::XattrFlags::empty())
            {
                tracing::debug!(
                    "extended attribute {} not applied: {e}",
                    String::from_utf8_lossy(name)
                );
                self.skipped.xattrs += 1;
            }
        }
    }

    fn whiteout(&mut self, parent: &[&[u8]], hidden: &[u8]) -> io::Result<()> {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Ok(());
        }
        let dir = match self.resolve_dir(parent, false) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match remove_all(&dir, hidden) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn opaque(&mut self, parent: &[&[u8]], this_layer: &BTreeSet<Vec<u8>>) -> io::Result<()> {
        let dir = match self.resolve_dir(parent, true) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let prefix = parent.join(&b'/');
        for name in list(&dir)? {
            let mut full = prefix.clone();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(&name);
            if !written_at_or_under(this_layer, full) {
                remove_all(&dir, &name)?;
            }
        }
        Ok(())
    }

    /// Opens the directory at `components` inside the root, creating missing ones when
    /// `create` (as Docker does for parents a layer does not list).
    fn resolve_dir(&self, components: &[&[u8]], create: bool) -> io::Result<OwnedFd> {
        let path = if components.is_empty() {
            b".".to_vec()
        } else {
            components.join(&b'/')
        };
        match open_in_root(&self.root, &path) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                // Create from the top down; each step resolved inside the root again.
                let mut dir = self.root.try_clone()?;
                for c in components {
                    dir = match open_in_root(&dir, c) {
                        Ok(d) => d,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            rustix::fs::mkdirat(&dir, *c, Mode::from_raw_mode(0o755))?;
                            open_in_root(&dir, c)?
                        }
                        Err(e) => return Err(e),
                    };
                }
                // Re-resolve the whole path from the root, so no step escaped.
                open_in_root(&self.root, &path)
            }
            other => other,
        }
    }
}

/// What [`Unpacker::make`] did.
enum Made {
    Made,
    /// The name was taken; nothing was written.
    Taken,
}

/// Whether `st` is owned by `uid`:`gid` already.
fn owned_by(st: &rustix::fs::Stat, uid: u64, gid: u64) -> bool {
    u64::from(st.st_uid) == uid && u64::from(st.st_gid) == gid
}

/// Copies `from` to `to` through `buffer` ([`COPY_BUFFER`] bytes, allocated on first use),
/// each write as full as the reader allows.
fn copy_through(
    from: &mut impl Read,
    to: &mut impl io::Write,
    buffer: &mut Vec<u8>,
) -> io::Result<()> {
    if buffer.is_empty() {
        buffer.resize(COPY_BUFFER, 0);
    }
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            match from.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        to.write_all(&buffer[..filled])?;
        if filled < buffer.len() {
            return Ok(());
        }
    }
}

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens directory `path` under `root` as if `root` were `/`.
fn open_in_root(root: &OwnedFd, path: &[u8]) -> io::Result<OwnedFd> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match rustix::fs::openat2(
            root,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
        ) {
            Err(rustix::io::Errno::NOSYS) => {
                tracing::debug!("openat2 is not available; resolving paths component by component");
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            Err(rustix::io::Errno::AGAIN) => return walk_in_root(root, path),
            other => return other.map_err(Into::into),
        }
    }
    walk_in_root(root, path)
}

/// The same resolution as `RESOLVE_IN_ROOT`, one component at a time: `..` never leaves the
/// root, symlinks are read and resolved against the root (absolute) or the current directory
/// (relative), at most 40 of them.
fn walk_in_root(root: &OwnedFd, path: &[u8]) -> io::Result<OwnedFd> {
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut todo: Vec<Vec<u8>> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .rev()
        .map(<[u8]>::to_vec)
        .collect();
    let mut links = 0;
    let current =
        |stack: &Vec<OwnedFd>| -> io::Result<OwnedFd> { stack.last().unwrap_or(root).try_clone() };
    while let Some(c) = todo.pop() {
        if c == b".." {
            stack.pop();
            continue;
        }
        let here = current(&stack)?;
        let fd = rustix::fs::openat(
            &here,
            c.as_slice(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => stack.push(fd),
            FileType::Symlink => {
                links += 1;
                if links > 40 {
                    return Err(rustix::io::Errno::LOOP.into());
                }
                let target = rustix::fs::readlinkat(&here, c.as_slice(), Vec::new())?;
                let target = target.as_bytes();
                if target.starts_with(b"/") {
                    stack.clear();
                }
                todo.extend(
                    target
                        .split(|b| *b == b'/')
                        .filter(|c| !c.is_empty() && *c != b".")
                        .rev()
                        .map(<[u8]>::to_vec),
                );
            }
            _ => return Err(rustix::io::Errno::NOTDIR.into()),
        }
    }
    current(&stack)
}

/// The path cleaned as Docker's `filepath.Clean("/" + name)`: no `.`, no empty components,
/// `..` applied lexically and never above the root. `None` for the root itself.
fn clean(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    (!out.is_empty()).then_some(out)
}

fn list(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Whether `written` holds `path` or a path under it (`path/...`): paths sharing a prefix
/// are contiguous in byte order.
fn written_at_or_under(written: &BTreeSet<Vec<u8>>, mut path: Vec<u8>) -> bool {
    if written.contains(&path) {
        return true;
    }
    path.push(b'/');
    written
        .range(path.clone()..)
        .next()
        .is_some_and(|p| p.starts_with(&path))
}

/// Removes `name` in `dir`, recursively, never following a symlink.
fn remove_all(dir: &impl AsFd, name: &[u8]) -> io::Result<()> {
    remove_all_within(dir, name, MAX_REMOVE_DEPTH)
}

fn remove_all_within(dir: &impl AsFd, name: &[u8], depth: usize) -> io::Result<()> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let child = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // A read-only directory (as a non-root user) would refuse the unlinks.
        let _ = rustix::fs::chmodat(dir, name, Mode::from_raw_mode(0o700), AtFlags::empty());
        let Some(depth) = depth.checked_sub(1) else {
            return Err(io::Error::other(format!(
                "a directory tree deeper than {MAX_REMOVE_DEPTH} levels is not removed"
            )));
        };
        for n in list(&child)? {
            remove_all_within(&child, &n, depth)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}

/// A numeric header field; one left blank (all NULs or spaces, as some image tools write
/// uid and gid) is 0, as Go's archive/tar, and so Docker, reads it.
fn numeric_or_zero(raw: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    if raw.iter().all(|b| *b == 0 || *b == b' ') {
        Ok(0)
    } else {
        parsed
    }
}

fn uid(id: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(id as u32)
}

fn gid(id: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(id as u32)
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        let j = |p: &[u8]| clean(p).map(|c| String::from_utf8(c.join(&b'/')).unwrap());
        assert_eq!(j(b"./etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(j(b"/etc//passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(j(b"../../etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(j(b"a/../../b").as_deref(), Some("b"));
        assert_eq!(j(b"./"), None);
        assert_eq!(j(b".."), None);
    }

    /// A layer of `(name, type, link, data)` members; names go in PAX records, so any
    /// length works.
    type Member<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

    fn layer(members: &[Member<'_>]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in members {
            let mut records: Vec<(&str, &[u8])> = vec![("path", name)];
            if !link.is_empty() {
                records.push(("linkpath", link));
            }
            tar.append_pax_extensions(records).unwrap();
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            tar.append(&h, *data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    fn apply(layers: &[Vec<u8>]) -> (tempfile::TempDir, Result<(), UnpackError>) {
        let tmp = tempfile::tempdir().unwrap();
        let mut unpacker = Unpacker::new(tmp.path()).unwrap();
        for l in layers {
            if let Err(e) = unpacker.apply_layer(&l[..]) {
                return (tmp, Err(e));
            }
        }
        unpacker.finish().unwrap();
        (tmp, Ok(()))
    }

    /// The error as the binaries print it: the chain on one line.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut source = e.source();
        while let Some(e) = source {
            s.push_str(": ");
            s.push_str(&e.to_string());
            source = e.source();
        }
        s
    }

    use tar::EntryType::{Directory, Regular, Symlink};

    #[test]
    fn an_owner_over_32_bits_is_refused_not_truncated_to_root() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("f").unwrap();
        h.set_entry_type(Regular);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(1 << 32);
        h.set_cksum();
        tar.append(&h, &b"x"[..]).unwrap();
        let (tmp, result) = apply(&[tar.into_inner().unwrap()]);
        let e = chain(&result.unwrap_err());
        assert!(
            e.ends_with("owner 4294967296:0 does not fit in 32 bits"),
            "{e}"
        );
        assert!(!tmp.path().join("f").exists());
    }

    #[test]
    fn a_pax_path_of_40000_components_is_refused_by_length() {
        let name = b"a/".repeat(40_000);
        let (_tmp, result) = apply(&[layer(&[(&name, Regular, b"", b"x")])]);
        let e = chain(&result.unwrap_err());
        assert!(e.starts_with("member \"a/a/a/"), "{e}");
        assert!(
            e.ends_with(": name of 80000 bytes is over the limit of 4096 bytes"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn a_path_deeper_than_the_limit_is_refused_and_one_at_it_is_applied() {
        let deep = b"d/".repeat(MAX_PATH_DEPTH + 1);
        let (_tmp, result) = apply(&[layer(&[(&deep, Regular, b"", b"x")])]);
        let e = chain(&result.unwrap_err());
        assert!(
            e.ends_with(": a path of 257 components is over the limit of 256"),
            "{e}"
        );
        let at = [&b"d/".repeat(MAX_PATH_DEPTH - 1)[..], b"f"].concat();
        let (tmp, result) = apply(&[layer(&[(&at, Regular, b"", b"x")])]);
        result.unwrap();
        let f = tmp.path().join(String::from_utf8(at).unwrap());
        assert_eq!(std::fs::read(f).unwrap(), b"x");
    }

    #[test]
    fn a_link_target_over_the_length_limit_is_refused() {
        let target = b"t".repeat(MAX_PATH_BYTES + 1);
        let (_tmp, result) = apply(&[layer(&[(b"l", Symlink, &target, b"")])]);
        let e = chain(&result.unwrap_err());
        assert!(
            e.ends_with("link target of 4097 bytes is over the limit of 4096 bytes"),
            "{e}"
        );
    }

    #[test]
    fn a_huge_pax_header_is_refused_before_it_is_read() {
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeader").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(600 << 20);
        h.set_cksum();
        let (_tmp, result) = apply(&[h.as_bytes().to_vec()]);
        let e = chain(&result.unwrap_err());
        assert_eq!(
            e,
            "cannot read the layer archive: a PAX extended header of 629145600 bytes is \
             over the limit of 1048576 bytes"
        );
    }

    #[test]
    fn an_opaque_directory_keeps_what_its_own_layer_wrote_under_it() {
        let lower = layer(&[
            (b"d", Directory, b"", b""),
            (b"d/old", Regular, b"", b"lower"),
            (b"d/sub", Directory, b"", b""),
            (b"d/sub/old", Regular, b"", b"lower"),
            (b"d/subway", Regular, b"", b"lower"),
        ]);
        let upper = layer(&[
            (b"d/sub/new/deep", Regular, b"", b"upper"),
            (b"d/.wh..wh..opq", Regular, b"", b""),
        ]);
        let (tmp, result) = apply(&[lower, upper]);
        result.unwrap();
        let d = tmp.path().join("d");
        let mut names: Vec<_> = walk_names(&d);
        names.sort();
        // `sub` stays (this layer wrote under it) with what lower layers put in it;
        // `subway` shares the prefix but goes.
        assert_eq!(names, ["sub", "sub/new", "sub/new/deep", "sub/old"]);
    }

    /// Each kind of entry replaces each other kind. The entry is created first, and what
    /// held its name goes only when the name turns out taken; a directory over a directory
    /// keeps what is in it.
    #[test]
    fn an_entry_replaces_whatever_held_its_name() {
        let lower = layer(&[
            (b"f", Regular, b"", b"file"),
            (b"d", Directory, b"", b""),
            (b"d/child", Regular, b"", b"c"),
            (b"kept", Directory, b"", b""),
            (b"kept/child", Regular, b"", b"c"),
            (b"s", Symlink, b"f", b""),
            (b"l", Symlink, b"f", b""),
            (b"p", tar::EntryType::Fifo, b"", b""),
        ]);
        let upper = layer(&[
            (b"f", Directory, b"", b""),
            (b"d", Regular, b"", b"now a file"),
            (b"kept", Directory, b"", b""),
            (b"s", Regular, b"", b"was a symlink"),
            (b"l", tar::EntryType::Link, b"d", b""),
            (b"p", Symlink, b"d", b""),
            (b"twice", Regular, b"", b"first"),
            (b"twice", Regular, b"", b"second"),
        ]);
        let (tmp, result) = apply(&[lower, upper]);
        result.unwrap();
        let root = tmp.path();
        assert!(root.join("f").is_dir());
        assert_eq!(std::fs::read(root.join("d")).unwrap(), b"now a file");
        assert_eq!(std::fs::read(root.join("kept/child")).unwrap(), b"c");
        let s = std::fs::symlink_metadata(root.join("s")).unwrap();
        assert!(s.is_file());
        assert_eq!(std::fs::read(root.join("s")).unwrap(), b"was a symlink");
        use std::os::unix::fs::MetadataExt as _;
        let (l, d) = (
            std::fs::symlink_metadata(root.join("l")).unwrap(),
            std::fs::symlink_metadata(root.join("d")).unwrap(),
        );
        assert_eq!((l.ino(), l.nlink()), (d.ino(), 2));
        assert_eq!(std::fs::read_link(root.join("p")).unwrap(), Path::new("d"));
        assert_eq!(std::fs::read(root.join("twice")).unwrap(), b"second");
    }

    /// Files are created with their permission bits, and their mode is changed afterwards
    /// only when the umask took some away or a special bit is asked for: either way each
    /// ends with the mode its header gives, and so does each directory.
    #[test]
    fn files_and_directories_end_with_their_modes() {
        let modes = [0o444, 0o600, 0o644, 0o777, 0o4755, 0o2711];
        let mut tar = tar::Builder::new(Vec::new());
        for (i, mode) in modes.iter().enumerate() {
            for (kind, name) in [(Regular, format!("f{i}")), (Directory, format!("d{i}"))] {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(kind);
                h.set_size(0);
                h.set_mode(*mode | if kind == Directory { 0o700 } else { 0 });
                h.set_path(&name).unwrap();
                h.set_cksum();
                tar.append(&h, &[][..]).unwrap();
            }
        }
        let (tmp, result) = apply(&[tar.into_inner().unwrap()]);
        result.unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        for (i, mode) in modes.iter().enumerate() {
            let mode_of = |name: String| {
                std::fs::symlink_metadata(tmp.path().join(name))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o7777
            };
            assert_eq!(mode_of(format!("f{i}")), *mode, "f{i}");
            assert_eq!(mode_of(format!("d{i}")), *mode | 0o700, "d{i}");
        }
    }

    fn walk_names(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if e.file_type().unwrap().is_dir() {
                for n in walk_names(&e.path()) {
                    out.push(format!("{name}/{n}"));
                }
            }
            out.push(name);
        }
        out
    }

    #[test]
    fn walk_matches_openat2_on_hostile_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root_path = tmp.path().join("root");
        std::fs::create_dir_all(root_path.join("etc")).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("/etc", root_path.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root_path.join("rel")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), root_path.join("host")).unwrap();
        let root =
            rustix::fs::open(&root_path, OFlags::DIRECTORY | OFlags::PATH, Mode::empty()).unwrap();
        for path in ["abs", "rel", "host", "../..", "etc/../../.."] {
            let walked = walk_in_root(&root, path.as_bytes());
            let kernel = open_in_root(&root, path.as_bytes());
            let ino =
                |fd: io::Result<OwnedFd>| fd.ok().map(|fd| rustix::fs::fstat(&fd).unwrap().st_ino);
            let (w, k) = (ino(walked), ino(kernel));
            assert_eq!(w, k, "{path}");
            // Whatever it resolves to is inside the root.
            if let Some(ino) = w {
                let outside = std::fs::metadata(tmp.path().join("outside")).unwrap();
                assert_ne!(
                    ino,
                    std::os::unix::fs::MetadataExt::ino(&outside),
                    "{path} escaped"
                );
            }
        }
    }
}
