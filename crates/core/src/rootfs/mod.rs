//! The rootfs `in` writes: layers applied safely ([`unpack`]), in order while the next ones
//! decompress ([`pipeline`]), and exported as `rootfs.tar` ([`export`]). Everything here is
//! synchronous; async code reaches it through [`crate::blocking`].

pub(crate) mod export;
mod framing;
pub(crate) mod pipeline;
pub(crate) mod unpack;

/// What went wrong while writing a rootfs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RootfsError {
    #[error("the layer downloads stopped")]
    Stopped,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
}
