//! Bans enforced in the kernel: a socket filter on the listener drops the packets of
//! banned peers that keep reconnecting (Linux, feature `kernel-bans`). See
//! [`KernelBans`].

mod program;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::IpAddr,
    num::NonZeroU32,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use ipnet::IpNet;
use socket2::{SockFilter, SockRef};
use tokio::{sync::Notify, time::Instant};

use super::bans::BanTable;
use crate::{
    Conn,
    peer::{Classified, PeerKey, canonical_network, table::Located},
    throttle::LogThrottle,
};
use program::{Instruction, MAX_INSTRUCTIONS, drop_keys_within};

/// Refusals a banned key gets in user space before it goes into the kernel filter.
const DEFAULT_USER_SPACE_REFUSALS: u32 = 10;
/// The most keys in the filter; fewer if they do not fit in `MAX_INSTRUCTIONS`.
const MAX_KEYS: usize = 1024;
/// The most banned keys whose refusals are counted at once; a key refused beyond that
/// stays in user space.
const MAX_COUNTED: usize = 16_384;
/// How often, at the longest, the filter is checked against the ban table: a ban lifted
/// or shortened by other means than [`Bans`](super::Bans) is seen within this.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The kernel filter of one ban table: a classic BPF socket filter on each listener
/// that drops the packets of some banned peers, SYNs included, so that a peer which
/// reconnects in a loop costs no accept, no syscall and no task.
///
/// **Who goes in.** A banned peer's first refusals are answered in user space as
/// before, so a person reads the refusal (`ERROR banned`, a `429`) and knows what
/// happened. A peer that goes on reconnecting while banned (10 refusals by default,
/// [`set_user_space_refusals`](Self::set_user_space_refusals)) is a program, not a
/// person: its key goes into the filter until its ban ends or is lifted, and its
/// `connect` goes unanswered meanwhile. Each ban counts its own refusals: a peer
/// banned again after an unban or the end of its ban is answered as many times anew.
/// The filter holds at most 1024 keys, fewer if they do not fit in the kernel's 4096
/// instructions; when more keys qualify, those refused most often during their ban are
/// kept, a key already in the filter counting double so that two keys do not take
/// turns at every rebuild. The others are refused in user space, as without the
/// filter.
///
/// **Cost.** A packet meets a binary search on the first word of its source: a few
/// dozen instructions with 1000 keys, compiled to native code by the kernel. The
/// listener runs it on every handshake; a connection accepted while a filter is on
/// keeps that filter, and runs it on each packet it receives (it never drops them: the
/// connection's peer was not in it). With no key in it, the filter is taken off. A
/// rebuild, when a key goes in or comes out, builds the program and sets it on every
/// listener: about 0.3 ms for 1000 keys.
///
/// **Behind a load balancer** the packets come from the balancer, not from the peer
/// its PROXY header names: refusals of such connections are not counted, and their
/// peers never go into the filter (unless [moved there](Self::move_to_kernel)). Tell
/// the filter the trusted balancers' networks too
/// ([`set_balancers`](Self::set_balancers); the [`Bouncer`](crate::bouncer::Bouncer)
/// does): a key whose network overlaps one (a direct neighbour of the balancer in its
/// /64, or its /24 with IPv4 keyed by /24) then stays out of the filter and is refused
/// in user space, for the filter would drop every client behind the balancer; and
/// the refusals of such a key, the balancer's own connections without a header
/// included, are not counted.
///
/// **Behind a NAT64 translator** an IPv4 client arrives as `64:ff9b::a.b.c.d` and is
/// keyed by its IPv4 address (see [`PeerKeying`](crate::peer::PeerKeying)), which its
/// packets do not carry: refusals of such connections are not counted either, and
/// their peers are refused in user space.
///
/// **Exempt peers.** The filter drops a key's whole network (a /24 with IPv4 keyed by
/// /24), which may hold an exempt address that user space admits: a key whose network
/// overlaps an [exempt network](crate::peer::PeerKeying::exempt), either way, stays
/// out of the filter and is refused in user space. A reload that makes a peer exempt
/// ([`set_exempt`](crate::peer::PeerKeying::set_exempt)) takes its key out within a
/// second.
///
/// **In [dry run](super::LoginBuilder::dry_run)** the ban check serves banned peers,
/// and the filter drops none of them: it counts no refusal and holds no key, and
/// [`Login::set_dry_run(true)`](super::Login::set_dry_run) takes it off the listeners
/// at once. Keys moved or counted before go in when dry run is turned off, if still
/// banned.
///
/// Get it from [`Bans::kernel_filter`](super::Bans::kernel_filter); every handle of
/// one [`Login`](super::Login) shares one filter.
///
/// ```no_run
/// use std::sync::Arc;
/// use tower_bouncer::{login::Login, serve::Server};
/// # async fn run(service: tower::util::BoxCloneService<tower_bouncer::Conn<tokio::net::TcpStream>, (), tower_bouncer::BoxError>) -> std::io::Result<()> {
/// let login = Login::builder().ban_message(&b"ERROR banned\n"[..]).build().unwrap();
/// // Shared: the filter holds the listener weakly, and stops with the server.
/// let listener = Arc::new(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
/// let kernel = login.bans().kernel_filter();
/// kernel.attach(&listener)?;
/// Server::new(listener).serve(service).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KernelBans {
    table: Arc<BanTable>,
    state: Arc<KernelState>,
}

