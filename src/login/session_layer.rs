use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use pin_project::{pin_project, pinned_drop};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Notify, futures::OwnedNotified},
    time::Sleep,
};
use tower::Service;
use tower_layer::Layer;

use super::{
    Shared,
    session::{EvictReason, Evicted, LoginSession, SessionState},
    startups::StartupSlot,
};
use crate::{
    BoxError, Conn,
    admission::{ResponseFuture, refuse},
    close::Requested,
    deadline::ShrinkingDeadline,
    janitor::Janitor,
    peer::{Classified, cells::CellTable, table::Located},
    striped::{Handle, Striped},
};

/// Gives each connection its [`LoginSession`], enforces eviction, the login timeout and
/// the pre-authentication budget. Get it from
/// [`Login::session_layer`](super::Login::session_layer); put it just above the
/// protocol.
#[derive(Debug, Clone)]
pub struct SessionLayer {
    pub(super) shared: Striped<Shared>,
}

impl<S> Layer<S> for SessionLayer {
    type Service = LoginSessions<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoginSessions {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A connection-level service under a [`SessionLayer`].
#[derive(Debug, Clone)]
pub struct LoginSessions<S> {
    inner: S,
    shared: Striped<Shared>,
}

impl<S> LoginSessions<S> {
    crate::inner_service_accessors!();
}

impl<S, IO> Service<Conn<IO>> for LoginSessions<S>
where
    S: Service<Conn<IO>, Response = ()>,
    S::Error: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Response = ();
    type Error = BoxError;
    type Future = ResponseFuture<SessionFuture<S::Future>, IO>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, conn: Conn<IO>) -> Self::Future {
        let shared = &self.shared;
        shared.start_janitor();
        let peer = shared.keying.classify(conn.peer_addr().ip());
        match shared.startups.admit(peer.as_ref()) {
            Ok(startup) => serve(&mut self.inner, shared, conn, peer, startup),
            Err(reason) => {
                let refusals = shared.stats.refusals(&reason);
                let log = &shared.refusal_log;
                refuse(
                    conn,
                    reason,
                    refusals,
                    &shared.startup_refusal,
                    log,
                    |conn| {
                        // In the budget anyway, so that its count stays true.
                        let startup = shared.startups.take(peer.as_ref());
                        serve(&mut self.inner, shared, conn, peer, startup)
                    },
                )
            }
        }
    }
}

/// Gives a connection that holds `startup` its session, and serves it.
fn serve<S, IO>(
    inner: &mut S,
    shared: &Striped<Shared>,
    mut conn: Conn<IO>,
    peer: Option<Classified>,
    startup: StartupSlot,
) -> ResponseFuture<SessionFuture<S::Future>, IO>
where
    S: Service<Conn<IO>, Response = ()>,
{
    shared.stats.sessions.add();

    let close = conn.graceful_close();
    let state = Arc::new(SessionState::new(shared.local(), peer, close, startup));
    conn.set_login_session(LoginSession {
        state: state.clone(),
    });

    let (live, banned) = match (&shared.live, peer) {
        (Some(live), Some(peer)) => LiveSlot::watch(live, &peer.at, &state, || {
            // In dry run the ban check has served a banned peer: so does this.
            !shared.ban_refusal.is_dry_run() && shared.bans.banned_for(&peer).is_some()
        })
        .unzip(),
        _ => (None, None),
    };
    let future = SessionFuture {
        inner: inner.call(conn),
        evicted: state.close.evicted(),
        login_deadline: shared
            .login_timeout()
            .map(|timeout| Box::pin(ShrinkingDeadline::after(timeout, &shared.scaler))),
        grace: None,
        banned,
        _live: live,
        state,
    };
    ResponseFuture::admitted(future, ())
}

/// A connection's future under its login session: it enforces the login timeout, and
/// cuts the connection once an eviction's grace has run out.
#[pin_project(PinnedDrop)]
#[must_use = "futures do nothing unless polled"]
pub struct SessionFuture<F> {
    #[pin]
    inner: F,
    state: Arc<SessionState>,
    #[pin]
    evicted: Requested,
    login_deadline: Option<Pin<Box<ShrinkingDeadline>>>,
    grace: Option<Pin<Box<Sleep>>>,
    banned: Option<BanNotice>,
    _live: Option<LiveSlot>,
}

