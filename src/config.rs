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
    /// An exempt or banned IPv6 network that holds all of NAT64's well-known prefix,
    /// `64:ff9b::/96`, whose peers are keyed by the IPv4 addresses they carry (see
    /// [`peer`](crate::peer)).
    HoldsNat64Prefix {
        /// The network, without host bits.
        network: ipnet::IpNet,
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
            ConfigError::HoldsNat64Prefix { network } => write!(
                f,
                "{network} holds all of NAT64's well-known prefix 64:ff9b::/96, whose peers \
                 are keyed by the IPv4 addresses they carry: write the IPv4 networks meant \
                 instead (0.0.0.0/0 for every IPv4 peer, native ones too; \
                 64:ff9b::192.0.2.0/120 is 192.0.2.0/24), and any native IPv6 networks on \
                 their own"
            ),
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
