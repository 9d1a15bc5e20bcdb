//! The siege's figures: the table, the verdict, the JSON and the plot.

use std::{path::Path, time::Duration};

use plotters::prelude::*;

use super::{
    attacks::{Attack, Sample},
    common::protection::{Tally, default_max_failures},
    fleet::{self, FleetRow, Sharing},
    monitor::Usage,
};

/// The legitimate client was served if at least this share of its requests succeeded.
const SERVED: f64 = 0.95;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Unprotected,
    Protected,
    Haproxy,
    /// Protected, behind a load balancer that does not send the PROXY protocol.
    Balanced,
    /// Protected, behind a load balancer that sends PROXY v2 headers it trusts.
    BalancedProxy,
    /// Protected, with banned peers refused in user space only (no kernel filter).
    UserSpaceBans,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Unprotected => "unprotected",
            Side::Protected => "protected",
            Side::Haproxy => "HAProxy",
            Side::Balanced => "LB, no PROXY",
            Side::BalancedProxy => "LB + PROXY v2",
            Side::UserSpaceBans => "no kernel bans",
        }
    }

    /// Whether the crate's layers protect the server, and so report what they did.
    pub fn is_protected(self) -> bool {
        matches!(
            self,
            Side::Protected | Side::Balanced | Side::BalancedProxy | Side::UserSpaceBans
        )
    }

    fn color(self) -> RGBColor {
        match self {
            Side::Unprotected => RGBColor(200, 50, 40),
            Side::Protected => RGBColor(30, 120, 60),
            Side::Haproxy => RGBColor(40, 80, 190),
            Side::Balanced => RGBColor(150, 110, 20),
            Side::BalancedProxy => RGBColor(20, 150, 150),
            Side::UserSpaceBans => RGBColor(120, 60, 160),
        }
    }
}

/// One attack against one server.
pub struct Row {
    pub attack: Attack,
    pub side: Side,
    /// Connections the attacker opened.
    pub opened: usize,
    pub samples: Vec<Sample>,
    pub usage: Usage,
    pub peak_descriptors: usize,
    pub tally: Tally,
}

impl Row {
    pub fn new(
        attack: Attack,
        side: Side,
        opened: usize,
        samples: Vec<Sample>,
        usage: Usage,
        tally: Tally,
    ) -> Self {
        Self {
            attack,
            side,
            opened,
            peak_descriptors: usage.peak_descriptors,
            samples,
            usage,
            tally,
        }
    }

    pub fn legit_success(&self) -> f64 {
        let ok = self.samples.iter().filter(|s| s.latency.is_some()).count();
        ok as f64 / self.samples.len().max(1) as f64
    }

    /// The `q` quantile of the successful requests' latency. Of the client's 45 or so
    /// requests an attack, a `q` of 0.99 picks the slowest: the table shows the median
    /// and, for the tail, [`Row::latency_max`].
    fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let mut latencies: Vec<Duration> = self.samples.iter().filter_map(|s| s.latency).collect();
        if latencies.is_empty() {
            return None;
        }
        latencies.sort();
        let index = ((latencies.len() - 1) as f64 * q).round() as usize;
        Some(latencies[index])
    }

    /// The slowest successful request. A p99 would need at least 100 requests; the
    /// client makes about 45 an attack (one every 100 ms), so the table shows the maximum
    /// and calls it that.
    fn latency_max(&self) -> Option<Duration> {
        self.samples.iter().filter_map(|s| s.latency).max()
    }

    fn served(&self) -> bool {
        self.legit_success() >= SERVED
    }
}

fn ms(latency: Option<Duration>) -> String {
    latency.map_or_else(
        || "-".to_owned(),
        |l| format!("{:.1} ms", l.as_secs_f64() * 1000.0),
    )
}