/// What the kernel filter holds, and what building it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KernelBansStats {
    /// Keys in the filter now.
    pub keys: usize,
    /// The filter's length, in BPF instructions (at most 4096).
    pub instructions: usize,
    /// Listeners the filter is attached to.
    pub sockets: usize,
    /// How many times the filter was rebuilt.
    pub rebuilds: u64,
    /// How long the last rebuild took, in nanoseconds: building the program and
    /// attaching it to every listener.
    pub last_rebuild_nanos: u64,
    /// Attaching a filter to a listener failed (logged).
    pub attach_failures: u64,
}

/// One line: `12 keys in 40 instructions on 1 listener(s), rebuilt 3 times (last
/// 85µs), 0 attach failures`.
impl std::fmt::Display for KernelBansStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} keys in {} instructions on {} listener(s), rebuilt {} times (last {:?}), {} attach failures",
            self.keys,
            self.instructions,
            self.sockets,
            self.rebuilds,
            std::time::Duration::from_nanos(self.last_rebuild_nanos),
            self.attach_failures
        )
    }
}

/// The filter's state, held by the ban table (so that its ban check can count
/// refusals) and by the task that rebuilds the filter.
pub(crate) struct KernelState {
    filter: Mutex<Filter>,
    sockets: Mutex<Sockets>,
    /// Raised when a key may go in or must come out.
    changed: Notify,
    user_space_refusals: AtomicU32,
    keys: AtomicUsize,
    instructions: AtomicUsize,
    rebuilds: AtomicU64,
    last_rebuild_nanos: AtomicU64,
    attach_failures: AtomicU64,
    failure_log: LogThrottle,
}

/// Banned keys refused in user space during their current ban, and the filter built
/// from them.
#[derive(Default)]
struct Filter {
    refused: HashMap<PeerKey, Refused>,
    /// The trusted balancers' networks: a key that overlaps one is neither counted nor
    /// put in, as the filter would drop the balancer with it.
    balancers: Vec<IpNet>,
    program: Vec<Instruction>,
    /// The keys the program was last built for, those in it and those left out for
    /// want of room: while they stay the same, a rebuild would build the same filter.
    wanted: HashSet<PeerKey>,
}

#[derive(Debug, Clone, Copy)]
struct Refused {
    count: u32,
    /// When the ban ends, as last seen.
    until: Instant,
    in_filter: bool,
}

/// The listeners, held weakly: a server that drops its listener closes it.
#[derive(Default)]
struct Sockets {
    listeners: Vec<Weak<dyn AsFd + Send + Sync>>,
    /// Whether a task maintains the filter; only changed under this lock.
    maintained: bool,
}

impl KernelBans {
    pub(crate) fn new(table: Arc<BanTable>, state: Arc<KernelState>) -> Self {
        Self { table, state }
    }

