//! What a connection's stream has done, and when its deadlines fall.
//!
//! [`TimedIo`](super::TimedIo) counts the bytes it moves here on every read and write: a
//! relaxed load and store, no clock read. The connection's timer reads the counts only
//! when it fires, and works out from them whether a deadline has passed or when to look
//! again. That is the lazy deadline: one timer per connection, re-armed when it fires,
//! never per read.
//!
//! For the idle timeout the timer samples the counts: it looks at least every eighth of
//! the timeout, and a connection whose counts have not moved since a look is idle since
//! that look. So an idle connection is closed between S and S + S/8 after its last byte,
//! for a read that costs nanoseconds. Requests are timed from the clock, read once when
//! each starts; for a request that starts while the connection's task polls the
//! protocol (its own reads), at the end of that poll, so that a request that also ends
//! there (an HTTP/1 head that arrives whole) reads no clock at all. A new request makes
//! the timer look only if its deadline could fall before the timer's next look.
//!
//! A protocol that knows when it is busy declares its exchanges (the HTTP adapter: a
//! request from its dispatch until its response is sent). Idle then means no exchange
//! open for S, whatever bytes move: HTTP/2 PINGs and window updates keep nothing alive.
//! Once every open exchange has been answered and only responses stream (a gRPC
//! server stream, server-sent events, a long download), the data moved judges: the
//! application has nothing left to do but send, and a stream that sends nothing for S
//! is as idle as a silent socket. On HTTP/2 that is DATA frames' payload either way (a
//! client's data to an answered stream, as a gRPC client stream sends, moves it; data
//! to a stream that is over, which the server drops, does not), so that PINGs keep no
//! quiet stream alive; otherwise every byte. An HTTP/2 connection idle with no stream
//! open hears a goodbye (GOAWAY, on the signal the protocol gives) before it is cut.
//!
//! Output the client holds back (a full socket buffer, or HTTP/2 flow control) is the
//! slow reader's attack: while output waits, the client must take at least the minimum
//! send rate over each idle period, or the connection is idle.
//!
//! Under an overload manager, every deadline but the lifetime is scaled by the pressure
//! at each look, and the timer looks at least every eighth of each pending deadline, so
//! that a rise in pressure shortens a deadline within that. What the timer saw of
//! idleness at its last look is published for the manager, which evicts idle
//! connections.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering, fence},
    },
    time::Duration,
};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use super::{Shared, TimeoutError};
use crate::{
    deadline::{deadline_from, scaled},
    striped::Handle,
};

/// No request in progress.
const IDLE: u64 = u64::MAX;
/// A request started while the timer's task was polling the protocol: that task stamps
/// its start when the poll ends, so that a request that starts and finishes within one
/// poll (an HTTP/1 head that arrives whole) costs no clock read.
const PENDING: u64 = u64::MAX - 1;
/// `Activity::next_read`: the next read starts no request.
const READ_STARTS_NOTHING: u8 = 0;
/// `Activity::next_read`: the next read starts a request.
const READ_STARTS_REQUEST: u8 = 1;
/// `Activity::next_read`, on HTTP/1 between requests: the next read starts a request
/// unless it brings only empty lines (CR and LF), which a client may send after a
/// request (RFC 9112 §2.2) and hyper skips.
const READ_STARTS_REQUEST_PAST_EMPTY_LINES: u8 = 2;
/// `Activity::next_read`, on HTTP/1 while an exchange whose head is in is open: the
/// next read that brings more than empty lines brings the next request, timed from the
/// exchange's end (see `Activity::head_in`).
const READ_NOTES_NEXT_REQUEST: u8 = 3;
/// No output waits on the client with nothing taken: see `Activity::stalled_since`.
const NOT_STALLED: u64 = u64::MAX;
/// `Activity::exchanges`' three counts, packed: exchanges open (the low 21 bits), of
/// those the answered (the next 21), and exchanges ever opened (the high 22, wrapping:
/// enough to tell that some opened between two of the timer's looks).
const OPEN: u64 = 1;
const ANSWERED: u64 = 1 << 21;
const OPENED: u64 = 1 << 42;
const COUNT: u64 = ANSWERED - 1;
/// The idle timeout is sampled this many times over its length.
const IDLE_SAMPLES: u32 = 8;
/// Bytes a second a client holding output back must take, unless configured.
pub(crate) const DEFAULT_MIN_SEND_RATE: u64 = 256;

/// The deadlines watched on one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deadlines {
    pub(crate) first_byte: Option<Duration>,
    pub(crate) idle: Option<IdleLimit>,
    pub(crate) request: Option<RequestLimit>,
    pub(crate) lifetime: Option<Lifetime>,
}

/// How long a connection may do nothing useful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdleLimit {
    pub(crate) after: Duration,
    /// Bytes a second a client must take while it holds output back.
    pub(crate) min_send_rate: u64,
}

/// How long a request may take once its first byte has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestLimit {
    pub(crate) base: Duration,
    /// Apache's `MinRate`: each `bytes_per_second` bytes received extends the limit by
    /// one second, up to `max`. Received is the request's own: its bytes read on a
    /// connection that carries one request at a time, its stream's DATA on HTTP/2.
    pub(crate) min_rate: Option<MinRate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MinRate {
    pub(crate) bytes_per_second: u64,
    pub(crate) max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) after: Duration,
    pub(crate) grace: Duration,
}

impl Deadlines {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// These deadlines, with `other`'s where these have none.
    pub(crate) fn or(self, other: Deadlines) -> Deadlines {
        Deadlines {
            first_byte: self.first_byte.or(other.first_byte),
            idle: self.idle.or(other.idle),
            request: self.request.or(other.request),
            lifetime: self.lifetime.or(other.lifetime),
        }
    }

    /// Every deadline but the lifetime multiplied by `factor`, at most 1.
    pub(crate) fn scaled(self, factor: f64) -> Deadlines {
        if factor >= 1.0 {
            return self;
        }
        let scale = |limit| scaled(limit, factor);
        Deadlines {
            first_byte: self.first_byte.map(scale),
            idle: self.idle.map(|idle| IdleLimit {
                after: scale(idle.after),
                ..idle
            }),
            request: self.request.map(|request| RequestLimit {
                base: scale(request.base),
                min_rate: request.min_rate.map(|rate| MinRate {
                    max: scale(rate.max),
                    ..rate
                }),
            }),
            lifetime: self.lifetime,
        }
    }
}

impl RequestLimit {
    /// How long a request may take that has brought `received` bytes: the base,
    /// extended by those bytes at the minimum rate, up to the maximum.
    pub(crate) fn allowance(&self, received: u64) -> Duration {
        let Some(rate) = self.min_rate else {
            return self.base;
        };
        let earned = Duration::try_from_secs_f64(received as f64 / rate.bytes_per_second as f64)
            .unwrap_or(Duration::MAX);
        self.base.saturating_add(earned).min(rate.max)
    }
}

/// What the timer found when it looked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// A deadline has passed: close now.
    Expired(TimeoutError),
    /// The connection has lived its time: ask it to close gracefully, and look again at
    /// the returned instant, the end of its grace.
    WindDown(Instant),
    /// Nothing has passed: look again then, or never.
    Next(Option<Instant>),
}

