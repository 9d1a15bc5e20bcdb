use std::{error::Error, fmt};

/// Whether `token` can be sent as `Authorization: Bearer TOKEN`, as the admin page's
/// token must: visible ASCII characters, at least one.
#[cfg(any(feature = "admin", feature = "bouncer"))]
pub(crate) fn is_bearer_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|byte| byte.is_ascii_graphic())
}

/// A configuration that cannot work, refused when a layer is built rather than
/// discovered under load.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A limit, capacity or rate that must be at least 1 was 0.
    Zero {
        /// The setting, as its builder method is named.
        setting: &'static str,
    },
    /// A prefix length longer than the address family allows.
    PrefixTooLong {
        /// `"IPv4"` or `"IPv6"`.
        family: &'static str,
        /// The length given.
        len: u8,
        /// The longest allowed: 32 or 128.
        max: u8,
    },
    /// A layer was built with nothing to enforce.
    Empty {
        /// What it needs at least one of.
        needs: &'static str,
    },
    /// Settings that contradict each other.
    Inconsistent {
        /// What is wrong.
        reason: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Zero { setting } => write!(f, "`{setting}` must be at least 1"),
            ConfigError::PrefixTooLong { family, len, max } => {
                write!(f, "an {family} prefix is at most /{max}, not /{len}")
            }
            ConfigError::Empty { needs } => write!(f, "nothing to enforce: set {needs}"),
            ConfigError::Inconsistent { reason } => f.write_str(reason),
        }
    }
}

impl Error for ConfigError {}

/// `value`, or [`ConfigError::Zero`] naming `setting`.
pub(crate) fn nonzero<T: Default + PartialEq>(
    value: T,
    setting: &'static str,
) -> Result<T, ConfigError> {
    if value == T::default() {
        Err(ConfigError::Zero { setting })
    } else {
        Ok(value)
    }
}