    /// Puts the filter on `listener` now and keeps it up to date, until the listener is
    /// dropped; if the bans go first (the [`Login`](super::Login) and every handle of
    /// it dropped), the filter comes off the listener within a second. A socket carries
    /// one filter: another login's attached to the same listener later (a stack rebuilt
    /// on a reload, say) replaces this one's there for good, and this one neither
    /// rebuilds it nor takes it off. Call it for each
    /// listener, each socket of a `SO_REUSEPORT` group included. Needs a tokio runtime,
    /// for the task that rebuilds the filter.
    ///
    /// The filter holds the listener weakly (an `Arc`, so that dropping the server's
    /// listener still closes the socket and refuses new connections). An
    /// `Arc<tokio::net::TcpListener>` is a [`serve::Listener`](crate::serve::Listener).
    ///
    /// # Errors
    ///
    /// If the kernel refuses the filter (`listener` is not a socket, say).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn attach<L>(&self, listener: &Arc<L>) -> std::io::Result<()>
    where
        L: AsFd + Send + Sync + 'static,
    {
        // Both locks, in the order a rebuild takes them: no rebuild can miss this one.
        let filter = self
            .state
            .filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut sockets = self
            .state
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        install(listener.as_fd(), &filter.program)?;
        Owners::claim(listener.as_fd(), &self.state);
        let weak: Weak<dyn AsFd + Send + Sync> = Arc::downgrade(listener) as _;
        sockets.listeners.push(weak);
        if !sockets.maintained {
            sockets.maintained = true;
            let maintainer = Maintainer {
                state: self.state.clone(),
                released: false,
            };
            tokio::spawn(maintain(Arc::downgrade(&self.table), maintainer));
        }
        Ok(())
    }

    /// How many refusals a banned key gets in user space before its packets are dropped
    /// in the kernel; 10 by default. For every handle, from the next refusal.
    pub fn set_user_space_refusals(&self, refusals: NonZeroU32) {
        self.state
            .user_space_refusals
            .store(refusals.get(), Ordering::Relaxed);
        self.state.changed.notify_one();
    }

    /// Tells the filter the networks of the load balancers whose PROXY headers are
    /// trusted, replacing those told before: a key whose network overlaps one stays out
    /// of the filter (which would drop the balancer, and so every client behind it) and
    /// its refusals are not counted. Keys already in come out at once. Give it the
    /// networks of every PROXY layer in front of the listeners the filter is
    /// [attached](Self::attach) to; the [`Bouncer`](crate::bouncer::Bouncer) gives its
    /// `proxy_protocol.trusted` when it attaches the filter to a listener it serves. An
    /// IPv4-mapped IPv6 network counts as the IPv4 network it carries, and so does one
    /// in NAT64's well-known prefix, as peers are keyed.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use tower_bouncer::{login::Login, proxy_protocol::ProxyProtocolLayer};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let login = Login::builder().build()?;
    /// let proxy = ProxyProtocolLayer::builder().trusted(["10.0.0.0/24".parse()?]).build()?;
    /// let kernel = login.bans().kernel_filter();
    /// kernel.set_balancers(proxy.trusted().iter().copied());
    /// kernel.attach(&Arc::new(tokio::net::TcpListener::bind("0.0.0.0:443").await?))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_balancers(&self, networks: impl IntoIterator<Item = IpNet>) {
        let balancers = networks.into_iter().map(canonical_network).collect();
        self.state
            .filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .balancers = balancers;
        self.state.changed.notify_one();
    }

    /// Moves `ip`'s key into the filter now, without waiting for its refusals (an
    /// operator who knows it floods); `false` if it is not banned, or if its key's
    /// network overlaps an exempt network or a [balancer's](Self::set_balancers) (the
    /// filter would drop a peer that user space serves). It then stays as any key
    /// would: until its ban ends, if there is room for it and not in dry run.
    pub fn move_to_kernel(&self, ip: IpAddr) -> bool {
        let keying = self.table.keying();
        let key = keying.key(ip);
        let Some(remaining) = self.table.banned_for(&classified(key)) else {
            return false;
        };
        if overlaps_any(&key.network(), &keying.exempt_networks()) {
            return false;
        }
        let threshold = self.state.user_space_refusals.load(Ordering::Relaxed);
        let mut filter = self
            .state
            .filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if overlaps_any(&key.network(), &filter.balancers) {
            return false;
        }
        let refused = filter.refused.entry(key).or_insert(Refused {
            count: 0,
            until: Instant::now() + remaining,
            in_filter: false,
        });
        refused.count = refused.count.max(threshold);
        drop(filter);
        self.state.changed.notify_one();
        true
    }

    /// What the filter holds now, and what it cost.
    pub fn stats(&self) -> KernelBansStats {
        let state = &self.state;
        let sockets = state.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        KernelBansStats {
            keys: state.keys.load(Ordering::Relaxed),
            instructions: state.instructions.load(Ordering::Relaxed),
            sockets: sockets
                .listeners
                .iter()
                .filter(|listener| listener.strong_count() > 0)
                .count(),
            rebuilds: state.rebuilds.load(Ordering::Relaxed),
            last_rebuild_nanos: state.last_rebuild_nanos.load(Ordering::Relaxed),
            attach_failures: state.attach_failures.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for KernelBans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelBans")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for KernelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelState").finish_non_exhaustive()
    }
}

