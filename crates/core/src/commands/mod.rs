//! The three commands of the Concourse resource protocol, each a short orchestration over the
//! modules below: [`check`], [`get`] (`in`) and [`put`] (`out`). They take a parsed request
//! and return what the binary prints; they never read stdin or write stdout.

pub mod check;
pub mod get;
mod outputs;
pub mod put;

pub use check::check;
pub use get::get;
pub use put::put;

/// One entry of a response's metadata.
fn field(name: &str, value: &str) -> crate::protocol::MetadataField {
    crate::protocol::MetadataField {
        name: name.to_string(),
        value: value.to_string(),
    }
}
