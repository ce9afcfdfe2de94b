//! [`SpecError`]: why a campaign spec is not acceptable.
//!
//! A leaf module, so the campaign kinds ([`crate::kinds`]) and the spec ([`crate::spec`]) both
//! report field errors the same way without importing each other.

/// Why a campaign spec is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field is out of range; the message says which and what is allowed.
    #[error("campaign spec field `{field}`: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// A [`SpecError::Field`].
pub(crate) fn field(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Field {
        field,
        reason: reason.into(),
    }
}