impl Default for KernelState {
    fn default() -> Self {
        Self {
            filter: Mutex::default(),
            sockets: Mutex::default(),
            changed: Notify::new(),
            user_space_refusals: AtomicU32::new(DEFAULT_USER_SPACE_REFUSALS),
            keys: AtomicUsize::new(0),
            instructions: AtomicUsize::new(0),
            rebuilds: AtomicU64::new(0),
            last_rebuild_nanos: AtomicU64::new(0),
            attach_failures: AtomicU64::new(0),
            failure_log: LogThrottle::new(Duration::from_secs(5)),
        }
    }
}

impl KernelState {
    /// The ban check refused a connection of `key`, banned for another `remaining`.
    pub(crate) fn refused(&self, key: &PeerKey, remaining: Duration) {
        let threshold = self.user_space_refusals.load(Ordering::Relaxed);
        let mut filter = self.filter.lock().unwrap_or_else(PoisonError::into_inner);
        // A balancer's connection without a header, or a neighbour sharing its key: the
        // key can never go in.
        if overlaps_any(&key.network(), &filter.balancers) {
            return;
        }
        let counted = filter.refused.len();
        let now = Instant::now();
        let until = now + remaining;
        let refused = match filter.refused.get_mut(key) {
            Some(refused) => refused,
            None if counted < MAX_COUNTED => filter.refused.entry(*key).or_insert(Refused {
                count: 0,
                until,
                in_filter: false,
            }),
            None => return,
        };
        // Counted under a ban that has ended since (the peer banned again before a
        // refresh forgot it): this ban counts its own.
        if refused.until <= now {
            refused.count = 0;
        }
        refused.count = refused.count.saturating_add(1);
        refused.until = until;
        // It qualifies; past that, it may outrank a key in a full filter each time its
        // count doubles.
        let count = refused.count;
        drop(filter);
        if count == threshold || (count > threshold && count.is_power_of_two()) {
            self.changed.notify_one();
        }
    }

    /// The ban on `network` was lifted: the refusals of the keys it held that `table`
    /// no longer bans are forgotten (a ban made later counts its own), and those in the
    /// filter come out now.
    pub(crate) fn lifted(&self, network: IpNet, table: &BanTable) {
        let lifted = [network];
        let mut filter = self.filter.lock().unwrap_or_else(PoisonError::into_inner);
        filter.refused.retain(|key, _| {
            !overlaps_any(&key.network(), &lifted) || table.banned_for(&classified(*key)).is_some()
        });
        drop(filter);
        self.changed.notify_one();
    }

    /// Dry run was switched: the filter is brought in line with it now.
    pub(crate) fn recheck(&self) {
        self.changed.notify_one();
    }

    /// Takes the filter off every listener: its ban table is gone, and a filter left on
    /// would drop its keys for as long as the listener lives. Nothing reads the state
    /// after this (every handle held the table), so only the kernel's copy matters.
    fn take_off(&self) {
        let sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        for listener in sockets.listeners.iter().filter_map(Weak::upgrade) {
            // Another login's filter, attached since, stays on.
            if !Owners::release(listener.as_fd(), self) {
                continue;
            }
            if let Err(error) = install(listener.as_fd(), &[]) {
                tracing::warn!(%error, "kernel ban filter could not be taken off a listener");
            }
        }
    }

