//! The fleet's store on Redis: bans, lifted bans and offence counts in a few keys under
//! a prefix, each change made atomically by a script that also publishes it.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    time::Duration,
};

use futures_util::StreamExt;
use ipnet::IpNet;
use redis::{AsyncConnectionConfig, Client, Script, aio::MultiplexedConnection};
use tokio::sync::mpsc;

use crate::deadline::FAR_FUTURE;

use super::{
    BAN_WEIGHT, Backend, BackendError, BoxFuture, Change, Decision, FleetPolicy, Link, Snapshot,
};

const DEFAULT_PREFIX: &str = "tower-bouncer";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest prefix; a key is the prefix, a suffix and an address.
const MAX_PREFIX: usize = 64;
/// The longest message on the decisions channel this replica reads; longer ones are
/// not the fleet's.
const MAX_MESSAGE: usize = 200;
/// The most bans the store keeps by default, as many as a replica's ban table holds.
const DEFAULT_MAX_BANS: u32 = 65_536;
/// The subscription is pinged every this many timeouts (10 s by default).
const PING_EVERY_TIMEOUTS: u32 = 5;
/// Entries read per `HSCAN` call while reloading: Redis serves others in between.
const SCAN_BATCH: usize = 1000;

/// Redis as a fleet's store.
///
/// Everything lives under `{prefix}:` (the braces make every key hash to one slot):
/// `bans` and `lifted` hashes, one `offences:<key>` hash per offending peer that
/// expires with it, an `epoch`, and a `decisions` channel. Every change is one script
/// call, so replicas never race each other; times are Redis's clock (`TIME`), so
/// replicas' clocks need not agree.
///
/// A URL is `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS (with the
/// crate's `tls` feature too), which trusts the system's roots. For a private CA or a
/// client certificate, build the client with `redis::Client::build_with_tls` and hand
/// it to [`from_client`](Self::from_client). Redis's client builds its TLS
/// configuration on rustls' process-wide crypto provider: a program whose rustls has
/// more than `ring` (this crate's) installs one first
/// (`CryptoProvider::install_default`).
#[derive(Debug, Clone)]
pub struct RedisBackend {
    client: Client,
    prefix: String,
    timeout: Duration,
    max_bans: u32,
}

impl RedisBackend {
    /// The Redis at `url`; nothing is connected until the fleet's task starts.
    ///
    /// # Errors
    ///
    /// A URL Redis's client does not take, or `rediss://` without the `tls` feature.
    pub fn new(url: &str) -> Result<Self, BackendError> {
        Client::open(url)
            .map(Self::from_client)
            .map_err(BackendError::new)
    }

    /// The Redis `client` connects to, as built by the caller (redis-rs 1.x): TLS with
    /// a private CA or a client certificate, say.
    pub fn from_client(client: Client) -> Self {
        Self {
            client,
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            max_bans: DEFAULT_MAX_BANS,
        }
    }

    /// Puts this service's keys under `prefix` (`tower-bouncer` by default), so several
    /// services share one Redis.
    ///
    /// # Errors
    ///
    /// An empty prefix, one over 64 bytes, or one with braces, spaces or control
    /// characters.
    pub fn prefix(mut self, prefix: &str) -> Result<Self, BackendError> {
        let bad = |c: char| c.is_whitespace() || c.is_control() || c == '{' || c == '}';
        if prefix.is_empty() || prefix.len() > MAX_PREFIX || prefix.contains(bad) {
            return Err(BackendError::new(format!(
                "a Redis key prefix is 1 to {MAX_PREFIX} bytes without braces, spaces or \
                 control characters: {prefix:?}"
            )));
        }
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// How long connecting, or any one command, may take before the link is given up
    /// and made again; 2 s by default. Only the fleet's task waits this long.
    ///
    /// # Errors
    ///
    /// A zero timeout.
    pub fn timeout(mut self, timeout: Duration) -> Result<Self, BackendError> {
        if timeout.is_zero() {
            return Err(BackendError::new("a Redis timeout must be above zero"));
        }
        // One too long for the clock (`Duration::MAX`) waits as good as forever: the
        // subscription's pings come every few timeouts, a sum that must not overflow.
        self.timeout = timeout.min(FAR_FUTURE);
        Ok(self)
    }

    /// The most bans the store keeps (65 536 by default): past it, a new ban still
    /// reaches every replica as it is made, but is not kept for replicas that start
    /// later. It bounds what each reload reads.
    ///
    /// # Errors
    ///
    /// Zero.
    pub fn max_bans(mut self, max: u32) -> Result<Self, BackendError> {
        if max == 0 {
            return Err(BackendError::new("a fleet's store keeps at least one ban"));
        }
        self.max_bans = max;
        Ok(self)
    }

    fn keys(&self) -> Keys {
        let tag = format!("{{{}}}", self.prefix);
        Keys {
            bans: format!("{tag}:bans"),
            lifted: format!("{tag}:lifted"),
            epoch: format!("{tag}:epoch"),
            offences: format!("{tag}:offences:"),
            decisions: format!("{tag}:decisions"),
        }
    }

    async fn open(
        &self,
        policy: FleetPolicy,
        decisions: mpsc::Sender<Decision>,
    ) -> Result<Box<dyn Link>, BackendError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(BackendError::new)?;
        let keys = self.keys();
        // Subscribed before the first snapshot, so no decision falls between the two.
        let subscribe = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&keys.decisions).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(self.timeout, subscribe)
            .await
            .map_err(|_| BackendError::new("subscribing to the fleet's decisions timed out"))?
            .map_err(BackendError::new)?;
        let mut link = RedisLink {
            connection,
            keys,
            policy,
            max_bans: self.max_bans,
            scripts: Scripts::new(),
        };
        // Loaded up front: a pipeline of script calls cannot load a script it misses.
        link.scripts.load(&mut link.connection).await?;
        tokio::spawn(forward(pubsub, decisions, self.timeout));
        Ok(Box::new(link))
    }
}