/// One connection's activity, shared by its stream, its timer and its protocol. Times
/// are nanoseconds since the connection started.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    /// The layer's deadlines and counters.
    pub(super) shared: Arc<Handle<Shared>>,
    /// The layer's deadlines merged with those the protocol adds where the layer has
    /// none (the HTTP adapter's own); set before the connection is first polled, if the
    /// protocol adds any. Boxed: under a layer that sets them all, nothing is added.
    with_protocol: OnceLock<Box<Deadlines>>,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// Response data written, for a protocol that tells it apart from its framing
    /// (HTTP/2: DATA payload, not PING acknowledgements or headers).
    data_written: AtomicU64,
    /// Request data read, for the same protocols: what moves a streaming answer's
    /// exchange from the client's side, where PINGs and window updates move nothing.
    data_read: AtomicU64,
    /// Whether `data_written` is counted, and so is what a client takes; set once an
    /// HTTP/2 preface is read, after which exchanges race (see `add_racing`).
    counts_data: AtomicBool,
    /// The last write found the stream full: the client is not taking output.
    write_blocked: AtomicBool,
    /// When the request in progress started, or [`IDLE`].
    request_started: AtomicU64,
    /// `bytes_read` when it started (not on HTTP/2: see `stream_request_data`); on
    /// HTTP/1, while an exchange whose head is in is open and no request is timed,
    /// before the next request's first read (see [`Activity::head_in`]).
    request_bytes_start: AtomicU64,
    /// On HTTP/2, the DATA the stream timed (the one arriving longest) has brought
    /// since it began, as the protocol follows its streams: what earns it time at the
    /// minimum rate there, where the connection's bytes read would count PINGs,
    /// SETTINGS and other streams' frames (see [`Activity::set_stream_request`]).
    stream_request_data: AtomicU64,
    /// What the next read does for the request timeout: one of the `READ_` constants.
    next_read: AtomicU8,
    /// Set when a request starts or a stream expires: the timer must look before it
    /// fires.
    rearm: AtomicBool,
    /// Whether the timer's task is polling the protocol right now, and so will look at
    /// `rearm` without being woken.
    polling: AtomicBool,
    wound_down: AtomicBool,
    /// The timer's task, woken to re-arm when a request starts, and when the connection
    /// is evicted (registered for that while it may be).
    timer: AtomicWaker,
    /// Set when a wake-up took the timer's registration, which it must then renew.
    registration_taken: AtomicBool,
    /// Whether the protocol declares its exchanges, so that idle means none is open.
    declared: AtomicBool,
    /// Whether the protocol says goodbye when the connection's close signal is raised
    /// (the HTTP adapter: GOAWAY on HTTP/2): see [`Activity::hears_idle_goodbye`].
    says_goodbye: AtomicBool,
    /// Exchanges open, of those the answered (the response's head is out, its body
    /// streaming), and exchanges ever opened, packed (see [`OPEN`]): one atomic for the
    /// three, so that opening, answering or closing one costs one operation and the
    /// timer reads them consistently. An exchange is answered and closed on its own
    /// task, so the answered never outnumber the open.
    exchanges: AtomicU64,
    /// Response bytes the protocol has been handed to send.
    handed: AtomicU64,
    /// What the timer's idle watch saw at its last look, for the overload manager:
    /// what had moved, and since when (nanoseconds) nothing has.
    seen_moved: AtomicU64,
    seen_quiet_since: AtomicU64,
    /// Since when (nanoseconds) output has waited for the client with not a byte taken,
    /// from the timer's look that first saw it so, or [`NOT_STALLED`]; and what the
    /// client had taken then, so that a stall over since a look is not taken for one.
    /// Written by the timer alone, `stalled_since` around `stalled_at_taken` as a
    /// sequence lock, so that a reader on another thread never pairs one look's time
    /// with another's count.
    stalled_since: AtomicU64,
    stalled_at_taken: AtomicU64,
    /// Whether an HTTP/2 client's flow-control window (the connection's or an open
    /// stream's) is at zero, as the frame watch follows them. On HTTP/2 only that makes
    /// output that seems to wait the client's doing: data handed to hyper for a stream
    /// that is then reset is dropped unsent, and would otherwise seem to wait for good.
    flow_blocked: AtomicBool,
}

/// How a connection is idle, as [`Activity::idleness`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idleness {
    /// The protocol says it is between requests: no exchange open, or its request
    /// timer finished and no byte has arrived since.
    Declared {
        /// Since when, as the timer last saw; now if it has not looked since.
        since: Instant,
    },
    /// Judged by its bytes (the protocol declares nothing, or only answers stream): no
    /// byte has moved since then.
    Quiet { since: Instant },
    /// Output has waited for the client since then, and the client has taken not a
    /// byte of it: busy for the protocol, idle for the server.
    Stalled { since: Instant },
}

impl Activity {
    /// Activity starting now, under `shared`'s deadlines. With a request timeout, the
    /// first byte read (and the first after each finished request) starts a request.
    pub(crate) fn new(shared: Arc<Handle<Shared>>) -> Self {
        let requests_auto_start = shared.deadlines.request.is_some();
        Self {
            started: Instant::now(),
            shared,
            with_protocol: OnceLock::new(),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            data_written: AtomicU64::new(0),
            data_read: AtomicU64::new(0),
            counts_data: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            request_started: AtomicU64::new(IDLE),
            request_bytes_start: AtomicU64::new(0),
            stream_request_data: AtomicU64::new(0),
            next_read: AtomicU8::new(if requests_auto_start {
                READ_STARTS_REQUEST
            } else {
                READ_STARTS_NOTHING
            }),
            rearm: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            wound_down: AtomicBool::new(false),
            timer: AtomicWaker::new(),
            registration_taken: AtomicBool::new(false),
            declared: AtomicBool::new(false),
            says_goodbye: AtomicBool::new(false),
            exchanges: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            seen_moved: AtomicU64::new(0),
            seen_quiet_since: AtomicU64::new(0),
            stalled_since: AtomicU64::new(NOT_STALLED),
            stalled_at_taken: AtomicU64::new(0),
            flow_blocked: AtomicBool::new(false),
        }
    }

    /// Activity under `deadlines` of its own, for the tests of the modules that read it.
    #[cfg(test)]
    pub(crate) fn with_deadlines(deadlines: super::Deadlines) -> Self {
        Self::new(crate::striped::Striped::new(Shared::new(deadlines)).local())
    }

    fn now(&self) -> u64 {
        nanos(self.started.elapsed())
    }

    /// The deadlines this connection is held to: the layer's, and the protocol's where
    /// the layer has none.
    pub(crate) fn deadlines(&self) -> &Deadlines {
        self.with_protocol
            .get()
            .map_or(&self.shared.deadlines, |merged| merged)
    }

    /// The layer's own deadlines, without the protocol's.
    pub(crate) fn layer_deadlines(&self) -> &Deadlines {
        &self.shared.deadlines
    }

    /// Adds the protocol's own deadlines where the layer has none. Called once, before
    /// the connection is first polled.
    pub(crate) fn add_protocol_deadlines(&self, deadlines: Deadlines) {
        let layer = &self.shared.deadlines;
        let merged = layer.or(deadlines);
        if merged == *layer {
            return;
        }
        if layer.request.is_none() && merged.request.is_some() {
            self.next_read.store(READ_STARTS_REQUEST, Ordering::Relaxed);
        }
        self.with_protocol.set(Box::new(merged)).ok();
    }

