//! Per-connection cost of the admission layers, each alone and all stacked, against the
//! same inner service with no layer, on one thread and on two threads at once (distinct
//! peers on each).
//!
//! One iteration is one connection: `poll_ready`, `call`, the connection's future run
//! to completion (the inner service finishes at once), and the future dropped. Rates are
//! set too high to refuse, so this is the cost of admitting.
//!
//! ```text
//! cargo bench --bench admission
//! cargo bench --bench admission --features metrics   # with a Prometheus recorder too
//! ```

mod support;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service};
use tower_bouncer::Conn;

use support::*;

/// Benchmarks `make()`'s service on one thread and on two.
fn bench<S, F>(c: &mut Criterion, name: &str, make: F)
where
    F: Fn() -> S,
    S: Service<Conn<Io>, Response = ()> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    let mut group = c.benchmark_group(name);
    group.bench_function("1 thread", |b| {
        let mut service = make();
        b.iter_custom(|iterations| run(&mut service, 0, iterations));
    });
    group.bench_function("2 threads", |b| {
        let service = make();
        b.iter_custom(|iterations| run_threads(&service, 2, iterations));
    });
    group.finish();
}

fn admission(c: &mut Criterion) {
    bench(c, "no layer", inner);
    bench(c, "total limit", || limit().layer(inner()));
    bench(c, "per-peer limit", || peer_limit().layer(inner()));
    bench(c, "rate limit (per peer + global)", || {
        rate().layer(inner())
    });
    bench(c, "all admission layers stacked", || all_admission(inner()));
    // The same, built with a Prometheus recorder in force, as an application that
    // exports its metrics builds them (feature `metrics`).
    #[cfg(feature = "metrics")]
    {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        bench(
            c,
            "all admission layers stacked, metrics to Prometheus",
            || metrics::with_local_recorder(&recorder, || all_admission(inner())),
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = admission
}
criterion_main!(benches);