impl Backend for RedisBackend {
    fn connect(
        &self,
        policy: FleetPolicy,
        decisions: mpsc::Sender<Decision>,
    ) -> BoxFuture<'_, Result<Box<dyn Link>, BackendError>> {
        Box::pin(self.open(policy, decisions))
    }
}

/// Reads the decisions channel until the link is dropped or the subscription ends. A
/// subscription only listens, so it would not notice a Redis that stopped answering:
/// it is pinged every few timeouts, and one that does not answer in time ends the
/// link, which the replica then makes again.
async fn forward(pubsub: redis::aio::PubSub, decisions: mpsc::Sender<Decision>, timeout: Duration) {
    let (mut sink, mut messages) = pubsub.split();
    let every = timeout * PING_EVERY_TIMEOUTS;
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            () = decisions.closed() => return,
            _ = pings.tick() => {
                match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) | Err(_) => return,
                }
            }
        };
        let Some(message) = message else {
            return;
        };
        let Some(decision) = parse_decision(message.get_payload_bytes()) else {
            continue;
        };
        if decisions.send(decision).await.is_err() {
            return;
        }
    }
}

/// `ban <key> <remaining ms> <offences>` or `unban <key>`; `None` for anything else.
fn parse_decision(payload: &[u8]) -> Option<Decision> {
    if payload.len() > MAX_MESSAGE {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    let mut words = text.split(' ');
    let decision = match (words.next()?, words.next()?.parse::<IpNet>().ok()?) {
        ("ban", key) => Decision::Ban {
            key,
            remaining: Duration::from_millis(words.next()?.parse().ok()?),
            offences: words.next()?.parse().ok()?,
        },
        ("unban", key) => Decision::Unban { key },
        _ => return None,
    };
    words.next().is_none().then_some(decision)
}

#[derive(Debug, Clone)]
struct Keys {
    bans: String,
    lifted: String,
    epoch: String,
    /// Followed by the peer key.
    offences: String,
    decisions: String,
}

struct RedisLink {
    connection: MultiplexedConnection,
    keys: Keys,
    /// The replica's ban policy, as last given: every script call takes it.
    policy: FleetPolicy,
    max_bans: u32,
    scripts: Scripts,
}

impl Link for RedisLink {
    fn send<'a>(&'a mut self, change: &'a Change) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            // A clone shares the one multiplexed connection.
            let mut connection = self.connection.clone();
            let _: i64 = self
                .invocation(change)
                .invoke_async(&mut connection)
                .await
                .map_err(BackendError::new)?;
            Ok(())
        })
    }

    fn send_all<'a>(
        &'a mut self,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if changes.is_empty() {
                // Redis's client refuses an empty pipeline.
                return Ok(());
            }
            let mut pipeline = redis::pipe();
            for change in changes {
                pipeline.invoke_script(&self.invocation(change)).ignore();
            }
            let mut connection = self.connection.clone();
            pipeline
                .query_async::<()>(&mut connection)
                .await
                .map_err(BackendError::new)
        })
    }

    fn snapshot(&mut self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        Box::pin(async move {
            let (epoch, now): (String, u64) = self
                .scripts
                .epoch
                .key(&self.keys.epoch)
                .arg(random_epoch())
                .invoke_async(&mut self.connection)
                .await
                .map_err(BackendError::new)?;
            let mut bans = Vec::new();
            let hash = self.keys.bans.clone();
            self.scan(&hash, |key, value| {
                let (until, offences) = parse_ban(value)?;
                if until <= now {
                    return Some(Scanned::RunOut);
                }
                bans.push(Decision::Ban {
                    key: key.parse().ok()?,
                    remaining: Duration::from_millis(until - now),
                    offences,
                });
                Some(Scanned::Kept)
            })
            .await?;
            let mut lifted = Vec::new();
            let horizon = now.saturating_sub(millis(self.policy.max_ban));
            let hash = self.keys.lifted.clone();
            self.scan(&hash, |key, value| {
                if value.parse::<u64>().ok()? < horizon {
                    return Some(Scanned::RunOut);
                }
                lifted.push(key.parse().ok()?);
                Some(Scanned::Kept)
            })
            .await?;
            Ok(Snapshot::new(epoch, bans, lifted))
        })
    }

    fn set_policy(&mut self, policy: FleetPolicy) {
        self.policy = policy;
    }
}

