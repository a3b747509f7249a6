//! Backend errors. Messages name objects and causes, never secret values.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum Error {
    #[error("{object} was not found in the vault")]
    NotFound { object: String },
    #[error("reading {object} is forbidden: {message}")]
    Forbidden { object: String, message: String },
    /// The vault refuses to read a disabled object (Key Vault: 403 with an inner code such as `SecretDisabled`).
    #[error("{object} is disabled in the vault")]
    Disabled { object: String },
    #[error("the vault is throttling requests (retry after {retry_after:?})")]
    Throttled { retry_after: Option<Duration> },
    #[error("the vault is unavailable: {message}")]
    Unavailable { message: String },
    #[error("authentication failed: {message}")]
    Unauthenticated { message: String },
    #[error("invalid backend configuration: {message}")]
    InvalidConfig { message: String },
    #[error("unexpected answer from the vault: {message}")]
    Protocol { message: String },
}

impl Error {
    /// The condition reason a resource reports for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "NotFound",
            Error::Forbidden { .. } => "Forbidden",
            Error::Disabled { .. } => "Disabled",
            Error::Throttled { .. } => "Throttled",
            Error::Unavailable { .. } => "BackendUnavailable",
            Error::Unauthenticated { .. } => "AuthenticationFailed",
            Error::InvalidConfig { .. } => "InvalidSpec",
            Error::Protocol { .. } => "BackendError",
        }
    }

    /// A low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::Forbidden { .. } => "forbidden",
            Error::Disabled { .. } => "disabled",
            Error::Throttled { .. } => "throttled",
            Error::Unavailable { .. } => "unavailable",
            Error::Unauthenticated { .. } => "unauthenticated",
            Error::InvalidConfig { .. } => "invalid_config",
            Error::Protocol { .. } => "protocol",
        }
    }
}
