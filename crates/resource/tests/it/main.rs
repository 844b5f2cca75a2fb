//! Integration tests: the real binaries against real registries. One test binary, so the
//! registries start once.

mod build;
mod check;
mod common;
mod ecr;
mod examples;
mod get;
mod get_hostile;
mod harness;
mod hostile;
mod malformed;
mod put;
mod put_hostile;
mod select;
mod signatures;
mod sources;
