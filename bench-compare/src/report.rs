//! Runs the scenarios over seeds and prints markdown tables: medians over seeds, min–max for
//! wall-clock figures, ratios against the best peer. Failures are rows with their reason.

use std::process::Command;

use crate::adapters::Lib;
use crate::scenarios;
use crate::{rtt, Args, Scenario};

/// What one library gave in one scenario: figures from each seed, or why it failed.
type Runs<T> = Result<Vec<T>, String>;

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64
}

fn percentile_f(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// 1234567.0 -> "1.23 M", 12345.0 -> "12.3 k".
fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn is_peer(lib: Lib) -> bool {
    !matches!(lib, Lib::Shoal | Lib::ShoalPlain)
}

/// The best peer's figure (highest if `higher_better`), over the peers that succeeded.
fn best_peer(rows: &[(Lib, Option<f64>)], higher_better: bool) -> Option<(Lib, f64)> {
    rows.iter()
        .filter(|(l, _)| is_peer(*l))
        .filter_map(|(l, v)| v.map(|v| (*l, v)))
        .reduce(|a, b| {
            let better = if higher_better { b.1 > a.1 } else { b.1 < a.1 };
            if better {
                b
            } else {
                a
            }
        })
}

fn ratio(value: f64, best: Option<(Lib, f64)>) -> String {
    match best {
        Some((lib, b)) => format!("{:.2}x {}", value / b, lib.name()),
        None => "—".into(),
    }
}

fn runs<T>(seeds: u64, mut f: impl FnMut(u64) -> Result<T, String>) -> Runs<T> {
    (1..=seeds).map(&mut f).collect()
}

fn progress(what: &str) {
    eprintln!("[bench-compare] {what}");
}

/// Runs everything `args` asks for and prints the report.
pub fn run(args: &Args) {
    let q = args.quick;
    let mut out = String::new();
    out += &header(args);
    for &scenario in &args.scenario {
        match scenario {
            Scenario::Bulk => out += &bulk(args, if q { 20_000 } else { 100_000 }),
            Scenario::Lossy => out += &lossy(args, if q { 5 } else { 20 }),
            Scenario::Many => {
                let sizes: &[usize] = if q { &[200, 600] } else { &[1000, 3000] };
                out += &many(args, sizes, if q { 2 } else { 5 });
            }
            Scenario::Rtt => out += &rtt_table(args, if q { 2_000 } else { 10_000 }),
        }
    }
    println!("{out}");
}

fn versions() -> String {
    let lock = include_str!("../Cargo.lock");
    let mut found = Vec::new();
    let mut name = "";
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = n.trim_matches('"');
        } else if let Some(v) = line.strip_prefix("version = ") {
            if ["renet", "rusty_enet", "kcp", "shoal-proto"].contains(&name) {
                found.push(format!("{name} {}", v.trim_matches('"')));
            }
        }
    }
    found.join(", ")
}

fn header(args: &Args) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc unknown".into());
    let command: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "Command: `cargo run --release --manifest-path bench-compare/Cargo.toml -- {}`\n\n\
         Machine: {cores} cores (nproc), {cpu}; {rustc}. Crates: {}. Seeds: {}.\n\n",
        command.join(" "),
        versions(),
        args.seeds
    )
}

fn failure_row(lib: Lib, why: &str, columns: usize) -> String {
    let mut row = format!("| {} | **failed**: {} |", lib.name(), why.replace('|', "/"));
    for _ in 2..columns {
        row += " |";
    }
    row + "\n"
}

