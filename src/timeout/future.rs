use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use pin_project::pin_project;
use tokio::time::{Instant, Sleep};

use super::{
    Shared, TimedIo, TimeoutError,
    activity::{Activity, Check, IdleWatch},
};
use crate::{BoxError, Conn, GracefulClose, deadline::deadline_after, striped::Striped};

/// How long a connection closed at its idle timeout has to hear its goodbye (HTTP/2:
/// GOAWAY, a PING the client acknowledges, the last GOAWAY) before it is cut: a round
/// trip, for a connection that has nothing left to finish (one that has, a stream
/// opened as the goodbye came, goes back to its usual deadlines).
const IDLE_GOODBYE: Duration = Duration::from_secs(1);

/// Wraps the connection's stream, leaves the handles the protocol needs in its
/// extensions, and runs `serve` on it under `shared`'s deadlines.
pub(crate) fn watch<IO, F, Fut>(
    mut conn: Conn<IO>,
    shared: &Striped<Shared>,
    serve: F,
) -> ResponseFuture<Fut>
where
    F: FnOnce(Conn<TimedIo<IO>>) -> Fut,
{
    let peer = conn.peer_addr();
    let activity = Arc::new(Activity::new(shared.local()));
    #[cfg(feature = "overload")]
    let standing = shared
        .scaler
        .overload()
        .filter(|overload| overload.evicts())
        .map(|_| crate::overload::Standing::Unregistered(peer.ip()));
    // Asked to close at the end of the lifetime, when evicted, or to hear a goodbye at
    // the idle timeout.
    let close = conn.graceful_close();
    let mut conn = conn.map_io(|io| TimedIo::new(io, activity.clone()));
    conn.set_timed(activity.clone());
    ResponseFuture {
        // The protocol may add deadlines of its own when it is called: the timer is
        // armed from the first poll, once they are known.
        inner: serve(conn),
        timer: LazyTimer {
            sleep: None,
            deadline: None,
            registered: None,
        },
        activity,
        started: false,
        times_requests: false,
        registered: None,
        idle: IdleWatch::default(),
        saying_goodbye: None,
        close,
        peer,
        #[cfg(feature = "overload")]
        standing,
    }
}

/// A timer made only when first waited on: a connection that ends on its first poll
/// never touches the timer driver.
#[pin_project]
#[derive(Debug)]
struct LazyTimer {
    #[pin]
    sleep: Option<Sleep>,
    /// When it fires; `None` when it is not armed.
    deadline: Option<Instant>,
    /// The waker the sleep holds since its last pending poll, until it is moved: while
    /// the task's waker is the same, a look at whether it has fired does instead of a
    /// poll, which would register the waker again on every wake-up.
    registered: Option<Waker>,
}

