//! How the keyed layers tell peers apart: the peer's IP address masked to a prefix,
//! and a list of exempt networks.
//!
//! An attacker with IPv6 usually holds a whole /64, so keying by full address would give
//! them 2^64 identities. [`PeerKeying`] keys IPv4 by /32 and IPv6 by /64 by default
//! (OpenSSH's `PerSourceNetBlockSize`), and counts an IPv4-mapped IPv6 address
//! (`::ffff:192.0.2.1`, a dual-stack listener's IPv4 peer) as the IPv4 address it
//! carries, and so an address in NAT64's well-known prefix (`64:ff9b::192.0.2.1`, RFC
//! 6052: how an IPv6-only server behind a stateless translator sees the IPv4
//! internet), which would otherwise put every IPv4 client in one /64. A
//! network-specific translation prefix is keyed as IPv6, by the IPv6 prefix.
//!
//! An exempt or banned network is read alike: one within the well-known prefix is the
//! IPv4 network it carries (`64:ff9b::192.0.2.0/120` is `192.0.2.0/24`). An IPv6
//! network that holds the whole prefix (`64:ff9b::/96` itself, `64:ff9b::/64`,
//! `::/0`) is refused: it would stand for every IPv4 peer, native ones too (the /96),
//! for `0.0.0.0` (a network no wider than a key) or for none of the translated peers
//! (one wider). Write the IPv4 networks meant instead (`0.0.0.0/0` for all of IPv4),
//! and any native IPv6 networks on their own.

#[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
pub(crate) mod cells;
#[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
pub(crate) mod table;

#[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
pub use table::Overflow;

use std::{
    cell::Cell,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net};

use crate::ConfigError;

/// The builder methods every keyed layer has for its peer table; the builder has
/// `keying`, `max_tracked_peers` and `overflow` fields.
#[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
macro_rules! peer_table_builder_methods {
    () => {
        /// How peers are keyed and which are exempt; /32 and /64, nobody exempt, by
        /// default.
        pub fn keying(mut self, keying: $crate::peer::PeerKeying) -> Self {
            self.keying = keying;
            self
        }

        /// The most peers tracked at once; 65 536 by default.
        pub fn max_tracked_peers(mut self, max: usize) -> Self {
            self.max_tracked_peers = max;
            self
        }

        /// What to do with a new peer when the table is full:
        /// [`Overflow::Admit`](crate::peer::Overflow::Admit) (untracked) by default, or
        /// [`Overflow::Refuse`](crate::peer::Overflow::Refuse).
        pub fn overflow(mut self, overflow: $crate::peer::Overflow) -> Self {
            self.overflow = overflow;
            self
        }
    };
}
#[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
pub(crate) use peer_table_builder_methods;

/// A peer as the keyed layers see it: its address masked to the configured prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    network: IpAddr,
    prefix_len: u8,
}

impl PeerKey {
    /// The network this key stands for, such as `2001:db8:1:2::/64`.
    pub fn network(&self) -> IpNet {
        IpNet::new(self.network, self.prefix_len).expect("the prefix was validated")
    }

    /// A network wider than a key, banned whole, where a list shows keys.
    #[cfg(feature = "login")]
    pub(crate) fn from_network(network: IpNet) -> Self {
        Self {
            network: network.network(),
            prefix_len: network.prefix_len(),
        }
    }