/// What reading one entry of a hash found.
enum Scanned {
    Kept,
    /// Run out: dropped from the store.
    RunOut,
}

impl RedisLink {
    /// Reads `hash` in batches, Redis serving others in between; `read` takes each
    /// field and value (`None`: not the fleet's, skipped and left alone). Entries read
    /// as run out are dropped, if they have not changed since.
    async fn scan(
        &mut self,
        hash: &str,
        mut read: impl FnMut(&str, &str) -> Option<Scanned>,
    ) -> Result<(), BackendError> {
        let mut cursor = 0_u64;
        loop {
            let (next, entries): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                .arg(hash)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut self.connection)
                .await
                .map_err(BackendError::new)?;
            let mut prune = self.scripts.prune.key(hash);
            let mut run_out = 0;
            for entry in entries.chunks_exact(2) {
                let (Ok(field), Ok(value)) = (
                    std::str::from_utf8(&entry[0]),
                    std::str::from_utf8(&entry[1]),
                ) else {
                    continue;
                };
                if let Some(Scanned::RunOut) = read(field, value) {
                    prune.arg(field).arg(value);
                    run_out += 1;
                }
            }
            if run_out > 0 {
                let _: i64 = prune
                    .invoke_async(&mut self.connection)
                    .await
                    .map_err(BackendError::new)?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The script call that records `change`. Every script takes the same keys (the ban
    /// list, the peer's record, the lifted keys) and the peer key first.
    fn invocation<'a>(&'a self, change: &Change) -> redis::ScriptInvocation<'a> {
        let (policy, keys, scripts) = (&self.policy, &self.keys, &self.scripts);
        let (script, key) = match *change {
            Change::Offence { key, .. } => (&scripts.offend, key),
            Change::Ban { key, .. } => (&scripts.ban, key),
            Change::Unban { key, .. } => (&scripts.unban, key),
        };
        let mut call = script.key(&keys.bans);
        call.key(format!("{}{key}", keys.offences))
            .key(&keys.lifted)
            .arg(key.to_string());
        match *change {
            Change::Offence { weight, ago, .. } => call
                .arg(weight)
                .arg(millis(policy.window).max(1))
                .arg(millis(policy.first_ban))
                .arg(policy.factor)
                .arg(millis(policy.max_ban))
                .arg(millis(policy.forget_after))
                .arg(&keys.decisions)
                .arg(BAN_WEIGHT)
                .arg(millis(ago))
                .arg(self.max_bans),
            Change::Ban {
                remaining,
                offences,
                issued_ago,
                by_offences,
                ..
            } => call
                .arg(millis(remaining))
                .arg(offences)
                .arg(issued_ago.map_or(-1, |ago| i64::try_from(millis(ago)).unwrap_or(i64::MAX)))
                .arg(millis(policy.forget_after))
                .arg(&keys.decisions)
                .arg(u8::from(by_offences))
                .arg(millis(policy.first_ban))
                .arg(policy.factor)
                .arg(millis(policy.max_ban))
                .arg(self.max_bans),
            Change::Unban { issued_ago, .. } => call.arg(millis(issued_ago)).arg(&keys.decisions),
        };
        call
    }
}

/// A stored ban's end (Redis's clock, ms) and count; `None` if it is not one.
fn parse_ban(value: &str) -> Option<(u64, u32)> {
    let mut fields = value.split(' ');
    let until = fields.next()?.parse().ok()?;
    let offences = fields.next()?.parse().ok()?;
    let _issued: i64 = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((until, offences))
}

/// Milliseconds, at most 2^50 (35 000 years), which Redis's Lua numbers hold exactly
/// and the replicas read back.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).map_or(MAX_MILLIS, |ms| ms.min(MAX_MILLIS))
}

