//! `shoal-demo`: runs a game-like scenario — one server, many clients — over a simulated
//! network and prints what got through, how fast, and whether every guarantee held.
//!
//! ```text
//! cargo run --release -p shoal-demo
//! cargo run --release -p shoal-demo -- --peers 1000 --loss 5% --latency 40ms --duration 60s --plot latency.svg
//! ```
//!
//! The scenario itself is [`shoal_sim::scenario`]; this binary adds the flags, a progress bar
//! and the plot file, so the library does not carry clap or indicatif.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_sim::scenario::{self, ScenarioConfig};
use shoal_sim::shoal_proto::Protection;
use shoal_sim::units::{
    parse_bandwidth, parse_burst_loss, parse_bytes, parse_duration, parse_outages,
    parse_probability,
};
use shoal_sim::{BurstLoss, LinkConfig, Outages};

/// mimalloc: its heap comes in 2 MiB pages where the kernel offers them, which a run with
/// thousands of peers (bound by cache and TLB misses) needs; see `sim/benches/sim_speed.rs`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run a game-like load — one server, many clients — over a simulated network, check every
/// delivery guarantee, and print a summary.
///
/// Clients send 20 Hz input on the sequenced channel and get 20 Hz state back; both sides send
/// reliable and ordered events a few times a second; the server sends each client a large
/// message every 10 s; clients send requests now and then. Every link (each direction of
/// each client–server pair) gets the impairments below. The run is deterministic: the same
/// flags and seed print the same summary (except the line marked wall-clock).
#[derive(Parser, Debug)]
#[command(name = "shoal-demo", version, about, long_about)]
struct Args {
    /// Number of clients connecting to the one server.
    #[arg(long, default_value_t = 100, value_name = "N")]
    peers: usize,

    /// Simulated time the clients play (`60s`, `500ms`, `2m`); a drain of up to 15 s
    /// follows, until all reliable messages have arrived.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "TIME")]
    duration: Duration,

    /// One-way latency of every link (`40ms`).
    #[arg(long, default_value = "40ms", value_parser = parse_duration, value_name = "TIME")]
    latency: Duration,

    /// Extra one-way delay, uniform between 0 and this, per datagram (keeping each link in
    /// order unless --jitter-reorders).
    #[arg(long, default_value = "5ms", value_parser = parse_duration, value_name = "TIME")]
    jitter: Duration,

    /// Let jitter reorder datagrams (as Linux netem does); by default a datagram never
    /// overtakes an earlier one on the same link, except through --reorder.
    #[arg(long)]
    jitter_reorders: bool,

    /// Independent loss probability per datagram (`5%` or `0.05`).
    #[arg(long, default_value = "1%", value_parser = parse_probability, value_name = "P")]
    loss: f64,

    /// Server → client latency, when it differs from `--latency` (asymmetric links).
    #[arg(long, value_parser = parse_duration, value_name = "TIME")]
    down_latency: Option<Duration>,

    /// Server → client loss, when it differs from `--loss` (asymmetric links).
    #[arg(long, value_parser = parse_probability, value_name = "P")]
    down_loss: Option<f64>,

    /// Gilbert–Elliott burst loss as `ENTER,EXIT[,LOSS_IN_BURST]`: `1%,25%` enters a burst with
    /// probability 1% per datagram, leaves it with 25% (4 datagrams on average) and loses
    /// every datagram inside (or LOSS_IN_BURST of them). Adds to --loss.
    #[arg(long, value_parser = parse_burst_loss, value_name = "ENTER,EXIT[,LOSS]")]
    burst_loss: Option<BurstLoss>,

    /// Outages in time as `SHARE,LENGTH`: `1%,200ms` takes each link down 1% of the time,
    /// 200 ms at a time on average, losing everything sent meanwhile. Unlike --burst-loss,
    /// whose bursts are counted in datagrams, an outage lasts as long on a quiet link. Adds
    /// to --loss.
    #[arg(long, value_parser = parse_outages, value_name = "SHARE,LENGTH")]
    outages: Option<Outages>,

