//! What the example servers share: the command-line contract of `shared/EXAMPLES.md`
//! (flags, the `listening on` line, exit status 2 on a bad flag), logging to stderr, and
//! the shutdown signal.

// Each example compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::{fmt::Display, io::Write, net::SocketAddr, process, str::FromStr, time::Duration};

use tokio::net::TcpListener;
use tower_bouncer::{
    http::{HttpService, RequestService},
    login::StatusClassifier,
};

pub mod axum_app;
pub mod login_protocol;
pub mod protection;

use protection::Protection;
use tower_bouncer::bouncer::{Bouncer, ConfigFile, Refusals};

/// The flags every example server takes.
#[derive(Debug, Clone)]
pub struct Args {
    /// `--addr IP:PORT`, default `127.0.0.1:0`.
    pub addr: SocketAddr,
    /// `--unprotected`: no protection layer at all, the baseline for attacks.
    pub unprotected: bool,
    /// The protection flags; ignored with `--unprotected`.
    pub protection: Protection,
    /// The arguments, to read the configuration again on SIGHUP.
    argv: Vec<String>,
    logs_in: bool,
}

impl Args {
    /// Parses the process arguments; a flag that is unknown or a value that does not
    /// parse ends the process with a one-line error and status 2. `name` is the
    /// example's, for `--help`; `logs_in` says whether every connection logs in, so
    /// that the server takes `--login-timeout`.
    pub fn from_env(name: &str, logs_in: bool) -> Self {
        Self::parse(name, logs_in, std::env::args().skip(1))
    }

    /// Parses `argv` (the arguments after the program's name) as [`from_env`] does.
    ///
    /// [`from_env`]: Self::from_env
    pub fn parse(name: &str, logs_in: bool, argv: impl Iterator<Item = String>) -> Self {
        let saved: Vec<String> = argv.collect();
        let file = config_file(&saved).map(|path| {
            ConfigFile::read(path).unwrap_or_else(|error| fail(format_args!("--config {error}")))
        });
        let mut args = Args {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            unprotected: false,
            protection: Protection::new(file, logs_in),
            argv: saved.clone(),
            logs_in,
        };
        let mut argv = saved.into_iter();
        while let Some(flag) = argv.next() {
            match flag.as_str() {
                "--addr" => args.addr = value(&flag, argv.next()),
                "--unprotected" => args.unprotected = true,
                "--config" => {
                    argv.next();
                }
                "-h" | "--help" => {
                    println!("usage: {name} [--addr IP:PORT] [--unprotected] [protection flags]");
                    println!(
                        "  --addr IP:PORT        the address to listen on (default 127.0.0.1:0); the first
                        line on stdout is `listening on IP:PORT`
  --unprotected         no protection at all; protection flags (TLS too) are ignored"
                    );
                    println!("{}", protection::USAGE);
                    if logs_in {
                        println!("{}", protection::LOGIN_TIMEOUT_USAGE);
                    }
                    process::exit(0);
                }
                other => {
                    if !args.protection.parse_flag(other, &mut argv) {
                        fail(format_args!("unknown flag `{flag}` (see --help)"));
                    }
                }
            }
        }
        // The file and the flags together: a file may leave to a flag what it needs.
        if let Err(error) = args.protection.config.validate() {
            fail(args.protection.describe(&error));
        }
        args
    }
}

impl Args {
    /// Puts the protection settings as they are now in force: the `--config` file read
    /// again, the flags over it. A file that is not a regular file (a pipe such as
    /// `<(render)`, read to its end at start, or a FIFO that would wait for a writer) is
    /// not read again: `in_force`, the file last put in force, stands in for it. Returns
    /// the file now in force, or why nothing changed. Blocking: it reads files.
    fn reload(
        &self,
        bouncer: &Bouncer,
        in_force: Option<ConfigFile>,
    ) -> Result<Option<ConfigFile>, String> {
        let file = match config_file(&self.argv) {
            None => None,
            Some(path) => match std::fs::metadata(&path) {
                Ok(metadata) if metadata.is_file() => {
                    Some(ConfigFile::read(&path).map_err(|error| format!("--config {error}"))?)
                }
                Ok(_) => {
                    tracing::warn!(
                        "--config {}: not a regular file, so not read again (a pipe is read \
                         once, at start): the settings last read from it are kept",
                        path.display()
                    );
                    in_force
                }
                Err(error) => return Err(format!("--config {}: {error}", path.display())),
            },
        };
        let mut protection = Protection::new(file, self.logs_in);
        let mut argv = self.argv.iter().cloned();
        while let Some(flag) = argv.next() {
            if matches!(flag.as_str(), "--addr" | "--config") {
                argv.next();
            } else {
                protection.parse_flag(&flag, &mut argv);
            }
        }
        bouncer
            .reload(protection.config.clone())
            .map_err(|error| protection.describe(&error))?;
        Ok(protection.file().cloned())
    }
}