    /// The key as 16 bytes (IPv4 in its mapped form), for compact tables: the prefix is
    /// the same for every key of one family in a table, so it is left out.
    pub(crate) fn bits(&self) -> [u8; 16] {
        match self.network {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Turns peer addresses into [`PeerKey`]s, and knows which peers are exempt.
///
/// Cheap to clone; share one between the keyed layers so they agree on who a peer is.
///
/// # Example
///
/// ```
/// use tower_bouncer::peer::PeerKeying;
///
/// let keying = PeerKeying::with_prefixes(32, 56)
///     .unwrap()
///     .exempt(["10.0.0.0/8".parse().unwrap()])
///     .unwrap();
/// let a = keying.key("2001:db8:0:1::1".parse().unwrap());
/// let b = keying.key("2001:db8:0:2::2".parse().unwrap());
/// assert_eq!(a, b, "one /56");
/// assert!(keying.is_exempt("10.1.2.3".parse().unwrap()));
/// ```
#[derive(Debug, Clone)]
pub struct PeerKeying {
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    /// Shared by clones, so that [`set_exempt`](Self::set_exempt) reaches every layer.
    exempt: Arc<Exempt>,
}

/// The exempt networks of a keying and its clones, replaced whole on a reload.
#[derive(Debug)]
struct Exempt {
    networks: ArcSwap<Box<[IpNet]>>,
    /// [`EMPTY_LIST`] for an empty list, which every keying classifies alike; else
    /// unique to the list in force in the process (unlike the list's address, never
    /// reused once a list is dropped). A reload changes it before and after it
    /// replaces the list, so that a memo is made only under an id that held
    /// throughout: see [`PeerKeying::classify`].
    id: AtomicU64,
}

impl Exempt {
    fn new(networks: Vec<IpNet>) -> Arc<Self> {
        let id = list_id(&networks);
        Arc::new(Self {
            networks: ArcSwap::from_pointee(networks.into_boxed_slice()),
            id: AtomicU64::new(id),
        })
    }
}

/// The id of every empty exempt list: keyings with the same prefixes and no exempt
/// network share their memo, as the layers of a stack built with default keyings do.
const EMPTY_LIST: u64 = 0;

/// The id of a new exempt list.
fn list_id(networks: &[IpNet]) -> u64 {
    if networks.is_empty() {
        EMPTY_LIST
    } else {
        NEXT_EXEMPT_ID.fetch_add(1, Ordering::Relaxed)
    }
}

impl Default for PeerKeying {
    /// IPv4 by /32, IPv6 by /64, nobody exempt.
    fn default() -> Self {
        Self {
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            exempt: Exempt::new(Vec::new()),
        }
    }
}

/// The next exempt list id to give out.
static NEXT_EXEMPT_ID: AtomicU64 = AtomicU64::new(EMPTY_LIST + 1);

/// See [`PeerKeying::id`].
type KeyingId = (u8, u8, u64);

/// A peer that is not exempt: its key, hashed for the tables.
#[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Classified {
    pub(crate) key: PeerKey,
    pub(crate) at: table::Located,
}

impl PeerKeying {
    /// Keys IPv4 peers by an `ipv4_prefix` and IPv6 peers by an `ipv6_prefix`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::PrefixTooLong`] beyond /32 or /128.
    pub fn with_prefixes(ipv4_prefix: u8, ipv6_prefix: u8) -> Result<Self, ConfigError> {
        if ipv4_prefix > 32 {
            return Err(ConfigError::PrefixTooLong {
                family: "IPv4",
                len: ipv4_prefix,
                max: 32,
            });
        }
        if ipv6_prefix > 128 {
            return Err(ConfigError::PrefixTooLong {
                family: "IPv6",
                len: ipv6_prefix,
                max: 128,
            });
        }
        Ok(Self {
            ipv4_prefix,
            ipv6_prefix,
            ..Self::default()
        })
    }

    /// Adds networks whose peers skip the keyed limits, rate limits and bans (health
    /// checkers, internal networks). The result is a keying of its own: `self`'s other
    /// clones keep their list. A network written in its IPv4-mapped form, as a
    /// dual-stack listener shows IPv4 peers (`::ffff:10.0.0.0/104`), is the IPv4 network
    /// it carries (`10.0.0.0/8`), as bans read it; so is one within NAT64's well-known
    /// prefix (`64:ff9b::10.0.0.0/104`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::HoldsNat64Prefix`] for an IPv6 network that holds all of NAT64's
    /// well-known prefix (see the [module docs](self)).
    pub fn exempt(
        mut self,
        networks: impl IntoIterator<Item = IpNet>,
    ) -> Result<Self, ConfigError> {
        let mut all = self.exempt.networks.load().to_vec();
        for network in networks {
            all.push(keyed_network(network)?);
        }
        self.exempt = Exempt::new(all);
        Ok(self)
    }

    /// Replaces the exempt networks of this keying and of every clone of it, so of every
    /// layer it was given to: a reload without a restart. New connections are classified
    /// under the new list; what the layers hold for peers now exempt (live slots,
    /// offences, bans) stays until it runs out or is lifted. Networks are read as
    /// [`exempt`](Self::exempt) reads them.
    ///
    /// ```
    /// use tower_bouncer::peer::PeerKeying;
    ///
    /// let keying = PeerKeying::default();
    /// let given_to_a_layer = keying.clone();
    /// keying.set_exempt(["10.0.0.0/8".parse().unwrap()]).unwrap();
    /// assert!(given_to_a_layer.is_exempt("10.1.2.3".parse().unwrap()));
    /// ```
    ///
    /// # Errors
    ///
    /// As [`exempt`](Self::exempt); the list in force is then kept.
    pub fn set_exempt(&self, networks: impl IntoIterator<Item = IpNet>) -> Result<(), ConfigError> {
        let networks = networks
            .into_iter()
            .map(keyed_network)
            .collect::<Result<Vec<IpNet>, ConfigError>>()?;
        // An id no list has while the list changes; then the new list's.
        let changing = NEXT_EXEMPT_ID.fetch_add(1, Ordering::Relaxed);
        self.exempt.id.store(changing, Ordering::Release);
        let id = list_id(&networks);
        self.exempt
            .networks
            .store(Arc::new(networks.into_boxed_slice()));
        self.exempt.id.store(id, Ordering::Release);
        Ok(())
    }

    /// The exempt networks in force.
    pub fn exempt_networks(&self) -> Vec<IpNet> {
        self.exempt.networks.load().to_vec()
    }

    /// The key of a peer address; an IPv4-mapped address, or one in NAT64's well-known
    /// prefix (`64:ff9b::/96`), is keyed as the IPv4 address it carries.
    pub fn key(&self, ip: IpAddr) -> PeerKey {
        match canonical_peer(ip) {
            IpAddr::V4(v4) => PeerKey {
                network: IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask32(self.ipv4_prefix))),
                prefix_len: self.ipv4_prefix,
            },
            IpAddr::V6(v6) => PeerKey {
                network: IpAddr::V6(Ipv6Addr::from_bits(
                    v6.to_bits() & mask128(self.ipv6_prefix),
                )),
                prefix_len: self.ipv6_prefix,
            },
        }
    }