    /// Brings the filter in line with the ban table; the next time it must be looked at,
    /// or `None` once no listener is left.
    fn refresh(&self, table: &BanTable) -> Option<Instant> {
        let now = Instant::now();
        let threshold = self.user_space_refusals.load(Ordering::Relaxed);
        let mut filter = self.filter.lock().unwrap_or_else(PoisonError::into_inner);
        // A key that qualifies is checked against the table (its ban may have been
        // lifted or extended); the others are forgotten when their ban ends.
        filter.refused.retain(|key, refused| {
            if refused.count < threshold {
                return refused.until > now;
            }
            match table.banned_for(&classified(*key)) {
                Some(remaining) => {
                    refused.until = now + remaining;
                    true
                }
                None => false,
            }
        });
        // In dry run the ban check serves banned peers: the filter drops none of them.
        let dry_run = table.is_dry_run();
        // Nor an exempt peer or a trusted balancer that a key's network holds: such a
        // key stays in user space.
        let exempt = table.keying().exempt_networks();
        let balancers = &filter.balancers;
        let mut ranked: Vec<(u64, bool, PeerKey)> = filter
            .refused
            .iter()
            .filter(|(_, refused)| !dry_run && refused.count >= threshold)
            .filter(|(key, _)| {
                let network = key.network();
                !overlaps_any(&network, &exempt) && !overlaps_any(&network, balancers)
            })
            .map(|(key, refused)| {
                let weight = if refused.in_filter { 2 } else { 1 };
                (u64::from(refused.count) * weight, refused.in_filter, *key)
            })
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked.truncate(MAX_KEYS);
        let wanted: Vec<PeerKey> = ranked.into_iter().map(|(_, _, key)| key).collect();

        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        sockets
            .listeners
            .retain(|listener| listener.strong_count() > 0);
        if sockets.listeners.is_empty() {
            sockets.maintained = false;
            return None;
        }
        // The same keys wanted, and the first of them (by rank) the ones in the filter:
        // their order, or the counts of those left out, changes nothing.
        let in_filter = self.keys.load(Ordering::Relaxed);
        let unchanged = wanted.len() == filter.wanted.len()
            && wanted.iter().all(|key| filter.wanted.contains(key))
            && wanted.iter().take(in_filter).all(|key| {
                filter
                    .refused
                    .get(key)
                    .is_some_and(|refused| refused.in_filter)
            });
        if !unchanged {
            let fitted = self.rebuild(&wanted, &sockets.listeners, &mut filter.program);
            for refused in filter.refused.values_mut() {
                refused.in_filter = false;
            }
            for key in &wanted[..fitted] {
                if let Some(refused) = filter.refused.get_mut(key) {
                    refused.in_filter = true;
                }
            }
            filter.wanted = wanted.into_iter().collect();
        }
        let next_end = filter
            .refused
            .values()
            .filter(|refused| refused.in_filter)
            .map(|refused| refused.until)
            .min();
        let recheck = now + RECHECK_EVERY;
        Some(next_end.map_or(recheck, |end| end.min(recheck)))
    }

    /// Builds the filter for as many of `wanted`, in rank order, as fit, and attaches it
    /// to every listener; returns how many it holds (the first of `wanted`). A kernel
    /// that refuses it (its `optmem_max` too small for a long filter, say) gets one with
    /// half the keys.
    fn rebuild(
        &self,
        wanted: &[PeerKey],
        listeners: &[Weak<dyn AsFd + Send + Sync>],
        program: &mut Vec<Instruction>,
    ) -> usize {
        let began = std::time::Instant::now();
        let mut budget = MAX_INSTRUCTIONS;
        let (built, count) = loop {
            let (built, count) = drop_keys_within(wanted, budget);
            // A filter that holds no key is no filter.
            let built = if count == 0 { Vec::new() } else { built };
            // Every listener gets it, whichever fail.
            let mut failed = None;
            for listener in listeners.iter().filter_map(Weak::upgrade) {
                if !Owners::owns(listener.as_fd(), self) {
                    continue;
                }
                if let Err(error) = install(listener.as_fd(), &built) {
                    failed = Some(error);
                }
            }
            let Some(error) = failed else {
                break (built, count);
            };
            self.attach_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.failure_log.allow() {
                tracing::warn!(%error, keys = count, suppressed, "kernel ban filter refused; trying a shorter one");
            }
            if count == 0 {
                break (built, count);
            }
            budget = built.len() / 2;
        };
        self.keys.store(count, Ordering::Relaxed);
        self.instructions.store(built.len(), Ordering::Relaxed);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        let took = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_rebuild_nanos.store(took, Ordering::Relaxed);
        tracing::debug!(
            keys = count,
            instructions = built.len(),
            took_ns = took,
            "kernel ban filter rebuilt"
        );
        *program = built;
        count
    }
}

/// Which filter each listener carries: a socket has one, and the login that attached
/// it last has it. Another login's filter attached to the same listener since (a stack
/// rebuilt on a reload, say) is neither replaced by this one's rebuilds nor taken off
/// when this one's bans are dropped. Kept for the whole process, one entry a listener:
/// a socket's descriptor and the address of the state whose filter it carries.
struct Owners;

