//! A cap on concurrent connections per peer (Twisted's `LimitConnectionsByPeer`, nginx's
//! `limit_conn`), so one noisy peer cannot take the whole server.
//!
//! Peers are told apart by [`PeerKeying`](crate::peer::PeerKeying): IPv4 by /32 and IPv6
//! by /64 by default, IPv4-mapped and NAT64-translated (`64:ff9b::/96`) addresses as
//! IPv4, with exempt networks that skip the limit. Each peer's count is changed in place without a lock, so threads admitting
//! different peers do not slow each other down. The table is bounded: when it holds
//! [`max_tracked_peers`](PeerLimitBuilder::max_tracked_peers) keys, a new peer is let
//! through untracked or refused, as the [`Overflow`](crate::peer::Overflow) policy says.
//! A peer whose last connection has ended stays in the table, at 0, until a sweep every
//! 10 seconds (taking it out at once would cost every connection a write other threads
//! contend for), or until a new peer finds the table full: peers at 0 then make way
//! first. Such a look walks the whole table, so it is made once an eighth of the
//! table's capacity in new peers has been turned away since the last one, or at once if
//! the last one freed that much: a table full of peers with live connections costs each
//! newcomer a share of one walk, not a walk. Until then, and until the next sweep, the
//! policy applies even with some peers at 0. Memory returns to its baseline after a
//! storm.
//!
//! Put it outside the global [`limit`](crate::limit): a peer over its own limit is then
//! refused before it takes any of the global budget.
//!
//! # Example
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_bouncer::{peer::PeerKeying, peer_limit::PeerLimitLayer};
//! # use tower_bouncer::Conn;
//! # let protocol = tower::service_fn(|_: Conn<tokio::net::TcpStream>| async { Ok::<_, std::io::Error>(()) });
//!
//! let keying = PeerKeying::with_prefixes(32, 56)
//!     .unwrap()
//!     .exempt(["10.0.0.0/8".parse().unwrap()])
//!     .unwrap();
//! let per_peer = PeerLimitLayer::builder(20)
//!     .keying(keying)
//!     .max_tracked_peers(100_000)
//!     .build()
//!     .expect("a valid limit");
//! let service = ServiceBuilder::new().layer(per_peer).service(protocol);
//! # let _ = service;
//! ```

mod layer;
mod service;

#[cfg(feature = "admin")]
pub use layer::PeerConnections;
pub use layer::{PeerLimitBuilder, PeerLimitLayer, PeerLimitStats};
pub use service::PeerLimit;
pub use service::PeerSlot;