impl<F> std::fmt::Debug for SessionFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionFuture")
            .field("authenticated", &self.state.is_authenticated())
            .field("evicting", &self.grace.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for SessionFuture<F>
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
        if let Poll::Ready(outcome) = this.inner.poll(cx) {
            return Poll::Ready(outcome.map_err(Into::into));
        }
        if let Some(deadline) = this.login_deadline
            && let Poll::Ready(limit) = deadline.as_mut().poll_passed(cx, &this.state.shared.scaler)
        {
            *this.login_deadline = None;
            if this.state.awaits_login() {
                this.state.evict(EvictReason::LoginTimeout(limit));
            }
        }
        if let Some(banned) = this.banned
            && let Some(live) = &this.state.shared.live
            && banned.poll_banned(live, cx)
        {
            *this.banned = None;
            this.state.evict(EvictReason::Banned);
        }
        if this.grace.is_none() {
            if this.evicted.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let grace = this.state.shared.eviction_grace;
            *this.grace = Some(Box::pin(tokio::time::sleep(grace)));
        }
        let grace = this.grace.as_mut().expect("set above");
        if grace.as_mut().poll(cx).is_ready() {
            let reason = this.state.reason();
            tracing::debug!(%reason, "evicted connection cut after its grace");
            return Poll::Ready(Err(Evicted { reason }.into()));
        }
        Poll::Pending
    }
}

#[pinned_drop]
impl<F> PinnedDrop for SessionFuture<F> {
    fn drop(self: Pin<&mut Self>) {
        // Handlers may keep the session past the connection; its place in the budget
        // ends with the connection.
        self.state.leave_startups();
    }
}

/// Every peer's live connections, to evict them when their peer is banned.
#[derive(Debug)]
pub(crate) struct LivePeers {
    /// Each peer's count of live connections, with the notice they wait on. A peer
    /// stays at 0 until a sweep, every 10 s, or until a new peer finds the table full:
    /// taking it out with its last connection would cost every connection writes that
    /// other threads contend for.
    peers: Arc<CellTable<Arc<Notify>>>,
    janitor: Janitor,
    /// The bans that have woken live connections so far, counted before each wake-up:
    /// a connection that has seen the same count since its notice last held its waker
    /// has nothing to look for, and looks without the notice's lock.
    bans: AtomicU64,
}

/// How often peers whose connections have all ended are taken out of the table.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl LivePeers {
    pub(super) fn new(max_tracked_peers: usize) -> Self {
        Self {
            peers: Arc::new(CellTable::new(max_tracked_peers)),
            janitor: Janitor::default(),
            bans: AtomicU64::new(0),
        }
    }
}

/// A connection's registration with its peer, dropped with the connection.
struct LiveSlot {
    shared: Arc<Handle<Shared>>,
    at: Located,
}

/// Tells when the connection's peer is banned.
struct BanNotice {
    notified: Pin<Box<OwnedNotified>>,
    /// The ban count and the waker the notice holds, since its last poll.
    seen: Option<(u64, Waker)>,
}

impl BanNotice {
    /// Whether the peer is banned; the task is woken when it is. Inlined where it is
    /// polled, on every wake-up of a connection: a look is one atomic load and a waker
    /// comparison; polling the notice is a call.
    #[inline]
    fn poll_banned(&mut self, live: &LivePeers, cx: &mut Context<'_>) -> bool {
        // Read before the notice is polled: a ban counted after it wakes the waker
        // the poll leaves.
        let bans = live.bans.load(Ordering::Acquire);
        if let Some((seen, waker)) = &self.seen
            && *seen == bans
            && waker.will_wake(cx.waker())
        {
            return false;
        }
        self.poll_notice(bans, cx)
    }

    /// Polls the notice, and keeps the count `bans` read before it.
    fn poll_notice(&mut self, bans: u64, cx: &mut Context<'_>) -> bool {
        if self.notified.as_mut().poll(cx).is_ready() {
            return true;
        }
        match &mut self.seen {
            Some((seen, waker)) if waker.will_wake(cx.waker()) => *seen = bans,
            seen => *seen = Some((bans, cx.waker().clone())),
        }
        false
    }
}

impl LiveSlot {
    /// Registers the connection with its peer, then evicts it if `banned_now` says the
    /// peer is banned already (between the ban check at accept and now). Returns the
    /// registration and a notice of a later ban. The notice is subscribed before
    /// `banned_now` is asked, so a ban at any moment is either seen or notified.
    fn watch(
        live: &LivePeers,
        at: &Located,
        state: &Arc<SessionState>,
        banned_now: impl FnOnce() -> bool,
    ) -> Option<(Self, BanNotice)> {
        let watched = Self::register(live, at, state);
        if banned_now() {
            state.evict(EvictReason::Banned);
        }
        watched
    }