/// The table, one line per attack and server.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "attack",
        "server",
        "peak fds",
        "peak memory",
        "legit ok",
        "legit p50",
        "legit max",
        "server cpu",
        "refused",
        "evicted",
        "banned",
        "overload",
    ];
    let mut lines = vec![header.map(str::to_owned).to_vec()];
    for row in rows {
        let tally = |value: u64| {
            if row.side.is_protected() {
                value.to_string()
            } else {
                "-".to_owned()
            }
        };
        lines.push(vec![
            row.attack.name().to_owned(),
            row.side.name().to_owned(),
            row.peak_descriptors.to_string(),
            format!("{:.1} MiB", row.usage.peak_rss_kib as f64 / 1024.0),
            format!("{:.1}%", row.legit_success() * 100.0),
            ms(row.latency_quantile(0.5)),
            ms(row.latency_max()),
            format!("{:.2} s", row.usage.cpu.as_secs_f64()),
            tally(row.tally.refused),
            tally(row.tally.evicted),
            tally(row.tally.banned),
            if row.side.is_protected() && (row.tally.shed > 0 || !row.tally.scaled.is_zero()) {
                format!(
                    "shed {}, {:.0} s scaled",
                    row.tally.shed,
                    row.tally.scaled.as_secs_f64()
                )
            } else {
                "-".to_owned()
            },
        ]);
    }
    let mut out = markdown(&lines);
    out.push_str(
        "\npeak fds, peak memory, server cpu: the server's, over the attack; with HAProxy, \
         the server's and the proxy's added up. legit ok / p50 / max: the share of the \
         legitimate client's requests answered, and the median and the slowest of their \
         latencies (a request every 100 ms, about 45 in a 4 s attack: too few for a \
         p99). refused / evicted / banned: what the protected server's layers did (rates, limits, bans at accept / timeouts and \
         failed-login evictions / peers banned for their offences); overload: idle \
         connections its overload manager shed at the cap, and how long it ran with the \
         timeouts shortened. The others do none of it, or (HAProxy) do not report it here.\n",
    );
    out
}

/// `lines`, the header first, as a Markdown table: the first two columns (what and
/// against what) to the left, the figures to the right.
fn markdown(lines: &[Vec<String>]) -> String {
    let columns = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            lines
                .iter()
                .map(|line| line[column].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (index, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if column < 2 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if index == 0 {
            let rules: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
            out.push_str(&format!("|-{}-|\n", rules.join("-|-")));
        }
    }
    out
}

/// The login flood across a fleet, one line per way of banning.
pub fn fleet_table(rows: &[FleetRow]) -> String {
    let header = [
        "attack",
        "replicas ban",
        "failed tries",
        "refused",
        "legit ok",
    ];
    let mut lines = vec![header.map(str::to_owned).to_vec()];
    for row in rows {
        let failed_tries = if row.banned_everywhere.is_some() {
            row.failed_tries.to_string()
        } else {
            format!("{}, not refused by both", row.failed_tries)
        };
        lines.push(vec![
            fleet::ATTACK.to_owned(),
            row.sharing.name().to_owned(),
            failed_tries,
            row.refused.to_string(),
            format!("{:.1}%", row.legit_success() * 100.0),
        ]);
    }
    let mut out = markdown(&lines);
    out.push_str(&format!(
        "\nfailed tries: wrong passwords the replicas answered before both refused the \
         attacker, who took them in turn, one connection per try, a try every {} ms \
         (sooner, the try right after the fleet's ban can beat the ban's message to the \
         other replica); each replica bans at {} failed logins (the \
         default). refused: its tries answered `ERROR banned`. Alone, a replica counts \
         only the failures it sees; in the fleet, the replicas' counts add up on Redis.\n",
        fleet::PACE.as_millis(),
        default_max_failures(),
    ));
    out
}

/// One sentence comparing the failed tries a fleet allows with those its replicas allow
/// alone.
pub fn fleet_verdict(rows: &[FleetRow]) -> String {
    let tries = |sharing: Sharing| {
        rows.iter().find(|row| row.sharing == sharing).map_or_else(
            || "no figure".to_owned(),
            |row| match row.banned_everywhere {
                Some(_) => format!("{} failed tries", row.failed_tries),
                None => format!(
                    "{} failed tries and was still not refused by both",
                    row.failed_tries
                ),
            },
        )
    };
    format!(
        "A login flood spread over 2 replicas, each banning at {} failed logins: banning alone, the attacker had {} before both refused it; sharing bans on Redis, {}.",
        default_max_failures(),
        tries(Sharing::Alone),
        tries(Sharing::Fleet),
    )
}

/// The attacks under which `side` answered under 95 % of its legitimate client's requests.
fn failed(rows: &[Row], side: Side) -> Vec<&'static str> {
    rows.iter()
        .filter(|row| row.side == side && !row.served())
        .map(|row| row.attack.name())
        .collect()
}

