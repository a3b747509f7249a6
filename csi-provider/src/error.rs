//! The errors of a mount, and how they reach the caller: each becomes a gRPC status whose
//! message says what is wrong and where (never a secret value or a token). CSI callers swallow
//! or shorten errors, so the servers log them too.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a bad input was found: a parameter, an object of `objects`, a request field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place(pub String);

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<T: Into<String>> From<T> for Place {
    fn from(value: T) -> Self {
        Place(value.into())
    }
}

#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum Error {
    /// The request or the volume's parameters are wrong; nothing was read or written.
    #[error("{place}: {message}")]
    InvalidArgument { place: Place, message: String },
    /// The pod's identity may not read this (refused by the store's rules or by the vault).
    #[error("{place}: {message}")]
    PermissionDenied { place: Place, message: String },
    /// An object is not in the vault.
    #[error("{object} was not found in the vault")]
    NotFound { object: String },
    /// The vault cannot be reached or is throttling; worth retrying.
    #[error("the vault is unavailable: {message}")]
    Unavailable { message: String },
    /// A form this build does not serve yet.
    #[error("{message}")]
    Unimplemented { message: String },
    /// Writing or mounting on this node failed.
    #[error("{message}")]
    Internal { message: String },
}

impl Error {
    pub fn invalid(place: impl Into<Place>, message: impl Into<String>) -> Self {
        Error::InvalidArgument { place: place.into(), message: message.into() }
    }

    pub fn denied(place: impl Into<Place>, message: impl Into<String>) -> Self {
        Error::PermissionDenied { place: place.into(), message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal { message: message.into() }
    }

    /// A backend error for `place` (an object, or the login of a pod's identity).
    pub fn from_backend(place: &str, error: vaultsync_backend::Error) -> Self {
        use vaultsync_backend::Error as B;
        match error {
            B::NotFound { object } => Error::NotFound { object },
            B::Forbidden { object, message } => {
                Error::denied(place, format!("the vault refused to let the pod read {object}: {message}"))
            }
            // Key Vault refuses a disabled object with a 403; the files stay as they were.
            B::Disabled { object } => Error::denied(place, format!("{object} is disabled in the vault")),
            B::Unauthenticated { message } => {
                Error::denied(place, format!("the pod's identity could not authenticate to the vault: {message}"))
            }
            B::InvalidConfig { message } => Error::invalid(place, message),
            B::Throttled { retry_after } => Error::Unavailable {
                message: format!("the vault is throttling requests (retry after {retry_after:?})"),
            },
            B::Unavailable { message } => Error::Unavailable { message },
            B::Protocol { message } => Error::Unavailable { message: format!("unexpected answer: {message}") },
        }
    }

    /// A low-cardinality label for metrics and the provider's `error.code`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::NotFound { .. } => "not_found",
            Error::Unavailable { .. } => "unavailable",
            Error::Unimplemented { .. } => "unimplemented",
            Error::Internal { .. } => "internal",
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            Error::PermissionDenied { .. } => tonic::Status::permission_denied(message),
            Error::NotFound { .. } => tonic::Status::not_found(message),
            Error::Unavailable { .. } => tonic::Status::unavailable(message),
            Error::Unimplemented { .. } => tonic::Status::unimplemented(message),
            Error::Internal { .. } => tonic::Status::internal(message),
        }
    }
}