fn bulk(args: &Args, total: u32) -> String {
    let mut results = Vec::new();
    for &lib in &args.lib {
        progress(&format!("bulk {}", lib.name()));
        results.push((lib, runs(args.seeds, |s| scenarios::bulk(lib, total, s))));
    }
    let medians: Vec<(Lib, Option<f64>)> = results
        .iter()
        .map(|(l, r)| {
            let m = r
                .as_ref()
                .ok()
                .map(|v| median(&v.iter().map(|b| b.msgs_per_s).collect::<Vec<_>>()));
            (*l, m)
        })
        .collect();
    let best = best_peer(&medians, true);
    let mut t = format!(
        "### Bulk: {total} x 32 B ordered, one client to the server, lossless\n\n\
         Up to 1,000 messages queued per 1 ms tick of virtual time (fewer when the library \
         pushes back), zero delay; every message checked in order at the server. Wall clock \
         of the whole run (both sides and the link).\n\n\
         | library | messages/s (median) | min–max | vs best peer | virtual time | wire bytes / message |\n\
         |---|---|---|---|---|---|\n"
    );
    for (lib, r) in &results {
        match r {
            Err(e) => t += &failure_row(*lib, e, 6),
            Ok(v) => {
                let rates: Vec<f64> = v.iter().map(|b| b.msgs_per_s).collect();
                let (lo, hi) = min_max(&rates);
                let m = median(&rates);
                t += &format!(
                    "| {} | **{}** | {}–{} | {} | {:.2} s | {:.1} |\n",
                    lib.name(),
                    si(m),
                    si(lo),
                    si(hi),
                    ratio(m, best),
                    median(&v.iter().map(|b| b.virtual_s).collect::<Vec<_>>()),
                    median(&v.iter().map(|b| b.wire_per_msg).collect::<Vec<_>>()),
                );
            }
        }
    }
    t + "\n"
}

fn lossy(args: &Args, seconds: u64) -> String {
    let mut results = Vec::new();
    for &lib in &args.lib {
        progress(&format!("lossy {}", lib.name()));
        results.push((lib, runs(args.seeds, |s| scenarios::lossy(lib, seconds, s))));
    }
    let p99s: Vec<(Lib, Option<f64>)> = results
        .iter()
        .map(|(l, r)| {
            let m = r.as_ref().ok().map(|v| {
                median(
                    &v.iter()
                        .map(|x| percentile(&x.latencies, 0.99))
                        .collect::<Vec<_>>(),
                )
            });
            (*l, m)
        })
        .collect();
    let best = best_peer(&p99s, false);
    let mut t = format!(
        "### Lossy: 10% loss each way, 50 ms one way\n\n\
         16 x 32 B ordered per 16 ms for {seconds} s of virtual time, one client to the \
         server, independent loss (seeded, the same link code for all); latency from send to \
         in-order delivery in virtual time (floor 50 ms). Medians over seeds.\n\n\
         | library | delivered in order | p50 | p99 | max | p99 vs best peer | wire / payload |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for (lib, r) in &results {
        match r {
            Err(e) => t += &failure_row(*lib, e, 7),
            Ok(v) => {
                let fig = |f: &dyn Fn(&scenarios::Lossy) -> f64| {
                    median(&v.iter().map(f).collect::<Vec<_>>())
                };
                let delivered: usize = v.iter().map(|x| x.latencies.len()).sum();
                let sent: u32 = v.iter().map(|x| x.sent).sum();
                let p99 = fig(&|x| percentile(&x.latencies, 0.99));
                t += &format!(
                    "| {} | {delivered}/{sent} | {:.1} ms | **{:.1} ms** | {:.1} ms | {} | {:.2}x |\n",
                    lib.name(),
                    fig(&|x| percentile(&x.latencies, 0.5)) / 1e3,
                    p99 / 1e3,
                    fig(&|x| percentile(&x.latencies, 1.0)) / 1e3,
                    ratio(p99, best),
                    fig(&|x| x.wire_ratio),
                );
            }
        }
    }
    t + "\n"
}

