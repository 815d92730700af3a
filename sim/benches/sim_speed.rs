//! How fast the simulator runs the game-like scenario: simulated seconds per wall second and
//! engine steps per second, at 1,000 and 10,000 clients.
//!
//! ```text
//! cargo bench -p shoal-sim --bench sim_speed
//! SHOAL_BENCH_SECS=60 SHOAL_BENCH_BIG_CLIENTS=10000 SHOAL_BENCH_BIG_SECS=10 cargo bench -p shoal-sim
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SHOAL_BENCH_CLIENTS` | 1000 | clients of the first run |
//! | `SHOAL_BENCH_SECS` | 60 | simulated seconds of the first run |
//! | `SHOAL_BENCH_BIG_CLIENTS` | 10000 | clients of the second run (0 skips it) |
//! | `SHOAL_BENCH_BIG_SECS` | 10 | simulated seconds of the second run |
//! | `SHOAL_BENCH_SEED` | 1 | seed of both runs |
//! | `SHOAL_BENCH_PROTECTION` | `encrypted` | `none` runs without packet protection |
//! | `SHOAL_BENCH_LARGE` | 65536 | bytes of each client's large message every 10 s (0: none) |
//! | `SHOAL_BENCH_BATCHING` | 1 | 0 runs every happening in one time order (`node_batching` off) |
//! | `SHOAL_BENCH_LOSS` | 1 | percent of datagrams each link loses |
//! | `SHOAL_BENCH_BURST` | 1 | mean length of a loss burst, in datagrams: above 1, each link loses the same share in bursts (Gilbert–Elliott, every datagram of a burst lost) instead of one at a time |
//! | `SHOAL_BENCH_OUTAGE` | 0 | mean length of an outage, in ms: above 0, each link loses the same share in outages in time (`Outages`: down that share of the time, every datagram sent meanwhile lost) instead of one datagram at a time |
//! | `SHOAL_BENCH_CONNECT_WINDOW` | 1000 | ms within which the clients connect, each at a random moment (0: all at the same instant) |
//! | `SHOAL_BENCH_REDUNDANCY` | 1 | `Config::redundancy` of every endpoint: 0 turns forward error correction off |
//! | `SHOAL_BENCH_ACK_DELAY` | 5 | `Config::max_ack_delay` of every endpoint, in ms: 50 (the tick) lets acknowledgements of reliable frames ride on the next tick's packet |
//! | `SHOAL_BENCH_HINTS` | 1 on x86-64 | 0 turns the prefetching of the next nodes' state off (`memory_hints`) |
//! | `SHOAL_BENCH_PER_SECOND` | unset | set: also print the speed of each simulated second (coding turns on connection by connection as losses come, so a lossy run slows over its first 15 s or so) |
//! | `SHOAL_BENCH_TURNS` | 0 | 1: also print where the wall time went, turn by kind of happening (`SimConfig::time_turns`: two clock reads a step, so the run is a few percent slower) |
//! | `SHOAL_BENCH_FROM` | 2 | simulated second the steady state is timed from (12 skips the first round of large messages, which grows every connection's buffers) |

use std::time::{Duration, Instant};

use shoal_proto::Protection;
use shoal_sim::scenario::{run, ScenarioConfig};
use shoal_sim::{BurstLoss, LinkConfig, Outages};

/// mimalloc, not the system allocator: on Linux its heap comes in 2 MiB pages where the kernel
/// offers them (transparent huge pages), and the 10,000-client run is bound by misses over
/// some 450 MB of state, TLB misses among them: about +10% steady speed against glibc's
/// malloc, about as much as glibc with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, and about
/// +2% with mimalloc's huge pages off (`MIMALLOC_ALLOW_THP=0`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `name` from the environment, parsed, or `default` (with a warning if it does not parse).
fn env<T: std::str::FromStr + std::fmt::Display>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v} does not parse; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// `link` losing `loss` of its datagrams: in outages of `outage_ms` on average, or else in
/// bursts of `burst` datagrams on average, or else one at a time.
fn lossy_link(link: LinkConfig, loss: f64, burst: f64, outage_ms: u64) -> LinkConfig {
    if let Some(outages) = Outages::averaging(loss, Duration::from_millis(outage_ms)) {
        return LinkConfig {
            loss: 0.0,
            outages: Some(outages),
            ..link
        };
    }
    match BurstLoss::averaging(loss, burst).filter(|_| burst > 1.0) {
        Some(bursts) => LinkConfig {
            loss: 0.0,
            burst_loss: Some(bursts),
            ..link
        },
        None => LinkConfig { loss, ..link },
    }
}

fn bench(clients: u64, secs: u64, seed: u64, protection: Protection) {
    let defaults = ScenarioConfig::default();
    let loss = env("SHOAL_BENCH_LOSS", defaults.link.loss * 100.0) / 100.0;
    let config = ScenarioConfig {
        link: lossy_link(
            defaults.link,
            loss,
            env("SHOAL_BENCH_BURST", 1.0),
            env("SHOAL_BENCH_OUTAGE", 0_u64),
        ),
        clients: clients as usize,
        duration: Duration::from_secs(secs),
        seed,
        protection,
        large_size: env("SHOAL_BENCH_LARGE", 64 * 1024_usize),
        redundancy: env("SHOAL_BENCH_REDUNDANCY", defaults.redundancy),
        connect_window: Duration::from_millis(env(
            "SHOAL_BENCH_CONNECT_WINDOW",
            defaults.connect_window.as_millis() as u64,
        )),
        max_ack_delay: Duration::try_from_secs_f64(
            env(
                "SHOAL_BENCH_ACK_DELAY",
                defaults.max_ack_delay.as_secs_f64() * 1e3,
            ) / 1e3,
        )
        .unwrap_or(defaults.max_ack_delay),
        node_batching: env("SHOAL_BENCH_BATCHING", 1_u64) != 0,
        memory_hints: env("SHOAL_BENCH_HINTS", u64::from(defaults.memory_hints)) != 0,
        time_turns: env("SHOAL_BENCH_TURNS", 0_u64) != 0,
        ..defaults
    };
    let losses = match (config.link.outages, config.link.burst_loss) {
        (Some(o), _) => format!(
            "{:.2}% loss in outages of {:?} on average",
            o.mean_loss() * 100.0,
            o.mean_down
        ),
        (None, Some(b)) => format!(
            "{:.2}% loss in bursts of {:.1} datagrams",
            b.mean_loss() * 100.0,
            1.0 / b.p_bad_to_good
        ),
        (None, None) => format!("{}% loss", config.link.loss * 100.0),
    };
    println!(
        "{clients} clients at {} Hz for {secs} simulated s (link: {:?} ±{:?}, {losses}; {} B every 10 s per client; {protection:?}; acks within {:?}; {})",
        config.tick_rate,
        config.link.latency,
        config.link.jitter,
        config.large_size,
        config.max_ack_delay,
        match (config.node_batching, config.memory_hints) {
            (true, true) => "node by node within 40 ms windows, prefetching the next ones",
            (true, false) => "node by node within 40 ms windows",
            (false, _) => "one time order",
        }
    );
    // Wall time when the simulated clock passed the end of the connect window plus a
    // second (handshakes done, first round trips settled): the steady state is timed from
    // there to the end of traffic, apart from the connect storm's key agreement (or from
    // `SHOAL_BENCH_FROM`; one that is no duration keeps the default).
    let default_from = config.connect_window + Duration::from_secs(1);
    let settled_at =
        Duration::try_from_secs_f64(env("SHOAL_BENCH_FROM", default_from.as_secs_f64()))
            .unwrap_or(default_from);
    let traffic_end = config.duration;
    let mut settled: Option<Instant> = None;
    let mut ended: Option<Instant> = None;
    let started = Instant::now();
    // Wall time as each simulated second began (for `SHOAL_BENCH_PER_SECOND`).
    let mut marks: Vec<Instant> = Vec::new();
    let report = match run(&config, &mut |now| {
        let simulated = now.saturating_duration_since(shoal_proto::Instant::ZERO);
        if settled.is_none() && simulated >= settled_at {
            settled = Some(Instant::now());
        }
        while simulated.as_secs() as usize >= marks.len() {
            marks.push(Instant::now());
        }
        if ended.is_none() && simulated >= traffic_end {
            ended = Some(Instant::now());
        }
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("  cannot run: {e}");
            return;
        }
    };
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    if std::env::var_os("SHOAL_BENCH_PER_SECOND").is_some() {
        let speeds: Vec<String> = marks
            .windows(2)
            .map(|w| format!("{:.2}", 1.0 / (w[1] - w[0]).as_secs_f64().max(1e-9)))
            .collect();
        println!("  per simulated second: {}", speeds.join(" "));
    }
    let simulated = report.simulated.as_secs_f64();
    let s = &report.sim;
    println!("  wall time                  {wall:>14.2} s");
    println!(
        "  simulated time             {simulated:>14.2} s (incl. {:.1} s drain)",
        simulated - secs as f64
    );
    println!("  simulated s per wall s     {:>14.2}", simulated / wall);
    match (settled, ended) {
        (Some(from), Some(to)) if traffic_end > settled_at => println!(
            "  steady state               {:>14.2} sim-s per wall s (from {:.1} to {:.1} simulated s)",
            (traffic_end - settled_at).as_secs_f64() / (to - from).as_secs_f64().max(1e-9),
            settled_at.as_secs_f64(),
            traffic_end.as_secs_f64()
        ),
        _ => println!("  steady state               (run too short: traffic must last past {:.1} s)", settled_at.as_secs_f64()),
    }
    println!(
        "  engine steps per wall s    {:>14.0}",
        s.steps as f64 / wall
    );
    println!(
        "  datagrams per wall s       {:>14.0}",
        s.datagrams_sent as f64 / wall
    );
    println!(
        "  endpoint events per wall s {:>14.0}",
        s.events as f64 / wall
    );
    println!(
        "  totals: {} steps, {} datagrams ({:.1} B each), {} events, {} violations, {} disconnects",
        s.steps,
        s.datagrams_sent,
        s.bytes_sent as f64 / s.datagrams_sent.max(1) as f64,
        s.events,
        report.violations.total(),
        report.disconnects.iter().map(|(_, n)| n).sum::<u64>()
    );
    let connects = &report.connect_times;
    println!(
        "  {} of {clients} clients connected (p50 {:?}, p99 {:?}, max {:?} from connect to Connected); {} packets declared lost, {} repairs sent, {} packets rebuilt from them, {} probe timeouts",
        report.clients_connected,
        connects.percentile(50.0),
        connects.percentile(99.0),
        connects.max(),
        report.packets_lost,
        report.repairs_sent,
        report.packets_rebuilt,
        report.probe_timeouts
    );
    println!(
        "  engine: {} arrivals, {} wake-ups ({} stale), {} timers",
        s.datagrams_delivered, s.wakeups, s.stale_wakeups, s.timers_fired
    );
    println!(
        "  trace hash {:#018x} (equal for equal runs: a faster engine must keep it)",
        report.trace_hash
    );
    if config.time_turns {
        let t = &report.turn_times;
        println!("  turns, whole run (a server holds more than two connections):");
        for line in t.to_string().lines() {
            println!("    {line}");
        }
        println!(
            "    {:<18} {:>36.2} s (besides the turns; the timers' own clock reads in both)",
            "engine",
            (wall - t.total().nanos as f64 / 1e9).max(0.0)
        );
    }
    println!();
}

fn main() {
    let seed = env("SHOAL_BENCH_SEED", 1_u64);
    let protection = match std::env::var("SHOAL_BENCH_PROTECTION").as_deref() {
        Ok("none") => Protection::None,
        Ok("encrypted") | Err(_) => Protection::Encrypted,
        Ok(other) => {
            eprintln!("SHOAL_BENCH_PROTECTION={other}: expected none or encrypted; encrypting");
            Protection::Encrypted
        }
    };
    bench(
        env("SHOAL_BENCH_CLIENTS", 1000),
        env("SHOAL_BENCH_SECS", 60),
        seed,
        protection,
    );
    let big = env("SHOAL_BENCH_BIG_CLIENTS", 10_000);
    if big > 0 {
        bench(big, env("SHOAL_BENCH_BIG_SECS", 10), seed, protection);
    }
}