/// The value of `--config`, wherever it is given: the flags override the file. Given
/// twice, the last wins, as with every other flag.
fn config_file(argv: &[String]) -> Option<std::path::PathBuf> {
    argv.iter()
        .rposition(|flag| flag == "--config")
        .map(|at| value("--config", argv.get(at + 1).cloned()))
}

/// The protection the flags ask for, or `None` with `--unprotected` (which then keeps
/// the common default descriptor limit: building the bouncer raises it). A setting
/// that cannot work ended the process when the flags were parsed. On SIGHUP the
/// configuration is read again and reloaded; one that cannot work is logged, and the
/// one in force kept. Unprotected, there is nothing to reload: a SIGHUP is logged, and
/// the server serves on.
pub fn bouncer(args: &Args, refusals: Refusals) -> Option<Bouncer> {
    if args.unprotected {
        ignore_hangups();
        return None;
    }
    let bouncer = args.protection.bouncer(refusals);
    reload_on_hangup(args, &bouncer);
    Some(bouncer)
}

fn reload_on_hangup(args: &Args, bouncer: &Bouncer) {
    use tokio::signal::unix::{SignalKind, signal};

    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: the configuration will not reload");
        return;
    };
    let (args, bouncer) = (args.clone(), bouncer.clone());
    let mut in_force = args.protection.file().cloned();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            // Off the runtime's workers: reading files must not hold up connections.
            let reloaded = tokio::task::spawn_blocking({
                let (args, bouncer, in_force) = (args.clone(), bouncer.clone(), in_force.clone());
                move || args.reload(&bouncer, in_force)
            })
            .await
            .unwrap_or_else(|panic| Err(panic.to_string()));
            match reloaded {
                Ok(file) => {
                    in_force = file;
                    tracing::info!("configuration reloaded");
                }
                Err(error) => {
                    tracing::warn!(%error, "configuration not reloaded: the one in force is kept")
                }
            }
        }
    });
}

/// Catches SIGHUP, whose default action would end the process and drop every live
/// connection, and logs it.
fn ignore_hangups() {
    use tokio::signal::unix::{SignalKind, signal};

    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: a SIGHUP will end the server");
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: unprotected, there is no configuration to reload");
        }
    });
}

/// Parses the value that follows `flag`.
pub fn value<T>(flag: &str, value: Option<String>) -> T
where
    T: FromStr,
    T::Err: Display,
{
    let Some(value) = value else {
        fail(format_args!("`{flag}` needs a value"));
    };
    value
        .parse()
        .unwrap_or_else(|error| fail(format_args!("bad value `{value}` for `{flag}`: {error}")))
}

/// A one-line error on stderr and exit status 2, as the contract says.
pub fn fail(message: impl Display) -> ! {
    eprintln!("error: {message}");
    process::exit(2);
}

/// Every layer's metrics in the Prometheus exposition format, recorded from
/// [`record_metrics`] on.
#[cfg(feature = "metrics")]
static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Records every layer's metrics for Prometheus, for the admin page's `/metrics`: only
/// with an admin page (the recorder's upkeep would wake an idle server every few
/// seconds for nothing). Called before the layers are built: they register their
/// metrics then.
pub fn record_metrics(args: &Args) {
    if args.protection.config.admin.addr.is_some() {
        install_metrics_recorder();
    }
}

/// Installs the Prometheus recorder, for [`rendered_metrics`].
pub fn install_metrics_recorder() {
    #[cfg(feature = "metrics")]
    {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_recommended_naming(true)
            .install_recorder()
            .unwrap_or_else(|error| fail(format_args!("cannot record metrics: {error}")));
        // Histograms are summarised on upkeep; without it they grow with every sample.
        let upkeep = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        METRICS.set(handle).ok();
    }
}

