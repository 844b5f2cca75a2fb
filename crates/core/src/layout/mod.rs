//! Images on disk: read for pushing ([`read`]: `docker save` archives, OCI layouts,
//! `import_file` rootfs tarballs) and written by `in` ([`write`]: `docker load`-able archives
//! and OCI layouts). Synchronous.

pub(crate) mod read;
pub(crate) mod write;
