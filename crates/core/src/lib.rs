//! dockhand: the core of a Concourse resource type for container images.
//!
//! The `check`, `in` and `out` binaries parse a [`protocol::Request`] and call one function
//! here. This library never writes to stdout and never exits; logs go through `tracing`.
#![deny(clippy::print_stdout)]

pub mod archive;
pub mod build;
pub mod check;
pub mod daemon;
pub mod dockerignore;
pub mod error;
pub mod get;
pub mod git;
pub mod image;
pub mod outputs;
pub mod progress;
pub mod protocol;
pub mod put;
pub mod reference;
pub mod registry;
pub mod secret;
pub mod select;
pub mod source;
pub mod unpack;

pub use error::Error;