    /// Whether `network` spans more than one key.
    #[cfg(feature = "login")]
    pub(crate) fn is_wider_than_a_key(&self, network: &IpNet) -> bool {
        let key_prefix = match network {
            IpNet::V4(_) => self.ipv4_prefix,
            IpNet::V6(_) => self.ipv6_prefix,
        };
        network.prefix_len() < key_prefix
    }

    /// Whether a peer address is in an exempt network, read as [`key`](Self::key) reads
    /// it.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = canonical_peer(ip);
        self.exempt
            .networks
            .load()
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// The key a table stored as [`PeerKey::bits`], given that this keying made it.
    pub(crate) fn key_from_bits(&self, bits: [u8; 16]) -> PeerKey {
        let v6 = Ipv6Addr::from(bits);
        match v6.to_ipv4_mapped() {
            Some(v4) => PeerKey {
                network: IpAddr::V4(v4),
                prefix_len: self.ipv4_prefix,
            },
            None => PeerKey {
                network: IpAddr::V6(v6),
                prefix_len: self.ipv6_prefix,
            },
        }
    }

    /// The key of a peer, hashed, or `None` if it is exempt.
    ///
    /// Every keyed layer asks this of each connection; the last answer is kept per
    /// thread, so the layers of one stack classify and hash a connection's peer once.
    #[cfg(any(feature = "peer-limit", feature = "rate-limit", feature = "login"))]
    pub(crate) fn classify(&self, ip: IpAddr) -> Option<Classified> {
        type Memo = Option<(KeyingId, IpAddr, Option<Classified>)>;
        thread_local! {
            static LAST: Cell<Memo> = const { Cell::new(None) };
        }
        let id = self.id();
        LAST.with(|last| {
            if let Some((seen_id, seen, answer)) = last.get()
                && seen_id == id
                && seen == ip
            {
                return answer;
            }
            // An empty list in force, the usual case, needs no look at the list.
            let answer = (id.2 == EMPTY_LIST || !self.is_exempt(ip)).then(|| {
                let key = self.key(ip);
                Classified {
                    key,
                    at: table::Located::new(&key),
                }
            });
            // Kept only if no reload changed the list meanwhile.
            std::sync::atomic::fence(Ordering::Acquire);
            if self.id() == id {
                last.set(Some((id, ip, answer)));
            }
            answer
        })
    }

