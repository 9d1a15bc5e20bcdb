//! The siege, the README's first command, runs to the end and reports every attack, its
//! protected server serving its legitimate client through each; its
//! fleet part bans at the fleet's threshold.

mod support;

use std::process::Command;

use support::example::example_path;

#[test]
fn the_quick_siege_reports_every_attack_against_both_servers() {
    let json = std::env::temp_dir().join(format!("siege-{}.json", std::process::id()));
    let plot = json.with_extension("svg");
    let output = Command::new(example_path("siege"))
        .arg("--quick")
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("the siege runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    // Before the exit status: the siege exits 3 when the protected server failed, and the
    // table says under which attack.
    if let Err(failed) = protected_served(&stdout, 9) {
        panic!("{failed}\n{stdout}");
    }
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );

    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = figures["runs"].as_array().unwrap();
    // Nine attacks, two servers each; the reconnect storm also against bans kept in user
    // space; and the flood behind HAProxy (installed by .ci/run), without and with the
    // PROXY protocol.
    assert_eq!(runs.len(), 21, "{stdout}");
    let run = |attack: &str, server: &str| {
        runs.iter()
            .find(|run| run["attack"] == attack && run["server"] == server)
            .unwrap_or_else(|| panic!("no {attack} against {server}"))
    };
    // The 2005 flood: the protected server bans its peer and keeps its descriptors; the
    // unprotected one piles them up.
    let protected = run("login flood (2005)", "protected");
    assert!(protected["banned"].as_u64().unwrap() >= 1);
    let unprotected = run("login flood (2005)", "unprotected");
    assert!(
        protected["peak_descriptors"].as_u64().unwrap() * 4
            < unprotected["peak_descriptors"].as_u64().unwrap(),
        "{protected} / {unprotected}"
    );
    // Behind a load balancer, the PROXY protocol is what keeps the legitimate client
    // apart from the flooder.
    let without = run("flood behind an LB", "LB, no PROXY")["legit_success"]
        .as_f64()
        .unwrap();
    let with = run("flood behind an LB", "LB + PROXY v2")["legit_success"]
        .as_f64()
        .unwrap();
    assert!(with >= 0.95 && without <= 0.8, "{without} / {with}");
    // A crowd wider than the cap, by addresses or by kept-alive HTTP/2 connections: the
    // overload manager sheds idle connections and the legitimate client is served, while
    // the unprotected server runs out of its 1024 descriptors. That fails its client
    // about half the time (its accept loop then sleeps a second); in a run where its
    // client's requests fell between those sleeps, its descriptors still show it. These
    // two attacks last 4 s even in the quick siege, time for the crowd to open on a
    // loaded machine; the client's 40 requests leave room for two lost (the 95 % every
    // attack is held to above).
    for attack in ["botnet spray", "HTTP/2 PING crowd"] {
        let protected = run(attack, "protected");
        let unprotected = run(attack, "unprotected");
        let served = protected["legit_success"].as_f64().unwrap();
        let unprotected_served = unprotected["legit_success"].as_f64().unwrap();
        let exhausted = unprotected["peak_descriptors"].as_u64().unwrap() >= 1000;
        assert!(
            (served >= unprotected_served + 0.25 || exhausted)
                && protected["peak_descriptors"].as_u64().unwrap() < 1000
                && protected["shed"].as_u64().unwrap() > 0,
            "{attack}: {protected}, unprotected {unprotected}"
        );
    }
    // A banned peer reconnecting without pause: with bans in the kernel the server sees
    // its first attempts only; kept in user space, it accepts and refuses every one.
    let kernel = run("banned reconnects", "protected")["refused"]
        .as_u64()
        .unwrap();
    let user_space = run("banned reconnects", "no kernel bans")["refused"]
        .as_u64()
        .unwrap();
    assert!(
        kernel < 100 && user_space > 10 * kernel,
        "{kernel} / {user_space}"
    );
    // The Prometheus metrics move with the stats: every refusal at admission counted
    // by both (the PROXY layer's refusals are errors, not admission refusals).
    for run in runs {
        let side = run["server"].as_str().unwrap();
        if ["protected", "no kernel bans", "LB, no PROXY"].contains(&side) {
            assert_eq!(run["metrics_refused"], run["refused"], "{run}");
        }
    }
    assert!(
        run("single-peer flood", "protected")["metrics_refused"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(plot);
}

/// Whether the siege's report (its stdout) says the protected server served its
/// legitimate client through each of `attacks` attacks: at least 95 % in the `legit ok`
/// column of every `protected` row, as many rows as attacks, and the verdict's sentence
/// saying so.
fn protected_served(stdout: &str, attacks: usize) -> Result<(), String> {
    let mut lines = stdout
        .lines()
        .skip_while(|line| !line.starts_with("| attack "));
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_owned())
            .collect()
    };
    let header = cells(lines.next().ok_or("no table in the siege's report")?);
    let column = |name: &str| {
        header
            .iter()
            .position(|cell| cell == name)
            .ok_or(format!("no `{name}` column in the siege's table"))
    };
    let (attack, server, served) = (column("attack")?, column("server")?, column("legit ok")?);
    let mut rows = 0;
    let mut failed = Vec::new();
    for line in lines
        .skip(1) // the header's rule
        .take_while(|line| line.starts_with('|'))
    {
        let row = cells(line);
        if row[server] != "protected" {
            continue;
        }
        rows += 1;
        let percent: f64 = row[served]
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("`{}` is not a percentage: {line}", row[served]))?;
        if percent < 95.0 {
            failed.push(format!("{} ({percent}%)", row[attack]));
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "the protected server answered under 95% of its legitimate client's requests under: {}",
            failed.join(", ")
        ));
    }
    if rows != attacks {
        return Err(format!(
            "{rows} attacks against the protected server in the table, not {attacks}"
        ));
    }
    if !stdout
        .contains("The protected server kept serving its legitimate client through every attack")
    {
        return Err("the siege's verdict does not say the protected server kept serving".into());
    }
    Ok(())
}

