//! The rootfs `in` writes: layers applied safely ([`unpack`]), in order while the next ones
//! decompress ([`pipeline`]), and exported as `rootfs.tar` ([`export`]). Everything here is
//! synchronous; async code reaches it through [`crate::blocking`].

pub(crate) mod export;
mod framing;
pub(crate) mod pipeline;
pub(crate) mod unpack;

#[cfg(test)]
mod proptests;

use crate::reference::Digest;

/// What went wrong while writing a rootfs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RootfsError {
    #[error("the layer downloads stopped")]
    Stopped,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("layer {layer}")]
    Layer {
        layer: Digest,
        #[source]
        source: unpack::UnpackError,
    },
    /// The layer's uncompressed bytes are not what the image's config says they are.
    #[error("layer {layer} uncompresses to {actual}, not to the config's diff_id {expected}")]
    DiffId {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
}

/// A layer to apply: its blob's digest and the config's `rootfs.diff_ids` entry for it.
#[derive(Debug, Clone)]
pub(crate) struct LayerIds {
    pub digest: Digest,
    pub diff_id: Digest,
}
