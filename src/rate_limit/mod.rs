//! New connections per second, per peer and for the whole server, on
//! [`governor`]'s GCRA.
//!
//! A [`Rate`] says how many connections a period allows and how many may come at once
//! (the burst): `Rate::per_second(10).burst(20)`, or any [`governor::Quota`]. Over the
//! per-peer rate a connection is refused at once, and the [`Rejected`] error says when
//! the peer may retry. Over the global rate it is refused too, or, with
//! [`global_backpressure`](RateLimitBuilder::global_backpressure), not accepted until the
//! rate allows it.
//!
//! On many cores, the global rate is taken from its bucket a batch of tokens at a time
//! per group of threads, so that connections on different cores do not all write one
//! cache line. The price is a bounded slack: a burst may exceed the global burst by the
//! tokens taken but not spent yet, at most an eighth of the burst (none for a burst
//! under 128 on up to 8 threads); over time the rate is exact. BENCHMARKS.md has the
//! figures.
//!
//! A reload ([`set_per_peer`](RateLimitLayer::set_per_peer),
//! [`set_global`](RateLimitLayer::set_global)) keeps what each bucket has spent,
//! counted in connections at the new rate: it hands out no fresh burst.
//!
//! Exempt peers skip both rates. A connection refused for its peer's rate spends none
//! of the global rate, and one the global rate refuses spends none of its peer's: the
//! peer's bucket is left as it was, and a peer seen first then takes no place in the
//! table, so that a crowd that empties the global rate neither uses up the rates of the
//! peers it crowds out nor fills the table with peers never served. With global
//! backpressure the accept loop still waits for the global rate before every accept,
//! since it cannot know the next peer before accepting it; but only a connection that
//! the global rate admits spends it, so neither exempt peers nor a peer refused for its
//! own rate use up everyone's budget.
//!
//! The per-peer state is a bounded table like the [per-peer limit](crate::peer_limit)'s,
//! and a peer whose bucket has refilled is forgotten by a sweep the layer runs on its
//! own, on a runtime with timers (see [Runtime](crate#runtime)): nothing to spawn. It
//! runs about as often as the rate in force takes to refill a bucket, from once a
//! second to once a minute, and follows a reloaded rate from the next second.
//!
//! Time is read from [`TokioClock`], which follows `tokio::time::pause`, so tests run on
//! paused time; nothing here sleeps on real time.
//!
//! [`Rejected`]: crate::admission::Rejected
//!
//! # Example
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_bouncer::rate_limit::{Rate, RateLimitLayer};
//! # use tower_bouncer::Conn;
//! # let protocol = tower::service_fn(|_: Conn<tokio::net::TcpStream>| async { Ok::<_, std::io::Error>(()) });
//!
//! let rate = RateLimitLayer::builder()
//!     .per_peer(Rate::per_second(5).burst(20))
//!     .global(Rate::per_second(2_000))
//!     .build()
//!     .expect("a valid rate");
//! let service = ServiceBuilder::new().layer(rate).service(protocol);
//! # let _ = service;
//! ```

mod clock;
mod global;
mod layer;
mod service;
mod store;

pub use clock::TokioClock;
pub use layer::{Rate, RateLimitBuilder, RateLimitLayer, RateLimitStats};
pub use service::RateLimit;
