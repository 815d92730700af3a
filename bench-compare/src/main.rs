//! Shoal beside renet, ENet (rusty_enet) and KCP: the same in-memory link in virtual time,
//! the same loopback driver, every message checked (sender, bytes, order).
//!
//! `cargo run --release --manifest-path bench-compare/Cargo.toml -- [--quick] [--seeds 3]
//! [--scenario bulk|lossy|many|rtt]...`

mod adapters;
mod harness;
mod link;
mod msg;
mod report;
mod rtt;
mod scenarios;

use clap::Parser;

use adapters::Lib;

/// Scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// 100,000 x 32 B ordered, one client to the server, lossless: messages per second (wall).
    Bulk,
    /// 10% loss each way, 50 ms one way: delivered, latency p50/p99 (virtual time).
    Lossy,
    /// 1,000 and 3,000 clients, 1 x 32 B unreliable per 50 ms each, echoed: server msgs/s, RSS.
    Many,
    /// Loopback UDP ping-pong of a 32-byte reliable message, beside raw UDP.
    Rtt,
}

/// Shoal beside renet, ENet and KCP.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    /// Fewer messages and clients, one seed: under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Seeds (runs) per figure; medians are taken over them.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Scenarios to run (repeat the flag; default all).
    #[arg(long, value_enum)]
    pub scenario: Vec<Scenario>,
    /// Libraries to run (repeat the flag; default all).
    #[arg(long, value_enum)]
    pub lib: Vec<Lib>,
    /// Internal: run one many-clients case in this process and print its figures.
    #[arg(long, hide = true, num_args = 4, value_names = ["LIB", "CLIENTS", "SECONDS", "SEED"])]
    pub child_many: Vec<String>,
}

fn main() {
    let mut args = Args::parse();
    if !args.child_many.is_empty() {
        std::process::exit(report::child_many(&args.child_many));
    }
    if args.quick {
        args.seeds = 1;
    }
    if args.scenario.is_empty() {
        args.scenario = vec![
            Scenario::Bulk,
            Scenario::Lossy,
            Scenario::Many,
            Scenario::Rtt,
        ];
    }
    if args.lib.is_empty() {
        args.lib = Lib::ALL.to_vec();
    }
    report::run(&args);
}