    /// Registers the connection with its peer and subscribes it to the peer's ban;
    /// `None` if the table has no room. [`evict_live`] counts a ban before it wakes the
    /// peer's connections, and the ban is on record before either: a connection
    /// subscribed after the wake-up sees the ban when [`watch`](Self::watch) asks.
    fn register(
        live: &LivePeers,
        at: &Located,
        state: &Arc<SessionState>,
    ) -> Option<(Self, BanNotice)> {
        live.janitor.ensure(&live.peers, SWEEP_EVERY, |peers| {
            peers.retain(|count| count > 0)
        });
        // Peers whose connections have all ended make way for a new one.
        let Ok(counted) = live.peers.change_or_make_way(
            at,
            |count| count == 0,
            |count| Ok::<_, Infallible>(((), Some(count.unwrap_or(0) + 1))),
        );
        let banned = counted.payload?;
        let mut notified = Box::pin(banned.notified_owned());
        notified.as_mut().enable();
        let notice = BanNotice {
            notified,
            seen: None,
        };
        let slot = Self {
            shared: state.shared.clone(),
            at: *at,
        };
        Some((slot, notice))
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        let Some(live) = &self.shared.live else {
            return;
        };
        let Ok(_) = live.peers.change(&self.at, |count| {
            Ok::<_, Infallible>(((), count.map(|count| count.saturating_sub(1))))
        });
    }
}

impl std::fmt::Debug for LiveSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSlot").finish_non_exhaustive()
    }
}

/// Wakes every live connection of the peer `at` so that each evicts itself.
pub(super) fn evict_live(live: &LivePeers, at: &Located) {
    let Ok(found) = live.peers.change(at, |_| Ok::<_, Infallible>(((), None)));
    if let Some(banned) = found.payload {
        live.bans.fetch_add(1, Ordering::Release);
        banned.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::Login;

    fn evicting() -> Login {
        Login::builder()
            .evict_banned_connections(true)
            .build()
            .unwrap()
    }

    /// A session of a connection from `ip`, and where its peer is in the tables.
    fn session(shared: &Arc<Shared>, ip: &str) -> (Arc<SessionState>, Located) {
        let peer = shared.keying.classify(ip.parse().unwrap());
        let startup = shared.startups.admit(peer.as_ref()).unwrap();
        let state = Arc::new(SessionState::new(
            Striped::from_arc(shared.clone()).local(),
            peer,
            crate::GracefulClose::new(),
            startup,
        ));
        (state, peer.unwrap().at)
    }

    #[test]
    fn a_ban_that_lands_right_after_the_check_still_evicts() {
        let login = evicting();
        let shared = &login.shared;
        let (state, at) = session(shared, "192.0.2.1");
        let live = shared.live.as_ref().unwrap();
        let (_slot, mut banned) = LiveSlot::watch(live, &at, &state, || {
            // The check found no ban; the ban and its wake-up land right after.
            evict_live(live, &at);
            false
        })
        .unwrap();
        let mut task = tokio_test::task::spawn(());
        assert!(task.enter(|cx, _| banned.poll_banned(live, cx)));
    }

    #[test]
    fn a_ban_after_the_notice_holds_the_waker_wakes_it_and_is_seen() {
        let login = evicting();
        let shared = &login.shared;
        let live = shared.live.as_ref().unwrap();
        // Two peers, each with one connection that has polled its notice: twice with
        // the same waker, the second time looking without polling.
        let mut connections: Vec<_> = ["192.0.2.1", "192.0.2.2"]
            .into_iter()
            .map(|ip| {
                let (state, at) = session(shared, ip);
                let (slot, mut notice) = LiveSlot::watch(live, &at, &state, || false).unwrap();
                let mut task = tokio_test::task::spawn(());
                for _ in 0..2 {
                    assert!(!task.enter(|cx, _| notice.poll_banned(live, cx)));
                }
                (slot, notice, task, at)
            })
            .collect();
        evict_live(live, &connections[0].3);
        let (_, banned, task, _) = &mut connections[0];
        assert!(task.is_woken());
        assert!(task.enter(|cx, _| banned.poll_banned(live, cx)));
        // Another peer's ban: looked at, not seen.
        let (_, other, task, _) = &mut connections[1];
        assert!(!task.is_woken());
        assert!(!task.enter(|cx, _| other.poll_banned(live, cx)));
    }
}
