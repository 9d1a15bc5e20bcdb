//! A cap on the connections served at once, across every clone of the service
//! (Twisted's `LimitTotalConnectionsFactory`, HAProxy's `maxconn`).
//!
//! Over the cap, a connection is either refused at once
//! ([`Mode::Refuse`](crate::admission::Mode::Refuse), the default), optionally after a
//! short message such as FTP's `421 Too many users`, or not accepted at all until a slot
//! frees ([`Mode::Backpressure`](crate::admission::Mode::Backpressure)): the service is
//! not ready while full, so [`serve`](crate::serve) stops accepting and new connections
//! wait in the kernel's backlog, like Go's `LimitListener`. A layer above that calls
//! the cap only later (the [PROXY protocol layer](crate::proxy_protocol), once the
//! header is read) lets the loop accept meanwhile: a burst larger than the room left is
//! then accepted, and what does not fit refused once called.
//!
//! With an [overload manager](crate::overload), a new connection at the cap is admitted
//! in the place of an idle one, asked to close, and refused only if none is idle. Not in
//! backpressure mode, nor in dry run (which serves it anyway), nor while a cap lowered
//! by a reload is still exceeded.
//!
//! The cap is exact: never more live connections than the cap, but for those an
//! overload manager admits in the place of an idle one being evicted and those dry run
//! serves. On many cores the count is kept per group of threads, each taking a batch
//! of slots from a shared pool and giving them back, so that connections on different
//! cores do not all write one cache line; a group whose slots and the pool are spent
//! takes one from another group's before refusing. [`stats`](ConnectionLimitLayer::stats)
//! adds the groups up without a lock, so while connections come and go, its `live` may
//! be off by the ones that did meanwhile.
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
//!
//! # Testing a layer with `tower-test`
//!
//! A connection-level layer is unit-tested like any tower middleware: a
//! `tower_test::mock` stands for the protected service, and each connection is one end
//! of a `tokio::io::duplex` pipe with a made-up peer address; the test holds the other
//! end.
//!
//! ```
//! use tokio::io::{AsyncReadExt, DuplexStream};
//! use tower_bouncer::{BoxError, Conn, admission::Rejected, limit::ConnectionLimitLayer};
//! use tower_test::mock;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! fn conn(peer: &str) -> (Conn<DuplexStream>, DuplexStream) {
//!     let (server, client) = tokio::io::duplex(1024);
//!     let conn = Conn::new(server, peer.parse().unwrap(), "127.0.0.1:80".parse().unwrap());
//!     (conn, client)
//! }
//!
//! let limit = ConnectionLimitLayer::builder(1)
//!     .refusal_message(&b"ERROR busy\n"[..])
//!     .build()
//!     .unwrap();
//! let (mut service, mut handle) = mock::spawn_layer::<Conn<DuplexStream>, (), _>(limit);
//!
//! // The first connection reaches the protected service, which keeps it open.
//! assert!(service.poll_ready().is_ready());
//! let (first, _first_client) = conn("192.0.2.1:1000");
//! let served = tokio::spawn(service.call(first));
//! let (reached, _answer) = handle.next_request().await.unwrap();
//! assert_eq!(reached.peer_addr(), "192.0.2.1:1000".parse().unwrap());
//!
//! // The second is over the cap: refused with its reason, and told so.
//! assert!(service.poll_ready().is_ready());
//! let (second, mut second_client) = conn("192.0.2.2:2000");
//! let error: BoxError = service.call(second).await.unwrap_err();
//! assert!(error.downcast_ref::<Rejected>().is_some());
//! let mut told = String::new();
//! second_client.read_to_string(&mut told).await.unwrap();
//! assert_eq!(told, "ERROR busy\n");
//! # served.abort();
//! # }
//! ```

mod layer;
mod service;

pub(crate) use layer::Shared;
pub use layer::{ConnectionLimitBuilder, ConnectionLimitLayer, ConnectionLimitStats, GlobalSlot};
pub use service::ConnectionLimit;