/// Whether the protected server served its legitimate client through every attack: the
/// first sentence of [`verdict`], and the siege's exit status.
pub fn protected_served(rows: &[Row]) -> bool {
    failed(rows, Side::Protected).is_empty()
}

/// One sentence per side saying whether the legitimate client was served through every
/// attack.
pub fn verdict(rows: &[Row]) -> String {
    let failed = |side: Side| failed(rows, side);
    let threshold = SERVED * 100.0;
    let mut out = String::new();
    let protected = failed(Side::Protected);
    if protected.is_empty() {
        out.push_str(&format!(
            "The protected server kept serving its legitimate client through every attack (at least {threshold:.0}% of requests answered in each)."
        ));
    } else {
        out.push_str(&format!(
            "The protected server did NOT keep serving its legitimate client through: {} (under {threshold:.0}% answered).",
            protected.join(", ")
        ));
    }
    let unprotected = failed(Side::Unprotected);
    out.push_str(&format!(
        "\nThe unprotected server failed its legitimate client under {} of {} attacks{}.",
        unprotected.len(),
        rows.iter()
            .filter(|row| row.side == Side::Unprotected)
            .count(),
        if unprotected.is_empty() {
            String::new()
        } else {
            format!(" ({})", unprotected.join(", "))
        }
    ));
    let storm = |side: Side| {
        rows.iter()
            .find(|row| row.attack == Attack::BannedReconnectStorm && row.side == side)
    };
    if let (Some(kernel), Some(user)) = (storm(Side::Protected), storm(Side::UserSpaceBans)) {
        let (kernel_cpu, user_cpu) = (kernel.usage.cpu.as_secs_f64(), user.usage.cpu.as_secs_f64());
        out.push_str(&format!(
            "\nA banned peer reconnecting as fast as it can cost the server {kernel_cpu:.2} s of CPU with bans in the kernel, {user_cpu:.2} s refused in user space ({:.1}%).",
            100.0 * kernel_cpu / user_cpu.max(f64::EPSILON),
        ));
    }
    let balanced = |side: Side| rows.iter().find(|row| row.side == side);
    if let (Some(without), Some(with)) = (balanced(Side::Balanced), balanced(Side::BalancedProxy)) {
        out.push_str(&format!(
            "\nBehind a load balancer, a flood from one client: without the PROXY protocol every client is the balancer, so the flood's per-peer limits fell on everyone and the legitimate client got {:.0}% of its requests answered; with PROXY v2 only the flooder was limited ({:.0}%).",
            without.legit_success() * 100.0,
            with.legit_success() * 100.0,
        ));
    }
    if rows.iter().any(|row| row.side == Side::Haproxy) {
        let haproxy = failed(Side::Haproxy);
        out.push_str(&format!(
            "\nBehind HAProxy the legitimate client was not served through {} of the HTTP attacks{}.",
            haproxy.len(),
            if haproxy.is_empty() {
                String::new()
            } else {
                format!(" ({})", haproxy.join(", "))
            }
        ));
    }
    out
}