/// In a child process (for its own peak RSS): one many-clients case; prints `key=value`s.
pub fn child_many(a: &[String]) -> i32 {
    let lib = match <Lib as clap::ValueEnum>::from_str(&a[0], true) {
        Ok(l) => l,
        Err(e) => {
            println!("error={e}");
            return 2;
        }
    };
    let parse = |s: &str| s.parse::<u64>().unwrap_or(0);
    match scenarios::many(lib, parse(&a[1]) as usize, parse(&a[2]), parse(&a[3])) {
        Ok(m) => {
            println!(
                "sent={} at_server={} echoed={} server_s={} rss_kib={} datagrams={}",
                m.sent, m.at_server, m.echoed, m.server_s, m.peak_rss_kib, m.datagrams
            );
            0
        }
        Err(e) => {
            println!("error={}", e.replace('\n', " "));
            1
        }
    }
}

fn spawn_many(
    lib: Lib,
    clients: usize,
    seconds: u64,
    seed: u64,
) -> Result<scenarios::Many, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .args(["--child-many", lib.name()])
        .arg(clients.to_string())
        .arg(seconds.to_string())
        .arg(seed.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if let Some(e) = text.trim().strip_prefix("error=") {
        return Err(e.to_string());
    }
    if !output.status.success() {
        return Err(format!(
            "child exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let get = |k: &str| -> f64 {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let m = scenarios::Many {
        sent: get("sent") as u64,
        at_server: get("at_server") as u64,
        echoed: get("echoed") as u64,
        server_s: get("server_s"),
        peak_rss_kib: get("rss_kib") as u64,
        datagrams: get("datagrams") as u64,
    };
    if m.sent == 0 || (m.echoed as f64) < 0.99 * m.sent as f64 {
        return Err(format!(
            "only {} of {} echoes arrived on a lossless link ({} reached the server)",
            m.echoed, m.sent, m.at_server
        ));
    }
    Ok(m)
}

fn many(args: &Args, sizes: &[usize], seconds: u64) -> String {
    let mut t = format!(
        "### Many: 1 x 32 B unreliable per 50 ms per client, echoed by the server\n\n\
         Lossless link, 1 ms one way; clients spread over five 10 ms slots, everyone polled \
         every 10 ms; {seconds} s of virtual time after all clients connected. Server \
         messages/s = messages the server received and echoed per second of wall time spent in \
         the server's own calls (datagrams in, polls, sends); datagrams per message counts both \
         directions (the echo itself is two). Each library and size runs in a \
         child process: peak RSS (VmHWM) is that whole process, the clients' state included. \
         A run where fewer than 99% of the echoes arrive fails.\n\n\
         | library | clients | echoes / sent | server messages/s (median) | min–max | vs best peer | server µs per message | datagrams per message | peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    let mut shoal_cost: Vec<(usize, f64)> = Vec::new();
    for &n in sizes {
        let mut results = Vec::new();
        for &lib in &args.lib {
            progress(&format!("many {} x{n}", lib.name()));
            results.push((lib, runs(args.seeds, |s| spawn_many(lib, n, seconds, s))));
        }
        let rate = |m: &scenarios::Many| m.at_server as f64 / m.server_s;
        let medians: Vec<(Lib, Option<f64>)> = results
            .iter()
            .map(|(l, r)| {
                (
                    *l,
                    r.as_ref()
                        .ok()
                        .map(|v| median(&v.iter().map(rate).collect::<Vec<_>>())),
                )
            })
            .collect();
        let best = best_peer(&medians, true);
        for (lib, r) in &results {
            match r {
                Err(e) => {
                    let mut row = failure_row(*lib, e, 9);
                    row = row.replacen(" | **failed**", &format!(" | {n} | **failed**"), 1);
                    t += &row[..row.len() - 3];
                    t += "\n";
                }
                Ok(v) => {
                    let rates: Vec<f64> = v.iter().map(rate).collect();
                    let (lo, hi) = min_max(&rates);
                    let m = median(&rates);
                    let echoed: u64 = v.iter().map(|x| x.echoed).sum();
                    let sent: u64 = v.iter().map(|x| x.sent).sum();
                    let rss = median(&v.iter().map(|x| x.peak_rss_kib as f64).collect::<Vec<_>>());
                    if *lib == Lib::Shoal {
                        shoal_cost.push((n, 1e6 / m));
                    }
                    t += &format!(
                        "| {} | {n} | {echoed}/{sent} | **{}** | {}–{} | {} | {:.2} | {:.2} | {:.0} MiB |\n",
                        lib.name(),
                        si(m),
                        si(lo),
                        si(hi),
                        ratio(m, best),
                        1e6 / m,
                        v.iter().map(|x| x.datagrams).sum::<u64>() as f64
                            / v.iter().map(|x| x.at_server).sum::<u64>() as f64,
                        rss / 1024.0
                    );
                }
            }
        }
    }
    if let [(n1, c1), .., (n2, c2)] = shoal_cost[..] {
        t += &format!(
            "\nShoal (protected), server cost per message: {c1:.2} µs at {n1} clients, \
             {c2:.2} µs at {n2}: **{:.2}x** at {:.0}x the clients.\n",
            c2 / c1,
            n2 as f64 / n1 as f64
        );
    }
    t + "\n"
}

fn rtt_table(args: &Args, pings: usize) -> String {
    let mut t = format!(
        "### Round trip over loopback UDP\n\n\
         A 32 B message on the reliable ordered channel and its echo, {pings} pings per run \
         after 200 warm-up, one at a time; both sides in one thread spinning two non-blocking \
         sockets on 127.0.0.1 (the same driver for every library); raw UDP is the same \
         ping-pong with no library. Medians over runs; datagrams per round trip counts what \
         both sides sent, the handshake and warm-up included.\n\n\
         | | p50 | p99 | p50 vs raw UDP | p50 vs best peer | datagrams per round trip |\n\
         |---|---|---|---|---|---|\n"
    );
    progress("rtt raw UDP");
    let raw = runs(args.seeds, |_| rtt::raw_udp(pings));
    let mut results = Vec::new();
    for &lib in &args.lib {
        progress(&format!("rtt {}", lib.name()));
        let trips = runs(args.seeds, |s| rtt::library(lib, pings, s)).map(|runs| {
            let per_ping: Vec<f64> = runs.iter().map(|r| r.datagrams_per_ping).collect();
            let samples: Vec<Vec<f64>> = runs.into_iter().map(|r| r.samples).collect();
            (samples, median(&per_ping))
        });
        results.push((lib, trips));
    }
    let p = |v: &Vec<Vec<f64>>, q: f64| {
        median(&v.iter().map(|s| percentile_f(s, q)).collect::<Vec<_>>())
    };
    let raw_p50 = raw.as_ref().ok().map(|v| p(v, 0.5));
    let p50s: Vec<(Lib, Option<f64>)> = results
        .iter()
        .map(|(l, r)| (*l, r.as_ref().ok().map(|(v, _)| p(v, 0.5))))
        .collect();
    let best = best_peer(&p50s, false);
    match &raw {
        Ok(v) => {
            t += &format!(
                "| raw UDP | {:.1} µs | {:.1} µs | 1.00x | | 2 |\n",
                p(v, 0.5),
                p(v, 0.99)
            )
        }
        Err(e) => t += &format!("| raw UDP | **failed**: {e} | | | | |\n"),
    }
    for (lib, r) in &results {
        match r {
            Err(e) => t += &failure_row(*lib, e, 6),
            Ok((v, per_ping)) => {
                let p50 = p(v, 0.5);
                t += &format!(
                    "| {} | **{:.1} µs** | {:.1} µs | {} | {} | {:.2} |\n",
                    lib.name(),
                    p50,
                    p(v, 0.99),
                    raw_p50.map_or("—".into(), |r| format!("{:.2}x", p50 / r)),
                    ratio(p50, best),
                    per_ping
                );
            }
        }
    }
    t + "\n"
}