/// The check above fails on a report where the protected server failed an attack, by
/// the table or by the verdict, and passes the report the README shows.
#[test]
fn the_verdict_check_fails_when_the_protected_server_failed_its_client() {
    let report = |slowloris: &str, verdict: &str| {
        format!(
            "tower-bouncer siege: 2 attacks\n\n\
             | attack    | server      | peak fds | legit ok | legit p50 |\n\
             |-----------|-------------|----------|----------|-----------|\n\
             | slowloris | unprotected |     1024 |    51.1% |    0.5 ms |\n\
             | slowloris | protected   |      334 |   {slowloris} |    0.7 ms |\n\
             | 401 flood | unprotected |       28 |   100.0% |    0.3 ms |\n\
             | 401 flood | protected   |       27 |   100.0% |    0.6 ms |\n\
             \npeak fds: the server's.\n\n{verdict}\n"
        )
    };
    let kept = "The protected server kept serving its legitimate client through every attack (at least 95% of requests answered in each).";
    let not_kept = "The protected server did NOT keep serving its legitimate client through: slowloris (under 95% answered).";
    assert_eq!(protected_served(&report("100.0%", kept), 2), Ok(()));
    let failed = protected_served(&report(" 94.7%", not_kept), 2).unwrap_err();
    assert!(failed.contains("slowloris (94.7%)"), "{failed}");
    assert!(protected_served(&report("100.0%", not_kept), 2).is_err());
    assert!(protected_served(&report("100.0%", kept), 3).is_err());
    assert!(protected_served("no table", 2).is_err());
}

/// The fleet part alone: one attacker's failed logins alternate between two replicas,
/// which ban it after their own threshold each when alone, and after the threshold in
/// all when they share bans on Redis (installed by .ci/run).
#[cfg(feature = "redis")]
#[test]
fn the_fleet_siege_bans_at_the_fleet_threshold() {
    let json = std::env::temp_dir().join(format!("siege-fleet-{}.json", std::process::id()));
    let output = Command::new(example_path("siege"))
        .args(["--quick", "--fleet-only", "--json"])
        .arg(&json)
        .output()
        .expect("the siege runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("| login flood across 2 replicas "),
        "{stdout}"
    );

    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    assert_eq!(figures["runs"].as_array().unwrap().len(), 0, "{stdout}");
    let fleet = figures["fleet"].as_array().unwrap();
    let run = |server: &str| {
        let run = fleet
            .iter()
            .find(|run| run["server"] == server)
            .unwrap_or_else(|| panic!("no run with the replicas banning {server}"));
        assert!(
            run["refused_by_both_after_seconds"].is_f64(),
            "both replicas refuse the attacker in the end: {run}"
        );
        assert!(run["legit_success"].as_f64().unwrap() >= 0.95, "{run}");
        (
            run["failed_tries"].as_u64().unwrap(),
            run["max_failures"].as_u64().unwrap(),
        )
    };
    // Alone, each replica allows its own threshold; the one try after the fleet's ban may
    // reach the other replica before the ban does.
    let (alone, max_failures) = run("alone");
    assert!(alone >= 2 * max_failures - 1, "{stdout}");
    let (shared, max_failures) = run("fleet");
    assert!(
        shared >= max_failures && shared <= max_failures + 1,
        "{stdout}"
    );
}
