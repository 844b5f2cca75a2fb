//! Integration tests: the real binaries against real registries. One test binary, so the
//! registries start once.

mod build;
mod check;
mod cloud;
mod common;
mod ecr;
mod examples;
mod get;
mod get_hostile;
mod harness;
mod hostile;
mod malformed;
mod peers;
mod put;
mod put_hostile;
mod registries;
mod select;
mod signatures;
mod sources;