    /// The stream read `read`. Only the stream writes the counts, so a load and a store
    /// suffice where an atomic add would cost more. Its bytes are looked at only when
    /// they may start an HTTP/1 request, and then up to the first that is not CR or LF.
    pub(crate) fn on_read(&self, read: &[u8]) {
        let before = self.bytes_read.load(Ordering::Relaxed);
        self.bytes_read
            .store(before + read.len() as u64, Ordering::Relaxed);
        let next_read = self.next_read.load(Ordering::Relaxed);
        if next_read == READ_STARTS_NOTHING
            || (next_read != READ_STARTS_REQUEST && only_empty_lines(read))
        {
            return;
        }
        self.next_read.store(READ_STARTS_NOTHING, Ordering::Relaxed);
        if next_read == READ_NOTES_NEXT_REQUEST {
            self.request_bytes_start.store(before, Ordering::Relaxed);
        } else {
            self.start_request_from(before);
        }
    }

    /// `n` bytes were written.
    pub(crate) fn on_write(&self, n: usize) {
        let before = self.bytes_written.load(Ordering::Relaxed);
        self.bytes_written
            .store(before + n as u64, Ordering::Relaxed);
        if self.write_blocked.load(Ordering::Relaxed) {
            self.write_blocked.store(false, Ordering::Relaxed);
        }
    }

    /// A write found the stream full.
    pub(crate) fn on_write_blocked(&self) {
        self.write_blocked.store(true, Ordering::Relaxed);
    }