impl LazyTimer {
    /// Whether the armed deadline has come; registers for it otherwise. Inlined, as
    /// the timeout's future is: it runs at every wake-up.
    #[inline(always)]
    fn poll_fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        let mut this = self.project();
        let Some(deadline) = *this.deadline else {
            return false;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(deadline)));
        }
        let sleep = this.sleep.as_pin_mut().expect("made above");
        let holds_waker = this
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        // A sleep that fires wakes the waker it holds; it is elapsed before it wakes.
        if holds_waker && !sleep.is_elapsed() {
            return false;
        }
        if sleep.poll(cx).is_ready() {
            *this.registered = None;
            return true;
        }
        if !holds_waker {
            *this.registered = Some(cx.waker().clone());
        }
        false
    }

    fn arm(self: Pin<&mut Self>, at: Instant) {
        let this = self.project();
        *this.deadline = Some(at);
        if let Some(sleep) = this.sleep.as_pin_mut() {
            sleep.reset(at);
            // Polled again before it is trusted to wake.
            *this.registered = None;
        }
    }

    fn disarm(self: Pin<&mut Self>) {
        *self.project().deadline = None;
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// A connection's future raced against its deadlines.
#[pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    /// The one timer: armed for the next instant worth a look, never later than the
    /// earliest deadline ahead; not armed when nothing is ahead.
    #[pin]
    timer: LazyTimer,
    activity: Arc<Activity>,
    /// Whether it has been polled, and so has armed its timer.
    started: bool,
    /// Whether requests are timed, and so may start on another task.
    times_requests: bool,
    /// The waker last registered with the activity.
    registered: Option<Waker>,
    idle: IdleWatch,
    /// The idle timeout that expired while the connection says goodbye (HTTP/2: GOAWAY)
    /// before it is cut: what it ends with, however it ends.
    saying_goodbye: Option<TimeoutError>,
    /// Raised when the connection has lived its lifetime, is evicted, or is told
    /// goodbye at its idle timeout.
    close: GracefulClose,
    /// Named when the connection times out.
    peer: SocketAddr,
    /// Whether the overload manager may evict the connection, if it has one that
    /// evicts.
    #[cfg(feature = "overload")]
    standing: Option<crate::overload::Standing>,
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    // Inlined into the future that polls it: a connection's task polls every layer's
    // future at each wake-up, and a call per layer showed in each request's cost.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Evictable before the protocol serves anything: a connection that answered
        // its first request is idle the moment its client reads the answer.
        #[cfg(feature = "overload")]
        if !*this.started {
            enrol(this.activity, this.standing, this.close, true);
        }
        // Whether the connection has joined the registry (under load, or without an
        // idle timeout), and whether an eviction's request to close came before this poll
        // of the protocol, which then had it to say goodbye.
        #[cfg(feature = "overload")]
        let evictable = matches!(
            this.standing,
            Some(crate::overload::Standing::Registered(_))
        );
        #[cfg(not(feature = "overload"))]
        let evictable = false;
        #[cfg(feature = "overload")]
        let asked_before_poll = evictable && this.close.is_requested();
        // A request that starts while the inner future reads is seen just below: it
        // needs no wake-up of this task.
        this.activity.set_polling(true);
        let polled = this.inner.poll(cx);
        this.activity.set_polling(false);
        if let Poll::Ready(outcome) = polled {
            // Out of the registry as soon as the connection is over.
            #[cfg(feature = "overload")]
            this.standing.take();
            if let Some(idle) = this.saying_goodbye.take() {
                return Poll::Ready(Err(std::io::Error::from(idle).into()));
            }
            return Poll::Ready(outcome.map_err(Into::into));
        }
        // Evicted, the protocol has had its poll to say goodbye (HTTP/1.1 closes an idle
        // connection then, HTTP/2 writes its GOAWAY): an idle connection, or one whose
        // goodbye would wait on what may never end (see `Standing::to_cut`), is cut now.
        #[cfg(feature = "overload")]
        if asked_before_poll
            && this
                .standing
                .as_ref()
                .is_some_and(crate::overload::Standing::to_cut)
        {
            tracing::debug!(peer = %this.peer, "evicted connection cut");
            this.standing.take();
            return Poll::Ready(Ok(()));
        }
        // A first poll arms the timer, once the protocol has added its deadlines; it
        // enrolled above, and its first look need not again.
        let mut look = !*this.started;
        #[cfg(feature = "overload")]
        let mut enrolled = look;
        if !*this.started {
            *this.started = true;
            *this.times_requests = this.activity.deadlines().request.is_some();
        }
        if *this.times_requests || evictable {
            // Requests start (and streams expire) on other tasks too, and an eviction
            // comes from another connection's: registered for their wake-ups, again only
            // when this task's waker changes or a wake-up has taken the registration,
            // not on every poll.
            if this.activity.take_registration_taken() {
                *this.registered = None;
            }
            loop {
                if !this
                    .registered
                    .as_ref()
                    .is_some_and(|waker| waker.will_wake(cx.waker()))
                {
                    this.activity.register_timer(cx.waker());
                    *this.registered = Some(cx.waker().clone());
                    // Evicted while the protocol was polled, before this registration:
                    // that eviction woke nobody. Polled again, the protocol hears the
                    // request, and the cut is looked at.
                    #[cfg(feature = "overload")]
                    if evictable && !asked_before_poll && this.close.is_requested() {
                        cx.waker().wake_by_ref();
                    }
                }
                // A request that started since the timer was set may end before it.
                if !this.activity.take_rearm() {
                    break;
                }
                look |= this.activity.settle_request(this.timer.deadline());
                // A wake-up that raised it may have taken the registration just now.
                if this.activity.take_registration_taken() {
                    *this.registered = None;
                }
            }
        }
        let mut fired = false;
        loop {
            if !look {
                if !this.timer.as_mut().poll_fired(cx) {
                    return Poll::Pending;
                }
                fired = true;
            }
            look = false;
            // Past its idle timeout and told so, only its cut is ahead: the timer's
            // deadline, looked at only when the timer fires, not at every wake-up. Unless
            // the client opened a stream as the goodbye came, which the protocol took (its
            // last GOAWAY names it as processed, so the client will not retry it): that
            // one is served, under the connection's usual deadlines, and the connection
            // is offered to the evictions again by this look.
            if let Some(idle) = *this.saying_goodbye {
                if !fired {
                    continue;
                }
                if !this.activity.has_open_exchanges() {
                    return Poll::Ready(Err(std::io::Error::from(idle).into()));
                }
                *this.saying_goodbye = None;
            }
            let activity = &**this.activity;
            let next = match activity.check(activity.deadlines(), this.idle) {
                Check::Expired(error) => {
                    activity.shared.expired(error, *this.peer);
                    if let TimeoutError::Idle(_) = error
                        && activity.hears_idle_goodbye()
                    {
                        // Asked to close (the signal wakes the protocol to say goodbye),
                        // out of the registry (an eviction would close nothing more), and
                        // cut once the goodbye has had its time. Unregistered, not gone:
                        // it may go back to serving a stream, and rejoin.
                        this.close.request_cut_by_caller();
                        #[cfg(feature = "overload")]
                        if let Some(standing) = this.standing.as_mut() {
                            *standing = crate::overload::Standing::Unregistered(this.peer.ip());
                        }
                        *this.saying_goodbye = Some(error);
                        this.timer.as_mut().arm(deadline_after(IDLE_GOODBYE));
                        continue;
                    }
                    return Poll::Ready(Err(std::io::Error::from(error).into()));
                }
                Check::WindDown(grace_ends) => {
                    activity.shared.wound_down();
                    this.close.request_cut_by_caller();
                    Some(grace_ends)
                }
                Check::Next(next) => next,
            };
            #[cfg(feature = "overload")]
            if !std::mem::take(&mut enrolled) {
                enrol(this.activity, this.standing, this.close, false);
            }
            // A timer that fires before the next deadline only costs a look then:
            // it is moved when it has fired or when the deadline comes sooner, not on
            // every request.
            match (next, this.timer.deadline()) {
                (Some(at), Some(armed)) if !fired && armed <= at => {}
                (Some(at), _) => this.timer.as_mut().arm(at),
                (None, _) if fired => this.timer.as_mut().disarm(),
                (None, _) => {}
            }
        }
    }
}

/// Offers the connection to its overload manager's evictions, if the manager has
/// any: at its `first_poll`, and again at each look of its timer, as the load changes.
///
/// Only the idle timeout keeps a timer looking for as long as the connection lives.
/// Without one the looks stop: at the first byte under a first-byte timeout alone,
/// until the wind-down under a lifetime alone, between requests under a request
/// timeout. A connection that started at a low load would then never be offered again
/// once the load rose, and never evicted, idle or not, nor for its age. So it joins at
/// its first poll, whatever the load: the registry's lock when it starts and when it
/// ends, and only under an evicting manager and a timeout layer without an idle
/// timeout. (A look every so often until it has joined would wake every such
/// connection's task all the time, however low the load.) With an idle timeout, only
/// the first poll asks whether there is one.
#[cfg(feature = "overload")]
fn enrol(
    activity: &Arc<Activity>,
    standing: &mut Option<crate::overload::Standing>,
    close: &GracefulClose,
    first_poll: bool,
) {
    if let (Some(overload), Some(standing)) = (activity.shared.scaler.overload(), standing.as_mut())
    {
        let whatever_the_load = first_poll && activity.deadlines().idle.is_none();
        overload.enrol(standing, activity, close, whatever_the_load);
    }
}
