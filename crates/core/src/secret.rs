//! A string that must never reach a log, an error message or stdout.

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// A secret, registered with the [redactor](crate::redact) so that no output line can
    /// show it.
    pub(crate) fn new(s: impl Into<String>) -> Secret {
        let s = s.into();
        crate::redact::register(&s);
        Secret(s)
    }

    /// The secret itself, for the one place that sends it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Deserialises from a string only, and the error never echoes the value (serde's default
/// `invalid type: integer 1234` would print a numeric password).
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'v> serde::de::Visitor<'v> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("must be a string"))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom("must be a string (quote it in the pipeline)"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom("must be a string (quote it in the pipeline)"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("must be a string (quote it in the pipeline)"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'v>>(self, _: A) -> Result<Secret, A::Error> {
                Err(serde::de::Error::custom("must be a string"))
            }
            fn visit_map<A: serde::de::MapAccess<'v>>(self, _: A) -> Result<Secret, A::Error> {
                Err(serde::de::Error::custom("must be a string"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }

    #[test]
    fn type_errors_do_not_echo_the_value() {
        let err = serde_json::from_str::<Secret>("123456789").unwrap_err();
        assert!(!err.to_string().contains("123456789"), "{err}");
    }
}