    /// Starts a request, unless one is in progress: stamped now, or, while the timer's
    /// task polls the protocol, by that task when its poll ends.
    fn start_request_from(&self, bytes_before: u64) {
        if self.request_started.load(Ordering::Relaxed) != IDLE {
            return;
        }
        self.request_bytes_start
            .store(bytes_before, Ordering::Relaxed);
        self.request_started.store(PENDING, Ordering::Release);
        // Sequentially consistent with `set_polling` and `take_rearm`: if this sees the
        // timer's task polling, that task's `take_rearm` comes after this store, and it
        // stamps the start then.
        self.rearm.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.stamp_pending(self.now());
            self.registration_taken.store(true, Ordering::Release);
            self.timer.wake();
        }
    }

    /// When the request in progress started ([`IDLE`] for none), a pending start
    /// stamped with `now()` first.
    fn request_start(&self, now: impl FnOnce() -> u64) -> u64 {
        match self.request_started.load(Ordering::Acquire) {
            PENDING => self.stamp_pending(now()),
            started => started,
        }
    }

    /// Stamps a pending request start with `now`; the start in force afterwards.
    fn stamp_pending(&self, now: u64) -> u64 {
        match self.request_started.compare_exchange(
            PENDING,
            now,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => now,
            Err(current) => current,
        }
    }

    /// Called by the timer's task when a request has started (or the oldest HTTP/2
    /// stream changed) since it last asked: stamps a pending start, and tells whether
    /// the timer must look now, which it need not when the request's earliest possible
    /// deadline (its least allowance, at the strongest scaling) is no sooner than the
    /// instant the timer is armed for. A request already over needs no look.
    pub(crate) fn settle_request(&self, armed: Option<Instant>) -> bool {
        let started = self.request_start(|| self.now());
        if started == IDLE {
            return false;
        }
        let (Some(armed), Some(limit)) = (armed, self.deadlines().request) else {
            return true;
        };
        let least = scaled(limit.allowance(0), self.shared.scaler.min_factor());
        self.instant(started.saturating_add(nanos(least))) < armed
    }

    /// Makes the timer look before it fires.
    fn wake_timer(&self) {
        // Sequentially consistent with `set_polling` and `take_rearm`: if this sees the
        // timer's task polling, that task's `take_rearm` comes after this store.
        self.rearm.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.registration_taken.store(true, Ordering::Release);
            self.timer.wake();
        }
    }

    /// The timer's task starts or stops polling the protocol.
    #[inline]
    pub(crate) fn set_polling(&self, polling: bool) {
        // Only the lowering needs to be sequentially consistent (a locked instruction
        // on x86): a stream that sees it raised read the raise, which came before the
        // lowering, so its store to `rearm` comes before the `take_rearm` that follows
        // the lowering; one that misses the raise wakes the timer itself, for nothing.
        let order = if polling {
            Ordering::Relaxed
        } else {
            Ordering::SeqCst
        };
        self.polling.store(polling, order);
    }

    /// Starts a request now, unless one is in progress.
    pub(crate) fn start_request(&self) {
        self.next_read.store(READ_STARTS_NOTHING, Ordering::Relaxed);
        self.start_request_from(self.bytes_read.load(Ordering::Relaxed));
    }

    /// Ends the request in progress; the next byte read starts the next one.
    pub(crate) fn finish_request(&self) {
        self.request_started.store(IDLE, Ordering::Release);
        self.next_read.store(READ_STARTS_REQUEST, Ordering::Relaxed);
    }

    /// HTTP/1: a request's head is in, and it has no body to time. Its timer ends, and
    /// the next request is not looked for until its exchange is over
    /// ([`next_after_exchange`](Self::next_after_exchange)): bytes read meanwhile come
    /// while the server answers, and its wait is not the client's. The first read of
    /// more than empty lines is noted as the next request's.
    pub(crate) fn head_in(&self) {
        self.next_read
            .store(READ_NOTES_NEXT_REQUEST, Ordering::Relaxed);
        self.request_started.store(IDLE, Ordering::Release);
    }

    /// HTTP/1: the exchange of a request whose head ended its timer
    /// ([`head_in`](Self::head_in)) is over. If the next request's bytes were read
    /// meanwhile (pipelined, whole or in part in the protocol's buffer), its timer
    /// starts now, from them. Otherwise the next read of more than empty lines starts
    /// it.
    pub(crate) fn next_after_exchange(&self) {
        if self.next_read.load(Ordering::Relaxed) == READ_NOTES_NEXT_REQUEST {
            self.next_read
                .store(READ_STARTS_REQUEST_PAST_EMPTY_LINES, Ordering::Relaxed);
        } else {
            self.start_request_from(self.request_bytes_start.load(Ordering::Relaxed));
        }
    }

    /// HTTP/1: the exchange of a request whose body came during it is over, and its
    /// timer with it: the next read of more than empty lines starts the next request.
    pub(crate) fn look_for_next_request(&self) {
        self.request_started.store(IDLE, Ordering::Release);
        self.next_read
            .store(READ_STARTS_REQUEST_PAST_EMPTY_LINES, Ordering::Relaxed);
    }

    /// No more requests on this connection are timed by their first byte (HTTP/2,
    /// whose frames are not requests; an upgraded connection).
    pub(crate) fn stop_timing_requests(&self) {
        self.next_read.store(READ_STARTS_NOTHING, Ordering::Relaxed);
        self.request_started.store(IDLE, Ordering::Release);
    }

    /// The protocol says when it is busy: from now on idle means no exchange open.
    pub(crate) fn declare_exchanges(&self) {
        self.declared.store(true, Ordering::Relaxed);
    }

    /// The protocol says goodbye when the connection's close signal is raised (HTTP/2:
    /// GOAWAY), and cuts the connection itself after a grace of its own when the cut is
    /// left to it (the HTTP adapter's close grace).
    pub(crate) fn say_goodbye_on_close(&self) {
        self.says_goodbye.store(true, Ordering::Relaxed);
    }

    /// Whether the protocol cuts the connection itself, after a grace of its own, once
    /// a close whose cut is left to it is asked for: the HTTP adapter, which says
    /// goodbye.
    pub(crate) fn cuts_after_its_grace(&self) -> bool {
        self.says_goodbye.load(Ordering::Relaxed)
    }

    /// Whether the connection should hear a goodbye (its close signal raised) rather
    /// than be cut at its idle timeout: an HTTP/2 connection whose protocol declares its
    /// exchanges and says goodbye, with no stream open and no output waiting for the
    /// client. Its GOAWAY tells the client that no stream it opens now will be served,
    /// so that it retries elsewhere one sent as the connection closes. Asked by the
    /// timer, once, when the idle timeout expires.
    ///
    /// Cut at once are an idle HTTP/1 connection, which has nothing to be told, and an
    /// HTTP/2 one whose goodbye would wait on a quiet stream or a client that takes
    /// nothing.
    pub(crate) fn hears_idle_goodbye(&self) -> bool {
        self.says_goodbye.load(Ordering::Relaxed)
            && self.declared.load(Ordering::Relaxed)
            && self.counts_data.load(Ordering::Relaxed)
            && !self.has_open_exchanges()
            && self.stalled_since.load(Ordering::Relaxed) == NOT_STALLED
    }

    /// Whether an exchange the protocol declared is open.
    pub(crate) fn has_open_exchanges(&self) -> bool {
        self.exchanges.load(Ordering::Relaxed) & COUNT != 0
    }

    /// The protocol has handed the stream over to another (an HTTP upgrade): requests
    /// are no longer timed, and idle is about bytes again.
    pub(crate) fn hand_over(&self) {
        self.stop_timing_requests();
        self.declared.store(false, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn open_exchange(&self) {
        self.add_racing(&self.exchanges, OPEN | OPENED);
    }

    /// An open exchange has its answer: its response streams from now on.
    #[inline]
    pub(crate) fn answer_exchange(&self) {
        self.add_racing(&self.exchanges, ANSWERED);
    }

    /// Closes an exchange, `answered` if [`answer_exchange`](Self::answer_exchange) was
    /// told of it.
    #[inline]
    pub(crate) fn close_exchange(&self, answered: bool) {
        let closed = if answered { OPEN | ANSWERED } else { OPEN };
        self.add_racing(&self.exchanges, closed.wrapping_neg());
    }

    /// For a protocol that declares its exchanges: `None` while one of them waits for
    /// its answer (busy); otherwise what has moved (the exchanges ever opened, and the
    /// data too while answers stream) and whether any answer does.
    fn declared_movement(&self) -> Option<(u64, bool)> {
        let exchanges = self.exchanges.load(Ordering::Relaxed);
        let open = exchanges & COUNT;
        let answered = (exchanges / ANSWERED) & COUNT;
        let opened = exchanges / OPENED;
        if open == 0 {
            return Some((opened, false));
        }
        (answered >= open).then(|| (opened.wrapping_add(self.data_moved()), true))
    }

    /// The data moved either way: on HTTP/2, DATA frames' payload, so that a client's
    /// PINGs keep no quiet stream alive; otherwise every byte.
    fn data_moved(&self) -> u64 {
        if self.counts_data.load(Ordering::Relaxed) {
            self.data_read.load(Ordering::Relaxed) + self.data_written.load(Ordering::Relaxed)
        } else {
            self.bytes_moved()
        }
    }

    /// Bytes read and written, all told.
    fn bytes_moved(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed) + self.bytes_written.load(Ordering::Relaxed)
    }

    /// Whether every exchange open (one at least) is an answer streaming to its client:
    /// the application has answered each request, and only responses go on.
    pub(crate) fn only_answers_stream(&self) -> bool {
        self.declared_movement()
            .is_some_and(|(_, streaming)| streaming)
    }

    /// The protocol was handed `n` bytes of response to send.
    pub(crate) fn handed(&self, n: usize) {
        self.add_racing(&self.handed, n as u64);
    }

    /// Adds `n` (wrapping) to a count the protocol's exchanges write. HTTP/2's streams
    /// write from tasks of their own, and need an atomic add; HTTP/1's exchanges come
    /// one at a time, on the connection's task, and a load and a store cost less. (An
    /// HTTP/2 connection is known by its preface, read before any stream opens.)
    #[inline]
    fn add_racing(&self, count: &AtomicU64, n: u64) {
        if self.counts_data.load(Ordering::Relaxed) {
            count.fetch_add(n, Ordering::Relaxed);
        } else {
            let before = count.load(Ordering::Relaxed);
            count.store(before.wrapping_add(n), Ordering::Relaxed);
        }
    }

    /// From now on, what the client takes is the data the protocol says it wrote.
    pub(crate) fn counts_http2_data(&self) {
        self.counts_data.store(true, Ordering::Relaxed);
    }

    /// The protocol read `n` bytes of request data. Only the stream's reader counts
    /// them: a load and a store.
    pub(crate) fn on_data_read(&self, n: usize) {
        let before = self.data_read.load(Ordering::Relaxed);
        self.data_read.store(before + n as u64, Ordering::Relaxed);
    }

    /// The protocol wrote `n` bytes of response data.
    pub(crate) fn on_data_written(&self, n: usize) {
        let before = self.data_written.load(Ordering::Relaxed);
        self.data_written
            .store(before + n as u64, Ordering::Relaxed);
    }

    /// The request that has been arriving longest on a multiplexed connection, as the
    /// protocol follows its streams: when it began and the request data it has brought
    /// since (its own, not its neighbours'), or `None`. Told again as its data comes:
    /// a relaxed store, and the timer looks only when it would anyway.
    pub(crate) fn set_stream_request(&self, oldest: Option<(u64, u64)>) {
        let Some((started, data_read)) = oldest else {
            self.request_started.store(IDLE, Ordering::Release);
            return;
        };
        // Stored before the start it goes with (a release), which the timer reads first
        // (an acquire): with that start, it sees this count or a later one.
        self.stream_request_data.store(data_read, Ordering::Relaxed);
        if self.request_started.load(Ordering::Relaxed) == started {
            return;
        }
        self.request_started.store(started, Ordering::Release);
        // Its deadline may come before the timer's.
        self.wake_timer();
    }

    /// When the request timed by its first byte that is in progress started (a pending
    /// start stamped now), if one is.
    pub(crate) fn request_in_progress(&self) -> Option<u64> {
        let started = self.request_start(|| self.now());
        (started != IDLE).then_some(started)
    }

    /// Nanoseconds since the connection started.
    pub(crate) fn elapsed_nanos(&self) -> u64 {
        self.now()
    }

    /// Bytes read so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Whether the protocol declares its exchanges (the HTTP adapter until a hand-over),
    /// rather than being judged by its bytes.
    pub(crate) fn declares_exchanges(&self) -> bool {
        self.declared.load(Ordering::Relaxed)
    }

    /// Whether a request the timer times is in progress.
    pub(crate) fn in_request(&self) -> bool {
        self.request_started.load(Ordering::Relaxed) != IDLE
    }

    /// When the connection started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Registers the timer's task, to be woken when a request starts or the connection
    /// is evicted.
    pub(crate) fn register_timer(&self, waker: &std::task::Waker) {
        self.timer.register(waker);
    }

    /// Wakes the timer's task of a connection just evicted, so that it gives its
    /// protocol a poll with the close request and then cuts it if it is to be cut:
    /// nothing else may wake it (a raw protocol that does not await the request, a
    /// client that sends nothing, a timer with no deadline ahead).
    #[cfg(feature = "overload")]
    pub(crate) fn wake_evicted(&self) {
        self.registration_taken.store(true, Ordering::Release);
        self.timer.wake();
    }

    /// Whether a wake-up has taken the timer's registration since it last asked.
    #[inline]
    pub(crate) fn take_registration_taken(&self) -> bool {
        self.registration_taken.load(Ordering::Relaxed)
            && self.registration_taken.swap(false, Ordering::Acquire)
    }

    /// Whether a request started since the timer last looked.
    #[inline]
    pub(crate) fn take_rearm(&self) -> bool {
        // Looked at before it is swapped: most looks find nothing, and a load costs
        // less than a swap.
        self.rearm.load(Ordering::SeqCst) && self.rearm.swap(false, Ordering::SeqCst)
    }

    /// Whether the connection is idle, and since when; `None` while it is busy: a
    /// request arriving, an exchange waiting for its answer, or output the client is
    /// taking slowly. Output the client takes none of is [`Idleness::Stalled`], whatever
    /// else is open: the connection is held for nothing then.
    pub(crate) fn idleness(&self) -> Option<Idleness> {
        if let Some(since) = self.stalled_since() {
            return Some(Idleness::Stalled { since });
        }
        if self.request_started.load(Ordering::Relaxed) != IDLE
            || self.write_blocked.load(Ordering::Relaxed)
        {
            return None;
        }
        let (moved, declared) = if self.declared.load(Ordering::Relaxed) {
            // While answers stream, the bytes judge.
            let (moved, streaming) = self.declared_movement()?;
            (moved, !streaming)
        } else {
            // A request timer finished, and the next byte not yet in.
            (
                self.bytes_moved(),
                self.next_read.load(Ordering::Relaxed) != READ_STARTS_NOTHING,
            )
        };
        let since = if moved == self.seen_moved.load(Ordering::Acquire) {
            self.instant(self.seen_quiet_since.load(Ordering::Relaxed))
        } else {
            Instant::now()
        };
        Some(if declared {
            Idleness::Declared { since }
        } else {
            Idleness::Quiet { since }
        })
    }

    /// Works out what the deadlines say now, each but the lifetime scaled by the
    /// pressure under an overload manager. `watch` is the timer's own record of what it
    /// saw at its last look.
    pub(crate) fn check(&self, deadlines: &Deadlines, watch: &mut IdleWatch) -> Check {
        let now = self.now();
        let mut next = Earliest(None);
        let scaler = &self.shared.scaler;
        let scaling = scaler.is_active();
        let deadlines = &deadlines.scaled(scaler.factor());

        if let Some(limit) = deadlines.first_byte
            && self.bytes_read.load(Ordering::Relaxed) == 0
        {
            if next.passed(nanos(limit), now) {
                return Check::Expired(TimeoutError::FirstByte(limit));
            }
            if scaling {
                next.look_within(limit, now);
            }
        }
        if let Some(limit) = deadlines.idle
            && let Some(error) = self.check_idle(&limit, now, watch, &mut next)
        {
            return Check::Expired(error);
        }
        if let Some(limit) = deadlines.request {
            let started = self.request_start(|| now);
            if started != IDLE {
                // Under a protocol that declares its exchanges, a request earns time at
                // the minimum rate only once its head is in (its exchange open): a head
                // that keeps coming but never ends is a slowloris, held to the base. On
                // HTTP/2 it earns by its own DATA: PINGs or a neighbour's frames sent
                // alongside a trickle earn it nothing.
                let earns = !self.declared.load(Ordering::Relaxed) || self.has_open_exchanges();
                let received = if !earns {
                    0
                } else if self.counts_data.load(Ordering::Relaxed) {
                    self.stream_request_data.load(Ordering::Relaxed)
                } else {
                    self.bytes_read
                        .load(Ordering::Relaxed)
                        .saturating_sub(self.request_bytes_start.load(Ordering::Relaxed))
                };
                let allowed = limit.allowance(received);
                if next.passed(started.saturating_add(nanos(allowed)), now) {
                    return Check::Expired(TimeoutError::Request(allowed));
                }
                if scaling {
                    next.look_within(allowed, now);
                }
            }
        }
        if let Some(lifetime) = deadlines.lifetime {
            let wind_down = nanos(lifetime.after);
            let cut = wind_down.saturating_add(nanos(lifetime.grace));
            if self.wound_down.load(Ordering::Relaxed) {
                if next.passed(cut, now) {
                    return Check::Expired(TimeoutError::Lifetime(lifetime.after));
                }
            } else if now >= wind_down {
                self.wound_down.store(true, Ordering::Relaxed);
                next.passed(cut, now);
                return Check::WindDown(self.instant(next.0.unwrap_or(cut)));
            } else {
                next.passed(wind_down, now);
            }
        }
        Check::Next(next.0.map(|at| self.instant(at)))
    }

    /// Whether the connection has been idle too long: quiet (no exchange open, or no
    /// byte moved, for the limit), or holding output back while taking less than the
    /// minimum send rate over the limit.
    fn check_idle(
        &self,
        limit: &IdleLimit,
        now: u64,
        watch: &mut IdleWatch,
        next: &mut Earliest,
    ) -> Option<TimeoutError> {
        let period = nanos(limit.after);
        let expired = TimeoutError::Idle(limit.after);
        let written = self.taken();
        let waiting = self.output_waiting(written, watch);
        let held_back = waiting.is_some();

        if let Some(waiting) = waiting {
            let since = *watch.held_back.get_or_insert(HeldBack {
                since: now,
                written,
                waiting,
            });
            self.mark_stall(now, written);
            let window_ends = since.since.saturating_add(period);
            if now >= window_ends {
                // The minimum rate's worth, or all that was waiting if that is less: a
                // client that takes everything it was sent is not slow.
                let owed = (u128::from(limit.min_send_rate) * u128::from(period) / 1_000_000_000)
                    .min(u128::from(since.waiting));
                if u128::from(written - since.written) < owed {
                    return Some(expired);
                }
                watch.held_back = Some(HeldBack {
                    since: now,
                    written,
                    waiting,
                });
                next.passed(now.saturating_add(period), now);
            } else {
                next.passed(window_ends, now);
            }
        } else if watch.held_back.take().is_some() {
            self.stalled_since.store(NOT_STALLED, Ordering::Relaxed);
        }

        let moved = if self.declared.load(Ordering::Relaxed) {
            let busy = held_back || self.request_started.load(Ordering::Relaxed) != IDLE;
            if busy {
                None
            } else {
                self.declared_movement().map(|(moved, _)| moved)
            }
        } else {
            Some(self.bytes_moved())
        };
        match moved {
            Some(moved) if moved == watch.moved => {}
            Some(moved) => {
                watch.moved = moved;
                watch.quiet_since = now;
            }
            None => watch.quiet_since = now,
        }
        self.seen_quiet_since
            .store(watch.quiet_since, Ordering::Relaxed);
        self.seen_moved.store(watch.moved, Ordering::Release);
        if next.passed(watch.quiet_since.saturating_add(period), now) {
            return Some(expired);
        }
        next.look_within(limit.after, now);
        None
    }

    /// Output waits at `now`, and the client has taken `taken` of what was sent: a stall
    /// begins now, unless one is on record that nothing has been taken since.
    fn mark_stall(&self, now: u64, taken: u64) {
        if self.stalled_since.load(Ordering::Relaxed) != NOT_STALLED
            && self.stalled_at_taken.load(Ordering::Relaxed) == taken
        {
            return;
        }
        self.stalled_since.store(NOT_STALLED, Ordering::Relaxed);
        fence(Ordering::Release);
        self.stalled_at_taken.store(taken, Ordering::Relaxed);
        self.stalled_since.store(now, Ordering::Release);
    }

    /// Since when output has waited with not a byte taken, if it has and is still
    /// waiting so.
    fn stalled_since(&self) -> Option<Instant> {
        let since = self.stalled_since.load(Ordering::Acquire);
        if since == NOT_STALLED {
            return None;
        }
        let at_taken = self.stalled_at_taken.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        (self.stalled_since.load(Ordering::Relaxed) == since && self.taken() == at_taken)
            .then(|| self.instant(since))
    }

    /// Whether the HTTP/2 client's windows hold the server's data back: see
    /// `flow_blocked`.
    pub(crate) fn set_flow_blocked(&self, blocked: bool) {
        self.flow_blocked.store(blocked, Ordering::Relaxed);
    }

    /// What the client has taken: data, when the protocol tells it apart.
    fn taken(&self) -> u64 {
        if self.counts_data.load(Ordering::Relaxed) {
            self.data_written.load(Ordering::Relaxed)
        } else {
            self.bytes_written.load(Ordering::Relaxed)
        }
    }

    /// How much output waits for the client, if any: what the protocol was handed
    /// beyond what has been written (writes run ahead of it by the protocol's framing,
    /// a lead learnt whenever nothing waits) while, on HTTP/2, a window holds it back;
    /// or an amount not known when the stream is full and the protocol says nothing of
    /// what it sends.
    fn output_waiting(&self, written: u64, watch: &mut IdleWatch) -> Option<u64> {
        let handed = self.handed.load(Ordering::Relaxed);
        let expected = handed.saturating_add(watch.framing);
        if written < expected
            && (!self.counts_data.load(Ordering::Relaxed)
                || self.flow_blocked.load(Ordering::Relaxed))
        {
            return Some(expected - written);
        }
        if self.write_blocked.load(Ordering::Relaxed) {
            return Some(u64::MAX);
        }
        watch.framing = written - handed.min(written);
        None
    }

    fn instant(&self, at: u64) -> Instant {
        deadline_from(self.started, Duration::from_nanos(at))
    }
}