    /// Probability that a datagram is delivered twice (`1%`).
    #[arg(long, default_value = "0", value_parser = parse_probability, value_name = "P")]
    duplicate: f64,

    /// Probability that a datagram is held back by --reorder-delay so later ones overtake it.
    #[arg(long, default_value = "0", value_parser = parse_probability, value_name = "P")]
    reorder: f64,

    /// How long a reordered datagram is held back.
    #[arg(long, default_value = "20ms", value_parser = parse_duration, value_name = "TIME")]
    reorder_delay: Duration,

    /// Bandwidth of every link direction (`1MB/s`, `500KB/s`, `10Mbit/s`, or bytes per
    /// second); unlimited if not given. Datagrams queue behind each other.
    #[arg(long, value_parser = parse_bandwidth, value_name = "RATE")]
    bandwidth: Option<u64>,

    /// Bytes the bandwidth queue of a link holds; a datagram that does not fit is dropped.
    #[arg(long, default_value = "64KiB", value_parser = parse_bytes, value_name = "BYTES")]
    queue: u64,

    /// Largest datagram the links carry, in bytes; larger ones are dropped (and counted).
    /// Below --endpoint-mtu this breaks large messages, on purpose.
    #[arg(long, default_value = "1500", value_parser = parse_bytes, value_name = "BYTES")]
    mtu: u64,

    /// Largest datagram the endpoints send (their `Config::mtu`).
    #[arg(long, default_value_t = 1200, value_name = "BYTES")]
    endpoint_mtu: usize,

    /// Turn packet protection off (clear packets: a speed study of the protocol alone).
    #[arg(long)]
    plain: bool,

    /// State updates per second, each way.
    #[arg(long, default_value_t = 20, value_name = "HZ")]
    tick_rate: u32,

    /// Longest an endpoint waits to acknowledge reliable frames (`Config::max_ack_delay`).
    /// The tick interval (50ms at 20 Hz) lets acknowledgements ride on the next tick's
    /// packets instead of datagrams of their own.
    #[arg(long, default_value = "5ms", value_parser = parse_duration, value_name = "TIME")]
    ack_delay: Duration,

    /// Size of the large message the server sends each client (0: none).
    #[arg(long, default_value = "64KiB", value_parser = parse_bytes, value_name = "BYTES")]
    large_size: u64,

    /// Time between two large messages to one client.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "TIME")]
    large_interval: Duration,

    /// Seed of the whole run: the same seed gives the same run.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,

    /// Run every happening in one global time order, instead of node by node within
    /// windows as long as the shortest link latency (each node sees the same inputs at the
    /// same times either way; only the interleaving across nodes, and so the run's random
    /// draws, differ). Slower with many clients.
    #[arg(long)]
    global_order: bool,

    /// Also write an SVG plot of the latencies: each kind's tail (share of messages slower
    /// than a latency, log-log, with p50/p99/p99.9 guides) and latency over the run.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,

    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

impl Args {
    fn scenario(&self) -> ScenarioConfig {
        let defaults = ScenarioConfig::default();
        let link = self.link();
        let downlink =
            (self.down_latency.is_some() || self.down_loss.is_some()).then(|| LinkConfig {
                latency: self.down_latency.unwrap_or(link.latency),
                loss: self.down_loss.unwrap_or(link.loss),
                ..link
            });
        ScenarioConfig {
            clients: self.peers,
            duration: self.duration,
            seed: self.seed,
            link,
            downlink,
            endpoint_mtu: self.endpoint_mtu,
            protection: if self.plain {
                Protection::None
            } else {
                Protection::Encrypted
            },
            tick_rate: self.tick_rate,
            max_ack_delay: self.ack_delay,
            large_size: usize::try_from(self.large_size).unwrap_or(usize::MAX),
            large_interval: self.large_interval,
            node_batching: !self.global_order,
            ..defaults
        }
    }