/// The figures and the time series, as JSON.
pub fn json(rows: &[Row], fleet_rows: &[FleetRow], duration: &Duration) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "attack": row.attack.name(),
                "server": row.side.name(),
                "attacker_connections": row.opened,
                "peak_descriptors": row.peak_descriptors,
                "peak_memory_kib": row.usage.peak_rss_kib,
                "server_cpu_seconds": row.usage.cpu.as_secs_f64(),
                "legit_success": row.legit_success(),
                "legit_p50_ms": row.latency_quantile(0.5).map(|l| l.as_secs_f64() * 1000.0),
                "legit_max_ms": row.latency_max().map(|l| l.as_secs_f64() * 1000.0),
                "refused": row.tally.refused,
                "metrics_refused": row.tally.metrics_refused,
                "evicted": row.tally.evicted,
                "banned": row.tally.banned,
                "shed": row.tally.shed,
                "scaled_seconds": row.tally.scaled.as_secs_f64(),
                "descriptors": row.usage.series.iter().map(|p| [p.at.as_secs_f64(), p.descriptors as f64]).collect::<Vec<_>>(),
                "legit": row.samples.iter().map(|s| serde_json::json!({
                    "at": s.at.as_secs_f64(),
                    "latency_ms": s.latency.map(|l| l.as_secs_f64() * 1000.0),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let fleet_rows: Vec<serde_json::Value> = fleet_rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "attack": fleet::ATTACK,
                "server": row.sharing.name(),
                "max_failures": default_max_failures(),
                "failed_tries": row.failed_tries,
                "refused": row.refused,
                "refused_by_both_after_seconds": row.banned_everywhere.map(|after| after.as_secs_f64()),
                "legit_success": row.legit_success(),
            })
        })
        .collect();
    let document = serde_json::json!({
        "attack_seconds": duration.as_secs_f64(),
        "runs": rows,
        "fleet": fleet_rows,
    });
    serde_json::to_string_pretty(&document).expect("JSON of plain values") + "\n"
}

/// Server descriptors and legitimate latency over time, one row of two charts per
/// attack, one line per server. Failed legitimate requests are drawn at the top of the
/// latency chart.
pub fn plot(rows: &[Row], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut attacks: Vec<Attack> = Vec::new();
    for row in rows {
        if !attacks.contains(&row.attack) {
            attacks.push(row.attack);
        }
    }
    let root = SVGBackend::new(path, (1200, 300 * attacks.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((attacks.len(), 2));
    for (index, attack) in attacks.iter().enumerate() {
        let runs: Vec<&Row> = rows.iter().filter(|row| row.attack == *attack).collect();
        let end = runs
            .iter()
            .flat_map(|row| row.usage.series.iter().map(|p| p.at.as_secs_f64()))
            .fold(1.0, f64::max);
        let most_fds = runs
            .iter()
            .map(|row| row.peak_descriptors)
            .max()
            .unwrap_or(1) as f64
            * 1.1;
        let mut descriptors = ChartBuilder::on(&panels[index * 2])
            .caption(
                format!("{}: server descriptors", attack.name()),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..end, 0.0..most_fds)?;
        descriptors.configure_mesh().x_desc("seconds").draw()?;
        for row in &runs {
            let color = row.side.color();
            descriptors
                .draw_series(LineSeries::new(
                    row.usage
                        .series
                        .iter()
                        .map(|p| (p.at.as_secs_f64(), p.descriptors as f64)),
                    color.stroke_width(2),
                ))?
                .label(row.side.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2))
                });
        }
        descriptors
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;

        // Failures sit at the top, above the slowest success.
        let ceiling = runs
            .iter()
            .flat_map(|row| row.samples.iter().filter_map(|s| s.latency))
            .max()
            .map_or(10.0, |l| l.as_secs_f64() * 1000.0)
            * 1.2;
        let mut latency = ChartBuilder::on(&panels[index * 2 + 1])
            .caption(
                format!("{}: legit latency (ms; top = failed)", attack.name()),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..end, 0.0..ceiling * 1.05)?;
        latency.configure_mesh().x_desc("seconds").draw()?;
        for row in &runs {
            let color = row.side.color();
            latency.draw_series(row.samples.iter().map(|s| {
                let y = s.latency.map_or(ceiling, |l| l.as_secs_f64() * 1000.0);
                Circle::new((s.at.as_secs_f64(), y), 2, color.filled())
            }))?;
        }
    }
    root.present()?;
    Ok(())
}