/// What the timer saw at its last look.
#[derive(Debug, Default)]
pub(crate) struct IdleWatch {
    /// Bytes read and written, all told, or exchanges opened when the protocol declares
    /// them.
    moved: u64,
    /// The look since which nothing has moved.
    quiet_since: u64,
    /// Since when output has waited for the client, in the period being judged.
    held_back: Option<HeldBack>,
    /// How far writes ran ahead of what the protocol was handed, the last time nothing
    /// waited: its framing.
    framing: u64,
}

/// Output waiting for the client, as it stood when a period of waiting began.
#[derive(Debug, Clone, Copy)]
struct HeldBack {
    since: u64,
    /// Bytes written then.
    written: u64,
    /// Bytes waiting then.
    waiting: u64,
}

/// The earliest deadline still ahead.
struct Earliest(Option<u64>);

impl Earliest {
    /// Whether `deadline` has passed at `now`; if not, keeps it if it is the earliest.
    fn passed(&mut self, deadline: u64, now: u64) -> bool {
        if now >= deadline {
            return true;
        }
        self.0 = Some(self.0.map_or(deadline, |earliest| earliest.min(deadline)));
        false
    }

    /// Looks again within an eighth of `limit`: how idleness is sampled, and how a
    /// deadline that may shrink is followed.
    fn look_within(&mut self, limit: Duration, now: u64) {
        self.passed(
            now.saturating_add(nanos(limit) / u64::from(IDLE_SAMPLES)),
            now,
        );
    }
}

