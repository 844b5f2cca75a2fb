//! Errors as text: an error and its sources on one line (the binaries also fold white
//! space).

/// An error and its sources on one line, for errors folded into another's message.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