static OWNERS: Mutex<Vec<(RawFd, usize)>> = Mutex::new(Vec::new());

impl Owners {
    fn key(state: &KernelState) -> usize {
        std::ptr::from_ref(state).addr()
    }

    /// `state`'s filter is now on `socket`.
    fn claim(socket: BorrowedFd<'_>, state: &KernelState) {
        let fd = socket.as_raw_fd();
        let mut owners = OWNERS.lock().unwrap_or_else(PoisonError::into_inner);
        owners.retain(|(owned, _)| *owned != fd);
        owners.push((fd, Self::key(state)));
    }

    /// Whether `socket` carries `state`'s filter.
    fn owns(socket: BorrowedFd<'_>, state: &KernelState) -> bool {
        let owners = OWNERS.lock().unwrap_or_else(PoisonError::into_inner);
        owners.contains(&(socket.as_raw_fd(), Self::key(state)))
    }

    /// Gives `socket` up, if it carries `state`'s filter: whether it did.
    fn release(socket: BorrowedFd<'_>, state: &KernelState) -> bool {
        let entry = (socket.as_raw_fd(), Self::key(state));
        let mut owners = OWNERS.lock().unwrap_or_else(PoisonError::into_inner);
        let owned = owners.contains(&entry);
        owners.retain(|owner| *owner != entry);
        owned
    }
}

/// Puts `program` on `socket`, or takes any filter off it if `program` is empty.
fn install(socket: BorrowedFd<'_>, program: &[Instruction]) -> std::io::Result<()> {
    let socket = SockRef::from(&socket);
    if program.is_empty() {
        return match socket.detach_filter() {
            // No filter to take off (`ENOENT`).
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
    }
    let program: Vec<SockFilter> = program
        .iter()
        .map(|instruction| {
            SockFilter::new(
                instruction.code,
                instruction.jt,
                instruction.jf,
                instruction.k,
            )
        })
        .collect();
    socket.attach_filter(&program)
}

/// Whether `conn`'s packets come from its peer as its key names it, so that the filter
/// can drop them: not when a trusted balancer's PROXY header named the peer, since the
/// packets come from the balancer; nor when the peer is an IPv4 client translated into
/// NAT64's well-known prefix, keyed by its IPv4 address while its packets carry the
/// translated IPv6 one. A balancer's own connection, without a header, is not counted
/// either: its key holds a [balancer](KernelBans::set_balancers).
pub(crate) fn sent_by_its_peer<IO>(conn: &Conn<IO>) -> bool {
    #[cfg(feature = "proxy-protocol")]
    if conn
        .extensions()
        .get::<crate::proxy_protocol::ProxiedBy>()
        .is_some()
    {
        return false;
    }
    !crate::peer::is_nat64_translated(conn.peer_addr().ip())
}

/// Whether `network` and one of `networks` share an address: one holds the other.
fn overlaps_any(network: &IpNet, networks: &[IpNet]) -> bool {
    networks
        .iter()
        .any(|other| other.contains(&network.network()) || network.contains(&other.network()))
}

fn classified(key: PeerKey) -> Classified {
    Classified {
        key,
        at: Located::new(&key),
    }
}

/// Rebuilds the filter whenever a key may go in or must come out, and at the end of
/// each ban in it; ends with the ban table (taking the filter off), or once no listener
/// is left.
async fn maintain(table: Weak<BanTable>, mut maintainer: Maintainer) {
    let state = maintainer.state.clone();
    let mut next = Instant::now();
    loop {
        tokio::select! {
            () = state.changed.notified() => {}
            () = tokio::time::sleep_until(next) => {}
        }
        let Some(table) = table.upgrade() else {
            state.take_off();
            return;
        };
        match state.refresh(&table) {
            Some(wake) => next = wake,
            None => {
                maintainer.released = true;
                return;
            }
        }
    }
}

/// The maintaining task's claim: released when the task ends, whichever way (its
/// runtime may drop it), so that the next `attach` starts another.
struct Maintainer {
    state: Arc<KernelState>,
    /// Whether `refresh` released it already, under the lock that `attach` takes.
    released: bool,
}

impl Drop for Maintainer {
    fn drop(&mut self) {
        if !self.released {
            self.state
                .sockets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .maintained = false;
        }
    }
}

#[cfg(test)]
mod tests;
