//! A cap on the connections served at once, across every clone of the service
//! (Twisted's `LimitTotalConnectionsFactory`, HAProxy's `maxconn`).
//!
//! Over the cap, a connection is either refused at once
//! ([`Mode::Refuse`](crate::admission::Mode::Refuse), the default), optionally after a
//! short message such as FTP's `421 Too many users`, or not accepted at all until a slot
//! frees ([`Mode::Backpressure`](crate::admission::Mode::Backpressure)): the service is
//! not ready while full, so [`serve`](crate::serve) stops accepting and new connections
//! wait in the kernel's backlog, like Go's `LimitListener`.
//!
//! With an [overload manager](crate::overload), a new connection at the cap is admitted
//! in the place of an idle one, asked to close, and refused only if none is idle.
//!
//! A connection's slot lives in its response future and is released when that future
//! ends or is dropped: completion, error, panic, cancellation. A service that was polled
//! ready but never called holds nothing.
//!
//! # Example
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_bouncer::limit::ConnectionLimitLayer;
//! # use tower_bouncer::Conn;
//! # let protocol = tower::service_fn(|_: Conn<tokio::net::TcpStream>| async { Ok::<_, std::io::Error>(()) });
//!
//! let limit = ConnectionLimitLayer::builder(10_000)
//!     .refusal_message(&b"ERROR busy\n"[..])
//!     .build()
//!     .expect("a valid limit");
//! let stats = limit.clone();
//! let service = ServiceBuilder::new().layer(limit).service(protocol);
//! # let _ = service;
//! println!("{} live connections", stats.stats().live);
//! ```

mod layer;
mod service;

pub(crate) use layer::Shared;
pub use layer::{ConnectionLimitBuilder, ConnectionLimitLayer, ConnectionLimitStats};
pub use service::ConnectionLimit;
pub(crate) use service::GlobalSlot;