/// The Prometheus exposition of what has been recorded, if the metrics are.
pub fn rendered_metrics() -> Option<String> {
    #[cfg(feature = "metrics")]
    return METRICS.get().map(|handle| handle.render());
    #[cfg(not(feature = "metrics"))]
    None
}

/// Logs go to stderr, never to stdout; `RUST_LOG` overrides the `info` default.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Binds, then prints `listening on IP:PORT` with the real port as the first line of
/// stdout, and flushes it.
pub async fn bind(addr: SocketAddr) -> TcpListener {
    let listener = TcpListener::bind(addr).await.unwrap_or_else(|error| {
        eprintln!("error: cannot listen on {addr}: {error}");
        process::exit(1);
    });
    let local = listener
        .local_addr()
        .expect("a bound socket has an address");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {local}")
        .and_then(|()| stdout.flush())
        .ok();
    listener
}

/// The HTTP adapter over `app`, for the protected servers. As the contract has it,
/// every `401` (gRPC: `UNAUTHENTICATED`) is a failed login, whether or not its request
/// carried credentials; the crate's default counts only those to requests that did.
pub fn http_service<A: RequestService>(app: A) -> HttpService<A> {
    HttpService::builder(app)
        .report_logins(StatusClassifier::default().count_every_failure(true))
        .build()
        .expect("the default settings are valid")
}

/// Serves the admin page on `--admin-addr` (or `admin.addr`), if given, and prints
/// `admin on IP:PORT` as stdout's second line. Unprotected, the page has no layer to
/// show and serves its metrics alone.
pub async fn serve_admin(args: &Args, bouncer: Option<&Bouncer>) {
    #[cfg(feature = "admin")]
    {
        use std::future::IntoFuture;

        let config = &args.protection.config;
        let Some(addr) = config.admin.addr else {
            return;
        };
        let builder = match bouncer {
            Some(bouncer) => bouncer.admin(),
            None => match &config.admin.token {
                Some(token) => tower_bouncer::admin::Admin::builder().token(token.clone()),
                None => tower_bouncer::admin::Admin::builder(),
            },
        };
        #[cfg(feature = "metrics")]
        let builder = match METRICS.get() {
            Some(handle) => builder.metrics(move || handle.render()),
            None => builder,
        };
        let admin = builder
            .build()
            .unwrap_or_else(|error| fail(format_args!("`admin.token` (--admin-token): {error}")));
        let server = admin.bind(addr).await.unwrap_or_else(|error| fail(error));
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "admin on {}", server.local_addr())
            .and_then(|()| stdout.flush())
            .ok();
        tokio::spawn(server.into_future());
    }
    #[cfg(not(feature = "admin"))]
    let _ = (args, bouncer);
}

/// Runs `server` in a task on a runtime worker, not on the main thread, as the crate's
/// `serve` module advises; the unprotected servers run there too, so that both are
/// deployed alike.
pub async fn on_a_worker(server: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(server)
        .await
        .expect("the server's task does not panic");
}

/// How long a server that shuts down waits for its live connections before it cuts
/// them: the default of the crate's accept loop, which the protected servers drain with.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `shutdown` made two, for an unprotected server whose framework drains without a
/// deadline (`axum::serve` and tonic's server wait for every connection, a client that
/// stalls in its request included): the signal to give the framework, and a drain
/// deadline that passes [`DRAIN_TIMEOUT`] after it. Serve until either completes; the
/// connections left at the deadline are cut as the process exits.
pub fn with_drain_deadline(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (
    impl Future<Output = ()> + Send + 'static,
    impl Future<Output = ()> + Send + 'static,
) {
    let (began, draining) = tokio::sync::oneshot::channel();
    let signal = async move {
        shutdown.await;
        began.send(()).ok();
    };
    let deadline = async move {
        // Never, if the server ended before a shutdown.
        if draining.await.is_err() {
            return std::future::pending().await;
        }
        tokio::time::sleep(DRAIN_TIMEOUT).await;
        tracing::info!("drain deadline passed: the connections left are cut");
    };
    (signal, deadline)
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called, so
/// call it before announcing the port: a signal sent right after the `listening on` line
/// must not kill the process.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};

    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    }
}