    /// What makes two keyings classify alike: their prefixes and their exempt list in
    /// force (the same list when clones share it, or both empty).
    fn id(&self) -> KeyingId {
        (
            self.ipv4_prefix,
            self.ipv6_prefix,
            self.exempt.id.load(Ordering::Acquire),
        )
    }
}

/// IPv4-mapped addresses, `::ffff:0:0/96`, and NAT64's well-known prefix,
/// `64:ff9b::/96` (RFC 6052), whose last 32 bits are an IPv4 address.
const IPV4_MAPPED: u128 = 0xffff << 32;
const NAT64_WELL_KNOWN: u128 = 0x0064_ff9b << 96;
const IPV4_BITS: u128 = 0xffff_ffff;

/// The IPv4 address `v6` carries, as a peer: IPv4-mapped, or translated into NAT64's
/// well-known prefix.
#[inline]
fn carried_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = v6.to_bits();
    matches!(bits & !IPV4_BITS, IPV4_MAPPED | NAT64_WELL_KNOWN)
        .then(|| Ipv4Addr::from_bits(bits as u32))
}

/// A peer address as [`PeerKeying::key`] counts it: one that carries an IPv4 address
/// is that address.
#[inline]
fn canonical_peer(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => carried_ipv4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Whether `ip` is in NAT64's well-known prefix: an IPv4 client, keyed by the IPv4
/// address it carries, whose packets come from the translator in this IPv6 form.
#[cfg(all(feature = "kernel-bans", target_os = "linux"))]
pub(crate) fn is_nat64_translated(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_bits() & !IPV4_BITS == NAT64_WELL_KNOWN)
}

/// `network` without host bits, and an IPv6 network of /96 or longer that carries IPv4
/// addresses as the IPv4 network it carries, as [`PeerKeying::key`] counts its
/// addresses: IPv4-mapped, or in NAT64's well-known prefix.
pub(crate) fn canonical_network(network: IpNet) -> IpNet {
    ipv4_network_within(network, carried_ipv4)
}

/// An exempt or banned `network` as [`canonical_network`] reads it; refused if it is
/// an IPv6 network that holds all of NAT64's well-known prefix, whose peers are keyed
/// by the IPv4 addresses they carry: `64:ff9b::/96` would read as every IPv4 peer
/// (`0.0.0.0/0`, native ones too), and a wider one holds none of their keys, or reads
/// as `0.0.0.0` where it is taken for the key of its first address.
pub(crate) fn keyed_network(network: IpNet) -> Result<IpNet, ConfigError> {
    match network {
        IpNet::V6(v6)
            if v6.prefix_len() <= 96 && v6.contains(&Ipv6Addr::from_bits(NAT64_WELL_KNOWN)) =>
        {
            Err(ConfigError::HoldsNat64Prefix {
                network: network.trunc(),
            })
        }
        _ => Ok(canonical_network(network)),
    }
}

