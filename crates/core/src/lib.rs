//! dockhand: the core of a Concourse resource type for container images.
//!
//! The `check`, `in` and `out` binaries parse a [`protocol::Request`] and call one function
//! of [`commands`]. This library never writes to stdout and never exits; logs go through
//! `tracing`.
//!
//! The modules form layers, each importing only from those below it (pinned by the
//! `layering` test): `commands` → `build` → `pull`, `push` → `layout` → `daemon`, `git`,
//! `protocol` → `source` → `select` → `error` → `registry` → `image` → `rootfs` → the
//! leaves. To fetch an image, read `pull.rs`; credentials are attached in
//! `registry/mod.rs` (`Registry::send`).
#![deny(clippy::print_stdout)]
#![warn(unreachable_pub)]

mod blob;
mod blocking;
mod build;
pub mod commands;
mod compression;
mod daemon;
mod error;
mod fs;
mod git;
mod hash;
mod image;
mod layout;
mod progress;
pub mod protocol;
mod pull;
mod push;
pub mod redact;
mod reference;
mod registry;
mod report;
mod rootfs;
mod secret;
mod select;
mod signature;
mod source;
mod time;

pub use error::Error;

#[cfg(test)]
mod layering;
#[cfg(test)]
mod proptests;