/// Whether `read` holds only the empty lines a client may send between HTTP/1 requests.
fn only_empty_lines(read: &[u8]) -> bool {
    read.iter().all(|&byte| byte == b'\r' || byte == b'\n')
}

pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn at(activity: &Activity, n: u64) -> Check {
        Check::Next(Some(activity.started + secs(n)))
    }

    fn idle(after: Duration) -> Option<IdleLimit> {
        Some(IdleLimit {
            after,
            min_send_rate: DEFAULT_MIN_SEND_RATE,
        })
    }

    /// A request timeout of `base`, with no minimum rate.
    fn request(base: Duration) -> Option<RequestLimit> {
        Some(RequestLimit {
            base,
            min_rate: None,
        })
    }

    #[test]
    fn exchanges_count_alike_on_http1_and_http2() {
        for http2 in [false, true] {
            let activity = Activity::with_deadlines(Deadlines::default());
            if http2 {
                activity.counts_http2_data();
            }
            activity.open_exchange();
            activity.open_exchange();
            activity.close_exchange(false);
            activity.handed(5);
            activity.handed(6);
            let exchanges = activity.exchanges.load(Ordering::Relaxed);
            assert_eq!(exchanges, OPEN + 2 * OPENED, "HTTP/2: {http2}");
            assert_eq!(
                activity.handed.load(Ordering::Relaxed),
                11,
                "HTTP/2: {http2}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_deadline_is_the_next_look() {
        let deadlines = Deadlines {
            first_byte: Some(secs(2)),
            idle: idle(secs(30)),
            lifetime: Some(Lifetime {
                after: secs(60),
                grace: secs(10),
            }),
            ..Deadlines::default()
        };
        let activity = Activity::with_deadlines(deadlines);
        let mut watch = IdleWatch::default();
        assert_eq!(activity.check(&deadlines, &mut watch), at(&activity, 2));
        activity.on_read(b"x");
        // Idle is sampled every eighth of its 30 s.
        assert_eq!(
            activity.check(&deadlines, &mut watch),
            Check::Next(Some(activity.started + Duration::from_millis(3750)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn min_rate_extends_a_request_up_to_its_maximum() {
        let limit = RequestLimit {
            base: secs(10),
            min_rate: Some(MinRate {
                bytes_per_second: 100,
                max: secs(20),
            }),
        };
        let deadlines = Deadlines {
            request: Some(limit),
            ..Deadlines::default()
        };
        let activity = Activity::with_deadlines(deadlines);
        assert_eq!(limit.allowance(1), Duration::from_millis(10_010));
        assert_eq!(limit.allowance(500), secs(15));
        activity.on_read(&[b'x'; 500]);
        assert_eq!(
            activity.check(&deadlines, &mut IdleWatch::default()),
            at(&activity, 15)
        );
        assert_eq!(limit.allowance(10_500), secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_stream_earns_time_by_its_own_data_not_the_connections_bytes() {
        let deadlines = Deadlines {
            request: Some(RequestLimit {
                base: secs(10),
                min_rate: Some(MinRate {
                    bytes_per_second: 100,
                    max: secs(60),
                }),
            }),
            ..Deadlines::default()
        };
        let activity = Activity::with_deadlines(deadlines);
        let mut watch = IdleWatch::default();
        activity.declare_exchanges();
        activity.counts_http2_data();
        activity.stop_timing_requests();
        activity.open_exchange();
        let started = activity.elapsed_nanos();
        activity.set_stream_request(Some((started, 0)));
        // PINGs, and a neighbour's DATA: bytes read, none of them the stream's.
        activity.on_read(&[b'x'; 10_000]);
        activity.on_data_read(5_000);
        assert_eq!(activity.check(&deadlines, &mut watch), at(&activity, 10));
        // 500 bytes of its own: 5 s more.
        activity.set_stream_request(Some((started, 500)));
        assert_eq!(activity.check(&deadlines, &mut watch), at(&activity, 15));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_request_arms_the_next_on_the_next_byte() {
        let deadlines = Deadlines {
            request: request(secs(10)),
            ..Deadlines::default()
        };
        let activity = Activity::with_deadlines(deadlines);
        let mut watch = IdleWatch::default();
        assert_eq!(activity.check(&deadlines, &mut watch), Check::Next(None));
        activity.on_read(&[b'x'; 3]);
        assert!(activity.take_rearm());
        assert_eq!(activity.check(&deadlines, &mut watch), at(&activity, 10));
        activity.finish_request();
        assert_eq!(activity.check(&deadlines, &mut watch), Check::Next(None));
        tokio::time::advance(secs(100)).await;
        activity.on_read(b"x");
        assert_eq!(activity.check(&deadlines, &mut watch), at(&activity, 110));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_read_during_an_http1_exchange_start_the_next_request_at_its_end() {
        let deadlines = Deadlines {
            request: request(secs(10)),
            ..Deadlines::default()
        };
        let activity = Activity::with_deadlines(deadlines);
        let mut watch = IdleWatch::default();
        activity.on_read(&[b'x'; 30]);
        activity.head_in();
        // A request pipelined while the server answers for 20 s: not timed yet.
        tokio::time::advance(secs(20)).await;
        activity.on_read(&[b'x'; 30]);
        assert_eq!(activity.check(&deadlines, &mut watch), Check::Next(None));
        activity.next_after_exchange();
        assert_eq!(activity.check(&deadlines, &mut watch), at(&activity, 30));
        // Nothing read during an exchange: the next byte starts the next request.
        activity.head_in();
        activity.next_after_exchange();
        assert_eq!(activity.check(&deadlines, &mut watch), Check::Next(None));
        tokio::time::advance(secs(5)).await;
        activity.on_read(b"x");
        assert_eq!(activity.check(&deadlines, &mut watch), at(&activity, 35));
    }

    #[tokio::test(start_paused = true)]
    async fn empty_lines_between_http1_requests_start_no_request() {
        let deadlines = Deadlines {
            request: request(secs(10)),
            ..Deadlines::default()
        };
        let activity = Activity::with_deadlines(deadlines);
        let mut watch = IdleWatch::default();
        activity.on_read(b"GET / HTTP/1.1\r\n\r\n");
        activity.head_in();
        // An empty line while the server answers, and one after: no request.
        activity.on_read(b"\r\n");
        activity.next_after_exchange();
        activity.on_read(b"\n");
        tokio::time::advance(secs(20)).await;
        assert_eq!(activity.check(&deadlines, &mut watch), Check::Next(None));
        // The next request line starts the next request, empty lines before it or not.
        activity.on_read(b"\r\nGET");
        assert_eq!(activity.check(&deadlines, &mut watch), at(&activity, 30));
        // The same after a request with a body.
        activity.look_for_next_request();
        activity.on_read(b"\r\n");
        assert_eq!(activity.check(&deadlines, &mut watch), Check::Next(None));
        // A connection's first read starts its first request, whatever it brings.
        let fresh = Activity::with_deadlines(deadlines);
        fresh.on_read(b"\r\n");
        assert_eq!(
            fresh.check(&deadlines, &mut IdleWatch::default()),
            at(&fresh, 10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_started_during_the_timers_poll_is_stamped_when_it_ends() {
        let deadlines = Deadlines {
            request: request(secs(10)),
            ..Deadlines::default()
        };
        let activity = Activity::with_deadlines(deadlines);
        let mut watch = IdleWatch::default();
        activity.set_polling(true);
        activity.on_read(&[b'x'; 3]);
        tokio::time::advance(secs(1)).await;
        activity.set_polling(false);
        assert!(activity.take_rearm());
        // Not armed: the timer must look, from the poll's end.
        assert!(activity.settle_request(None));
        assert_eq!(activity.check(&deadlines, &mut watch), at(&activity, 11));

        // Armed for sooner than the request can end: no look. Armed later: a look.
        activity.finish_request();
        activity.set_polling(true);
        activity.on_read(b"x");
        activity.set_polling(false);
        assert!(!activity.settle_request(Some(activity.started + secs(11))));
        assert!(activity.settle_request(Some(activity.started + secs(12))));

        // Started and finished within one poll: nothing to look at.
        activity.finish_request();
        activity.set_polling(true);
        activity.on_read(b"x");
        activity.finish_request();
        activity.set_polling(false);
        assert!(activity.take_rearm());
        assert!(!activity.settle_request(None));
    }

    #[tokio::test(start_paused = true)]
    async fn declared_exchanges_make_bytes_alone_not_count_as_activity() {
        let deadlines = Deadlines {
            idle: idle(secs(8)),
            ..Deadlines::default()
        };
        let activity = Activity::with_deadlines(deadlines);
        activity.declare_exchanges();
        let mut watch = IdleWatch::default();
        activity.open_exchange();
        tokio::time::advance(secs(20)).await;
        assert!(matches!(
            activity.check(&deadlines, &mut watch),
            Check::Next(Some(_))
        ));
        activity.close_exchange(false);
        // Pings: bytes both ways, no exchange.
        for _ in 0..8 {
            activity.on_read(&[b'x'; 17]);
            activity.on_write(17);
            tokio::time::advance(secs(1)).await;
            assert!(matches!(
                activity.check(&deadlines, &mut watch),
                Check::Next(Some(_))
            ));
        }
        tokio::time::advance(secs(1)).await;
        assert_eq!(
            activity.check(&deadlines, &mut watch),
            Check::Expired(TimeoutError::Idle(secs(8)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_is_what_the_protocol_declares_or_else_quiet_bytes() {
        let deadlines = Deadlines {
            idle: idle(secs(8)),
            request: request(secs(10)),
            ..Deadlines::default()
        };
        // A raw protocol with a request timer: idle until its first byte, busy until it
        // finishes the request.
        let raw = Activity::with_deadlines(deadlines);
        let mut watch = IdleWatch::default();
        raw.check(&deadlines, &mut watch);
        assert!(matches!(raw.idleness(), Some(Idleness::Declared { .. })));
        raw.on_read(&[b'x'; 5]);
        assert_eq!(raw.idleness(), None);
        raw.finish_request();
        assert!(matches!(raw.idleness(), Some(Idleness::Declared { .. })));

        // The HTTP adapter: idle while no exchange is open, since the timer's look
        // that found it so; then handed over (a WebSocket): only quiet bytes.
        let http = Activity::with_deadlines(deadlines);
        http.declare_exchanges();
        http.open_exchange();
        assert_eq!(http.idleness(), None);
        http.close_exchange(false);
        let mut watch = IdleWatch::default();
        tokio::time::advance(secs(1)).await;
        http.check(&deadlines, &mut watch);
        let looked = Instant::now();
        tokio::time::advance(secs(3)).await;
        assert_eq!(http.idleness(), Some(Idleness::Declared { since: looked }));
        http.hand_over();
        http.on_write(2);
        assert!(
            matches!(http.idleness(), Some(Idleness::Quiet { since }) if since == Instant::now())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_exchange_that_streams_is_judged_by_its_bytes() {
        let deadlines = Deadlines {
            idle: idle(secs(8)),
            ..Deadlines::default()
        };
        let http = Activity::with_deadlines(deadlines);
        http.declare_exchanges();
        let mut watch = IdleWatch::default();
        // A handler that has not answered: busy, however long nothing moves.
        http.open_exchange();
        for _ in 0..4 {
            assert!(matches!(http.check(&deadlines, &mut watch), Check::Next(_)));
            tokio::time::advance(secs(4)).await;
        }
        assert_eq!(http.idleness(), None);
        assert!(!http.only_answers_stream());
        // Answered, its response streaming: bytes keep it busy...
        http.answer_exchange();
        assert!(http.only_answers_stream());
        for _ in 0..4 {
            http.on_write(10);
            http.check(&deadlines, &mut watch);
            tokio::time::advance(secs(4)).await;
        }
        http.check(&deadlines, &mut watch);
        assert!(matches!(http.idleness(), Some(Idleness::Quiet { .. })));
        // ...and a second request, not answered yet, makes it busy again.
        http.open_exchange();
        assert_eq!(http.idleness(), None);
        assert!(!http.only_answers_stream());
        http.close_exchange(false);
        // Quiet from the look that saw that request come and go: closed at the idle
        // timeout.
        http.check(&deadlines, &mut watch);
        let looked = Instant::now();
        tokio::time::advance(secs(3)).await;
        assert_eq!(http.idleness(), Some(Idleness::Quiet { since: looked }));
        let mut expired = None;
        for _ in 0..8 {
            tokio::time::advance(secs(1)).await;
            if let Check::Expired(error) = http.check(&deadlines, &mut watch) {
                expired = Some(error);
                break;
            }
        }
        assert_eq!(expired, Some(TimeoutError::Idle(secs(8))));
        // Its response over, the connection is between requests again.
        http.close_exchange(true);
        assert!(!http.only_answers_stream());
        assert!(matches!(http.idleness(), Some(Idleness::Declared { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn output_its_client_takes_none_of_is_stalled_and_idle_until_a_byte_is_taken() {
        let deadlines = Deadlines {
            idle: idle(secs(60)),
            ..Deadlines::default()
        };
        let http = Activity::with_deadlines(deadlines);
        http.declare_exchanges();
        let mut watch = IdleWatch::default();
        http.check(&deadlines, &mut watch);
        // An answer waits, open: busy, until a look sees that nothing of it is taken.
        http.open_exchange();
        http.handed(4096);
        assert_eq!(http.idleness(), None);
        let looked = Instant::now();
        http.check(&deadlines, &mut watch);
        tokio::time::advance(secs(3)).await;
        http.check(&deadlines, &mut watch);
        assert_eq!(http.idleness(), Some(Idleness::Stalled { since: looked }));
        // A byte taken ends the stall at once, before the timer looks again; a stall
        // then counts from the next look that finds nothing more taken.
        tokio::time::advance(secs(1)).await;
        http.on_write(1);
        assert_eq!(http.idleness(), None);
        let again = Instant::now();
        http.check(&deadlines, &mut watch);
        tokio::time::advance(secs(1)).await;
        http.check(&deadlines, &mut watch);
        assert_eq!(http.idleness(), Some(Idleness::Stalled { since: again }));
        // All of it taken: busy, not stalled, while the exchange is open.
        http.on_write(4095);
        http.check(&deadlines, &mut watch);
        assert_eq!(http.idleness(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn output_held_back_must_be_taken_at_the_minimum_rate() {
        let deadlines = Deadlines {
            idle: Some(IdleLimit {
                after: secs(10),
                min_send_rate: 100,
            }),
            ..Deadlines::default()
        };
        let activity = Activity::with_deadlines(deadlines);
        let mut watch = IdleWatch::default();
        // Framing written ahead of the body is learnt, not counted as waiting.
        activity.on_write(200);
        activity.check(&deadlines, &mut watch);
        activity.handed(1 << 20);
        activity.on_write(4096);
        // 1 000 bytes in 10 s is the minimum: taken, the connection lives on.
        activity.check(&deadlines, &mut watch);
        for _ in 0..10 {
            tokio::time::advance(secs(1)).await;
            activity.on_write(100);
            assert!(matches!(
                activity.check(&deadlines, &mut watch),
                Check::Next(Some(_))
            ));
        }
        // 990 bytes in the next 10 s is too few.
        for _ in 0..10 {
            tokio::time::advance(secs(1)).await;
            activity.on_write(99);
            let check = activity.check(&deadlines, &mut watch);
            if check != Check::Expired(TimeoutError::Idle(secs(10))) {
                assert!(matches!(check, Check::Next(Some(_))), "{check:?}");
            }
        }
        assert_eq!(
            activity.check(&deadlines, &mut watch),
            Check::Expired(TimeoutError::Idle(secs(10)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_all_that_waited_is_not_slow() {
        let deadlines = Deadlines {
            idle: Some(IdleLimit {
                after: secs(10),
                min_send_rate: 100,
            }),
            ..Deadlines::default()
        };
        let activity = Activity::with_deadlines(deadlines);
        activity.declare_exchanges();
        activity.open_exchange();
        let mut watch = IdleWatch::default();
        // An event stream: a few bytes at a time, each taken within the period.
        for _ in 0..10 {
            activity.handed(20);
            assert!(matches!(
                activity.check(&deadlines, &mut watch),
                Check::Next(Some(_))
            ));
            tokio::time::advance(secs(9)).await;
            activity.on_write(20);
            tokio::time::advance(secs(2)).await;
            assert!(matches!(
                activity.check(&deadlines, &mut watch),
                Check::Next(Some(_))
            ));
        }
        // Twenty bytes left waiting a whole period are not taken: slow.
        activity.handed(20);
        activity.check(&deadlines, &mut watch);
        tokio::time::advance(secs(10)).await;
        assert_eq!(
            activity.check(&deadlines, &mut watch),
            Check::Expired(TimeoutError::Idle(secs(10)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn durations_meant_as_forever_do_not_overflow() {
        let deadlines = Deadlines {
            first_byte: Some(Duration::MAX),
            idle: idle(Duration::MAX),
            request: Some(RequestLimit {
                base: Duration::MAX,
                min_rate: Some(MinRate {
                    bytes_per_second: 1,
                    max: Duration::MAX,
                }),
            }),
            lifetime: Some(Lifetime {
                after: Duration::MAX,
                grace: Duration::MAX,
            }),
        };
        let activity = Activity::with_deadlines(deadlines);
        let mut watch = IdleWatch::default();
        tokio::time::advance(secs(1)).await;
        activity.on_read(b"x");
        // As if a terabyte had come.
        activity.bytes_read.store(1 << 40, Ordering::Relaxed);
        activity.handed(1 << 41);
        assert!(matches!(
            activity.check(&deadlines, &mut watch),
            Check::Next(Some(_))
        ));
    }
}