/// `network` without host bits, and an IPv4-mapped IPv6 network as the IPv4 network it
/// carries, but not one in NAT64's well-known prefix: for networks matched against the
/// address a socket gives (the trusted balancers), where a translated address is not
/// taken for the IPv4 host it names.
#[cfg(any(test, feature = "proxy-protocol"))]
pub(crate) fn mapped_network_as_ipv4(network: IpNet) -> IpNet {
    ipv4_network_within(network, |v6| v6.to_ipv4_mapped())
}

fn ipv4_network_within(network: IpNet, carried: impl Fn(Ipv6Addr) -> Option<Ipv4Addr>) -> IpNet {
    let network = network.trunc();
    if let IpNet::V6(v6) = network
        && let Some(prefix) = v6.prefix_len().checked_sub(96)
        && let Some(v4) = carried(v6.network())
        && let Ok(v4) = Ipv4Net::new(v4, prefix)
    {
        return IpNet::V4(v4);
    }
    network
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_in_one_64_share_a_key_and_the_next_64_does_not() {
        let keying = PeerKeying::default();
        let a = keying.key(ip("2001:db8:1:2::1"));
        let b = keying.key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        let c = keying.key(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn ipv4_is_keyed_by_the_full_address_by_default() {
        let keying = PeerKeying::default();
        assert_ne!(keying.key(ip("192.0.2.1")), keying.key(ip("192.0.2.2")));
        assert_eq!(keying.key(ip("192.0.2.1")).to_string(), "192.0.2.1/32");
    }

    #[test]
    fn a_mapped_ipv4_address_is_the_ipv4_address() {
        let keying = PeerKeying::default();
        assert_eq!(
            keying.key(ip("::ffff:192.0.2.1")),
            keying.key(ip("192.0.2.1"))
        );
        let keying = keying
            .exempt([IpNet::V4("192.0.2.0/24".parse().unwrap())])
            .unwrap();
        assert!(keying.is_exempt(ip("::ffff:192.0.2.200")));
    }

    #[test]
    fn prefixes_are_configurable_including_the_extremes() {
        let keying = PeerKeying::with_prefixes(24, 48).unwrap();
        assert_eq!(keying.key(ip("192.0.2.77")).to_string(), "192.0.2.0/24");
        assert_eq!(
            keying.key(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1::/48"
        );

        let everyone = PeerKeying::with_prefixes(0, 0).unwrap();
        assert_eq!(
            everyone.key(ip("192.0.2.1")),
            everyone.key(ip("198.51.100.1"))
        );
        let exact = PeerKeying::with_prefixes(32, 128).unwrap();
        assert_ne!(exact.key(ip("2001:db8::1")), exact.key(ip("2001:db8::2")));
    }

    #[test]
    fn prefixes_longer_than_the_family_are_refused() {
        assert_eq!(
            PeerKeying::with_prefixes(33, 64).unwrap_err(),
            ConfigError::PrefixTooLong {
                family: "IPv4",
                len: 33,
                max: 32
            }
        );
        assert!(PeerKeying::with_prefixes(32, 129).is_err());
    }

    #[test]
    fn exempt_networks_match_by_prefix() {
        let keying = PeerKeying::default()
            .exempt([
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8:ffff::/48".parse().unwrap(),
            ])
            .unwrap();
        assert!(keying.is_exempt(ip("10.200.0.1")));
        assert!(keying.is_exempt(ip("2001:db8:ffff:1::9")));
        assert!(!keying.is_exempt(ip("11.0.0.1")));
        assert!(keying.classify(ip("10.0.0.1")).is_none());
        assert_eq!(
            keying.classify(ip("11.0.0.1")).unwrap().key,
            keying.key(ip("11.0.0.1"))
        );
        // The memo tells keyings apart.
        let wider = PeerKeying::with_prefixes(8, 64).unwrap();
        assert_eq!(
            wider.classify(ip("11.0.0.1")).unwrap().key.to_string(),
            "11.0.0.0/8"
        );
    }

    #[test]
    fn the_memo_never_answers_for_a_dropped_keying_whose_list_took_the_same_address() {
        let peer = ip("10.0.0.1");
        for _ in 0..100 {
            let old = PeerKeying::default()
                .exempt(["10.0.0.0/8".parse().unwrap()])
                .unwrap();
            assert!(old.classify(peer).is_none());
            let old_list = Arc::as_ptr(&old.exempt);
            drop(old);
            let new = PeerKeying::default()
                .exempt(["192.0.2.0/24".parse().unwrap()])
                .unwrap();
            assert!(
                new.classify(peer).is_some(),
                "the memo answered for the dropped keying"
            );
            if std::ptr::eq(Arc::as_ptr(&new.exempt), old_list) {
                return;
            }
        }
        // The allocator never gave the address back: the next test still shows that
        // the memo cannot mistake one list for another.
    }

    #[test]
    fn a_new_exempt_list_reaches_every_clone_and_the_memo_follows_it() {
        let keying = PeerKeying::default();
        let layer = keying.clone();
        let peer = ip("10.0.0.1");
        assert!(layer.classify(peer).is_some());
        keying.set_exempt(["10.0.0.0/8".parse().unwrap()]).unwrap();
        assert!(
            layer.classify(peer).is_none(),
            "the memo answered for the old list"
        );
        assert!(layer.is_exempt(peer));
        keying.set_exempt([]).unwrap();
        assert!(layer.classify(peer).is_some());
        // A keying built from it with `exempt` is apart: the reload does not reach it.
        let apart = keying
            .clone()
            .exempt(["192.0.2.0/24".parse().unwrap()])
            .unwrap();
        keying.set_exempt(["10.0.0.0/8".parse().unwrap()]).unwrap();
        assert!(apart.classify(peer).is_some());
        assert_eq!(
            apart.exempt_networks(),
            ["192.0.2.0/24".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn keyings_without_exempt_networks_share_the_memo() {
        // The layers of a stack each built with a default keying classify a peer once.
        assert_eq!(PeerKeying::default().id(), PeerKeying::default().id());
        let keying = PeerKeying::default();
        keying.set_exempt(["10.0.0.0/8".parse().unwrap()]).unwrap();
        assert_ne!(keying.id(), PeerKeying::default().id());
        keying.set_exempt([]).unwrap();
        assert_eq!(keying.id(), PeerKeying::default().id());
    }

    #[test]
    fn clones_share_an_identity_and_keyings_made_apart_never_do() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        let keying = PeerKeying::default().exempt([net]).unwrap();
        assert_eq!(keying.id(), keying.clone().id());
        // Each dropped before the next is made, so the lists may share an address.
        let ids: Vec<_> = (0..10)
            .map(|_| PeerKeying::default().exempt([net]).unwrap().id())
            .collect();
        for (n, id) in ids.iter().enumerate() {
            assert!(!ids[..n].contains(id), "{ids:?}");
        }
    }

    #[test]
    fn a_key_comes_back_from_its_compact_form() {
        let keying = PeerKeying::with_prefixes(24, 56).unwrap();
        for address in ["192.0.2.77", "2001:db8:1:2::1", "::1", "0.0.0.0"] {
            let key = keying.key(ip(address));
            assert_eq!(keying.key_from_bits(key.bits()), key, "{address}");
        }
    }

    #[test]
    fn a_mapped_network_is_the_ipv4_network() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        assert_eq!(
            canonical_network(net("::ffff:192.0.2.77/120")),
            net("192.0.2.0/24")
        );
        assert_eq!(
            canonical_network(net("2001:db8::1/32")),
            net("2001:db8::/32")
        );
        assert_eq!(canonical_network(net("::/0")), net("::/0"));
    }

    /// On a dual-stack listener every IPv4 peer shows as `::ffff:a.b.c.d`, so an operator
    /// may well write the exempt network that way; the bans and the PROXY protocol's
    /// trusted networks read that form as the IPv4 network, and so must the exemption.
    #[test]
    fn an_exempt_network_in_its_mapped_form_exempts_its_ipv4_peers() {
        let mapped: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        let keying = PeerKeying::default().exempt([mapped]).unwrap();
        assert!(keying.is_exempt(ip("::ffff:10.1.2.3")), "mapped peer");
        assert!(keying.is_exempt(ip("10.1.2.3")), "IPv4 peer");
        assert!(keying.classify(ip("::ffff:10.1.2.3")).is_none());
        let reloaded = PeerKeying::with_prefixes(32, 64).unwrap();
        reloaded.set_exempt([mapped]).unwrap();
        assert!(reloaded.is_exempt(ip("10.1.2.3")), "after a reload");
    }

    /// Behind a stateless translator (SIIT, RFC 6052's well-known prefix, as an
    /// IPv6-only server behind NAT46 or SIIT-DC sees the IPv4 internet), every IPv4
    /// client is `64:ff9b::a.b.c.d`: one /64. Keyed as any IPv6 peer, the whole IPv4
    /// internet would be one peer: one client's per-peer cap, rate and bans everyone's.
    /// Like the mapped form, the translated form is keyed as the IPv4 address it
    /// carries, and exempt and banned networks read it alike.
    #[test]
    fn ipv4_clients_behind_the_well_known_nat64_prefix_are_told_apart() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        let keying = PeerKeying::default();
        let a = keying.key(ip("64:ff9b::192.0.2.1"));
        let b = keying.key(ip("64:ff9b::198.51.100.7"));
        assert_ne!(a, b, "two IPv4 clients share the key {a}");
        assert_eq!(a, keying.key(ip("192.0.2.1")));
        assert_eq!(keying.key_from_bits(a.bits()), a);

        let keying = keying.exempt([net("192.0.2.0/24")]).unwrap();
        assert!(keying.is_exempt(ip("64:ff9b::192.0.2.200")));
        assert_eq!(
            canonical_network(net("64:ff9b::192.0.2.0/120")),
            net("192.0.2.0/24")
        );
        // Trusted balancers are matched as the socket gives them.
        assert_eq!(
            mapped_network_as_ipv4(net("64:ff9b::192.0.2.0/120")),
            net("64:ff9b::192.0.2.0/120")
        );
        // A network-specific prefix, or the local-use 64:ff9b:1::/48, is IPv6.
        for other in ["2001:db8:64::c000:201", "64:ff9b:1::c000:201"] {
            assert_eq!(keying.key(ip(other)).network().prefix_len(), 64, "{other}");
        }
    }

    /// An exempt IPv6 network that holds all of NAT64's well-known prefix would stand
    /// for every IPv4 peer, native ones too (`64:ff9b::/96`, read as `0.0.0.0/0`), or for
    /// none of the translated ones (`64:ff9b::/64`, `::/0`), whose keys are IPv4: it is
    /// refused, by name, and a reload that names one keeps the list in force.
    #[test]
    fn an_exempt_network_holding_nat64s_whole_prefix_is_refused() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        for network in ["64:ff9b::/96", "64:ff9b::/64", "64:ff9b::/48", "::/0"] {
            assert_eq!(
                PeerKeying::default().exempt([net(network)]).err(),
                Some(ConfigError::HoldsNat64Prefix {
                    network: net(network)
                }),
                "{network}"
            );
        }
        let keying = PeerKeying::default()
            .exempt([net("64:ff9b::192.0.2.0/120")])
            .unwrap();
        assert!(keying.is_exempt(ip("64:ff9b::192.0.2.7")));
        assert!(keying.set_exempt([net("64:ff9b::/96")]).is_err());
        assert!(keying.is_exempt(ip("192.0.2.7")));
        assert!(
            !keying.is_exempt(ip("198.51.100.1")),
            "a native IPv4 peer exempt"
        );
    }

    #[test]
    fn the_compact_form_keeps_families_apart() {
        let keying = PeerKeying::default();
        assert_ne!(
            keying.key(ip("0.0.0.1")).bits(),
            keying.key(ip("::1")).bits()
        );
    }
}