const MAX_MILLIS: u64 = 1 << 50;

/// A fresh epoch, for a store that has none: any value no other replica picks.
fn random_epoch() -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// The scripts, loaded by hash once per connection (redis-rs falls back to `SCRIPT
/// LOAD` when Redis does not know one).
struct Scripts {
    offend: Script,
    ban: Script,
    unban: Script,
    epoch: Script,
    prune: Script,
}

impl Scripts {
    /// Loads every script into Redis.
    async fn load(&self, connection: &mut MultiplexedConnection) -> Result<(), BackendError> {
        for script in [
            &self.offend,
            &self.ban,
            &self.unban,
            &self.epoch,
            &self.prune,
        ] {
            script
                .prepare_invoke()
                .load_async(connection)
                .await
                .map_err(BackendError::new)?;
        }
        Ok(())
    }

    fn new() -> Self {
        macro_rules! script {
            ($file:literal) => {
                Script::new(concat!(
                    include_str!("redis/common.lua"),
                    include_str!(concat!("redis/", $file))
                ))
            };
        }
        Self {
            offend: script!("offend.lua"),
            ban: script!("ban.lua"),
            unban: script!("unban.lua"),
            epoch: script!("epoch.lua"),
            prune: script!("prune.lua"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn decisions_are_read_back_as_published() {
        assert_eq!(
            parse_decision(b"ban 10.0.0.1/32 1500 2"),
            Some(Decision::Ban {
                key: "10.0.0.1/32".parse().unwrap(),
                remaining: Duration::from_millis(1500),
                offences: 2,
            })
        );
        assert_eq!(
            parse_decision(b"unban 2001:db8::/64"),
            Some(Decision::Unban {
                key: "2001:db8::/64".parse().unwrap()
            })
        );
        for junk in [
            &b"ban 10.0.0.1/32 1500"[..],
            b"ban 10.0.0.1/32 1500 2 extra",
            b"ban 10.0.0.1 1500 2",
            b"ban 10.0.0.1/32 -1 2",
            b"unban",
            b"lift 10.0.0.1/32",
            b"",
        ] {
            assert_eq!(
                parse_decision(junk),
                None,
                "{:?}",
                String::from_utf8_lossy(junk)
            );
        }
    }

    #[test]
    fn prefixes_that_would_break_the_keys_are_refused() {
        let backend = RedisBackend::new("redis://127.0.0.1:1/").unwrap();
        for bad in ["", "a b", "{a}", "a\n", &"x".repeat(65)] {
            assert!(backend.clone().prefix(bad).is_err(), "{bad:?}");
        }
        let keys = backend.prefix("api").unwrap().keys();
        assert_eq!(keys.bans, "{api}:bans");
        assert_eq!(keys.decisions, "{api}:decisions");
        assert!(RedisBackend::new("not a url").is_err());
        assert!(
            RedisBackend::new("redis://127.0.0.1:1/")
                .unwrap()
                .timeout(Duration::ZERO)
                .is_err()
        );
    }

    #[test]
    fn a_stored_ban_is_read_back_or_refused_without_panicking() {
        assert_eq!(
            parse_ban("1700000000000 2 -1"),
            Some((1_700_000_000_000, 2))
        );
        assert_eq!(
            parse_ban("1700000000000 2 1699999999000"),
            Some((1_700_000_000_000, 2))
        );
        for junk in [
            "",
            "1 2",
            "1 2 3 4",
            "x 2 3",
            "1 4294967296 3",
            "18446744073709551616 1 1",
        ] {
            assert_eq!(parse_ban(junk), None, "{junk:?}");
        }
        assert_eq!(millis(Duration::MAX), MAX_MILLIS);
    }

    proptest! {
        #[test]
        fn any_message_parses_without_panicking(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_decision(&payload);
        }

        #[test]
        fn any_stored_value_parses_without_panicking(value in "[0-9 x-]{0,40}") {
            let _ = parse_ban(&value);
        }

        #[test]
        fn any_message_of_words_parses_without_panicking(words in proptest::collection::vec("(ban|unban|[0-9./:a-f]{0,20})", 0..6)) {
            let _ = parse_decision(words.join(" ").as_bytes());
        }
    }
}