    fn link(&self) -> LinkConfig {
        LinkConfig {
            latency: self.latency,
            jitter: self.jitter,
            jitter_reorders: self.jitter_reorders,
            loss: self.loss,
            burst_loss: self.burst_loss,
            outages: self.outages,
            duplicate: self.duplicate,
            reorder: self.reorder,
            reorder_delay: self.reorder_delay,
            bandwidth: self.bandwidth,
            queue_bytes: usize::try_from(self.queue).unwrap_or(usize::MAX),
            mtu: usize::try_from(self.mtu).unwrap_or(usize::MAX),
        }
    }
}

fn progress_bar(args: &Args) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let total_ms = u64::try_from(args.duration.as_millis()).unwrap_or(u64::MAX);
    let bar = ProgressBar::with_draw_target(Some(total_ms), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40.cyan/blue} {msg} simulated ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = args.scenario();
    let bar = progress_bar(&args);
    let total = config.duration;
    let started = std::time::Instant::now();
    let result = scenario::run(&config, &mut |now| {
        let ms = now.as_micros() / 1000;
        if ms > bar.length().unwrap_or(0) {
            bar.set_length(ms);
        }
        bar.set_position(ms);
        let phase = if now.as_micros() > total.as_micros() as u64 {
            " (draining)"
        } else {
            ""
        };
        bar.set_message(format!("{:.1} s{phase}", ms as f64 / 1000.0));
    });
    let wall = started.elapsed();
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("shoal-demo: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{report}");
    let simulated = report.simulated.as_secs_f64();
    let wall_s = wall.as_secs_f64().max(1e-9);
    println!(
        "wall-clock (varies between runs): {simulated:.1} simulated s in {wall_s:.2} wall s = {:.1} simulated s per wall s, {:.0} engine steps per wall s",
        simulated / wall_s,
        report.sim.steps as f64 / wall_s
    );
    if let Some(path) = &args.plot {
        if let Err(e) = std::fs::write(path, report.to_svg()) {
            eprintln!(
                "shoal-demo: cannot write the plot to {}: {e}",
                path.display()
            );
            return ExitCode::from(2);
        }
        eprintln!("plot written to {}", path.display());
    }
    if report.violations.total() > 0 {
        eprintln!(
            "shoal-demo: {} guarantee violations",
            report.violations.total()
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_is_documented_and_the_definition_is_consistent() {
        Args::command().debug_assert();
        let help = Args::command().render_long_help().to_string();
        for arg in Args::command().get_arguments() {
            assert!(
                arg.get_help().is_some() || arg.get_long_help().is_some(),
                "--{} has no help",
                arg.get_id()
            );
        }
        assert!(help.contains("--burst-loss"));
    }

    #[test]
    fn flags_accept_human_units() {
        let args = Args::try_parse_from([
            "shoal-demo",
            "--peers",
            "1000",
            "--loss",
            "5%",
            "--latency",
            "40ms",
            "--duration",
            "60s",
            "--burst-loss",
            "1%,25%",
            "--outages",
            "1%,200ms",
            "--bandwidth",
            "10Mbit/s",
            "--duplicate",
            "0.01",
        ])
        .expect("valid flags");
        let config = args.scenario();
        assert_eq!(config.clients, 1000);
        assert_eq!(config.link.loss, 0.05);
        assert_eq!(config.link.latency, Duration::from_millis(40));
        assert_eq!(config.duration, Duration::from_secs(60));
        assert_eq!(config.link.bandwidth, Some(1_250_000));
        assert_eq!(config.link.duplicate, 0.01);
        assert!(config.link.burst_loss.is_some());
        assert_eq!(
            config.link.outages.map(|o| o.mean_down),
            Some(Duration::from_millis(200))
        );
        assert!(Args::try_parse_from(["shoal-demo", "--loss", "5 percent"]).is_err());
        assert!(Args::try_parse_from(["shoal-demo", "--duration", "60"]).is_err());
    }
}
