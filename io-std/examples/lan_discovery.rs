//! LAN discovery: a game server advertises itself; a player lists the servers it finds.
//!
//! ```text
//! cargo run -p shoal-std --example lan_discovery -- --serve [--name "Bob's chess"] [--secs N]
//! cargo run -p shoal-std --example lan_discovery
//! ```
//!
//! Defaults stay on this machine: the server's responder listens on `127.0.0.1` at the
//! discovery port (47777) and the seeker asks `127.0.0.1` only. Add `--lan` to both to use the
//! network: the responder binds `0.0.0.0` and joins the IPv6 group, the seeker broadcasts and
//! multicasts. `--port P` changes the discovery port.
//!
//! The advertised data is `shoal-lan-example;v=1;players=N;name=NAME`; the seeker's verify
//! hook keeps only answers with that prefix and version, then connects to the first one.

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use shoal_std::discovery::{LanConfig, LanResponder, LanSeeker, ResponderConfig, DEFAULT_PORT};
use shoal_std::{Config, Driver, Event};

const PREFIX: &str = "shoal-lan-example;v=1;";

struct Args {
    serve: bool,
    lan: bool,
    port: u16,
    name: String,
    secs: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        serve: false,
        lan: false,
        port: DEFAULT_PORT,
        name: "Shoal game".into(),
        secs: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--serve" => args.serve = true,
            "--lan" => args.lan = true,
            "--port" => args.port = value(&mut it, "--port")?,
            "--secs" => args.secs = value(&mut it, "--secs")?,
            "--name" => args.name = it.next().ok_or("--name needs a value")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn value<T: std::str::FromStr>(
    it: &mut impl Iterator<Item = String>,
    flag: &str,
) -> Result<T, String> {
    it.next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} needs a number"))
}

fn main() -> io::Result<()> {
    let args = parse_args().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if args.serve {
        serve(&args)
    } else {
        seek(&args)
    }
}

fn advert(name: &str, players: usize) -> Vec<u8> {
    let mut data = format!("{PREFIX}players={players};name={name}").into_bytes();
    data.truncate(shoal_std::discovery::MAX_APP_DATA);
    data
}

fn serve(args: &Args) -> io::Result<()> {
    let ip = if args.lan {
        Ipv4Addr::UNSPECIFIED
    } else {
        Ipv4Addr::LOCALHOST
    };
    let mut server = Driver::bind((ip, 0), Config::default())?;
    let mut players = 0;
    let mut responder = LanResponder::bind(ResponderConfig {
        port: args.port,
        bind_v4: ip,
        ipv6: args.lan,
        shoal_port: server.local_addr().port(),
        data: advert(&args.name, players),
        ..ResponderConfig::default()
    })?;
    if let Some(e) = responder.ipv6_error() {
        println!("[serve] no IPv6 discovery: {e}");
    }
    println!(
        "[serve] {:?}: game on {}, discovery on port {} for {} s",
        args.name,
        server.local_addr(),
        responder.local_addr()?.port(),
        args.secs
    );
    let end = Instant::now() + Duration::from_secs(args.secs);
    while Instant::now() < end {
        server.poll(Some(Duration::from_millis(10)))?;
        for event in server.events() {
            match event {
                Event::Connected { remote: addr, .. } => {
                    players += 1;
                    println!("[serve] player from {addr}; {players} playing");
                }
                Event::Disconnected { .. } => players = players.saturating_sub(1),
                _ => continue,
            }
            responder.set_data(advert(&args.name, players))?;
        }
        responder.update()?;
    }
    println!("[serve] done; {:?}", responder.stats());
    Ok(())
}

fn seek(args: &Args) -> io::Result<()> {
    let config = if args.lan {
        LanConfig {
            port: args.port,
            ..LanConfig::default()
        }
    } else {
        LanConfig::loopback(args.port)
    };
    let found = LanSeeker::new(config)?.run(Duration::from_secs(1), |peer| {
        peer.data.starts_with(PREFIX.as_bytes())
    })?;
    for failure in &found.failures {
        println!("[seek] could not ask {}: {}", failure.target, failure.error);
    }
    println!(
        "[seek] {} game(s) found ({} refused by the version check)",
        found.peers.len(),
        found.refused
    );
    for peer in &found.peers {
        println!("  {}  {}", peer.addr, String::from_utf8_lossy(&peer.data));
    }
    let Some(first) = found.peers.first() else {
        return Ok(());
    };
    // Joining is an ordinary Shoal connect to the advertised address.
    let mut client = Driver::bind(
        "0.0.0.0:0",
        Config {
            accept_incoming: false,
            ..Config::default()
        },
    )?;
    client
        .connect(first.addr, b"")
        .map_err(|e| io::Error::other(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        client.poll(Some(Duration::from_millis(10)))?;
        for event in client.events() {
            if let Event::Connected { remote: addr, .. } = event {
                println!("[seek] connected to {addr}");
                return Ok(());
            }
        }
    }
    println!("[seek] could not connect to {}", first.addr);
    Ok(())
}
