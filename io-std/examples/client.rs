//! A game client in one frame loop: connects with its name, walks in a circle sending its
//! position 20 times a second, prints the news the server sends and, once a second, the world
//! and its link: round trip, loss, traffic. Pair it with the `server` example:
//!
//! ```text
//! cargo run -p shoal-std --example server -- 127.0.0.1:4000
//! cargo run -p shoal-std --example client -- 127.0.0.1:4000 alice
//! ```
//!
//! It stops after 30 seconds (or a third argument, in seconds), saying goodbye, and tells
//! apart a server it could not reach (`ConnectFailed`) from one it lost (`Disconnected`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shoal_std::{Config, Driver, Event};

const POSITIONS: u8 = 1;
const NEWS: u8 = 3;
const TICK: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:4000".into());
    let name = args.next().unwrap_or_else(|| "player".into());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(30);
    match run(&server, &name, Duration::from_secs(seconds)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(server: &str, name: &str, play_for: Duration) -> Result<(), String> {
    let config = Config {
        accept_incoming: false,
        ..Config::default()
    };
    let mut net = Driver::bind("0.0.0.0:0", config).map_err(|e| e.to_string())?;
    // Text or an address; the server's accept hook and `Connected` see the name.
    let conn = net
        .connect(server, name.as_bytes())
        .map_err(|e| e.to_string())?;
    println!("connecting to {server} as {name}...");
    let start = Instant::now();
    let mut events = Vec::new();
    let mut connected = false;
    let mut world = Vec::new();
    let mut next_print = start;
    while start.elapsed() < play_for {
        let frame_start = Instant::now();
        net.update().map_err(|e| e.to_string())?;
        net.drain_events(&mut events);
        for event in events.drain(..) {
            match event {
                Event::Connected { identity, .. } => {
                    connected = true;
                    println!(
                        "connected: the server calls us user {}",
                        identity.local_user_id
                    );
                }
                Event::ConnectFailed { reason, .. } => {
                    return Err(format!("could not connect to {server}: {reason}"));
                }
                Event::Disconnected { reason, .. } => {
                    return Err(format!("lost the connection: {reason}"));
                }
                Event::Message {
                    channel: NEWS,
                    payload,
                    ..
                } => {
                    println!("news: {}", String::from_utf8_lossy(&payload));
                }
                Event::Message {
                    channel: POSITIONS,
                    payload,
                    ..
                } => world = payload.to_vec(),
                _ => {}
            }
        }
        if connected {
            let t = start.elapsed().as_secs_f32();
            let x = (100.0 * t.cos()) as i16;
            let y = (100.0 * t.sin()) as i16;
            let mut position = x.to_le_bytes().to_vec();
            position.extend_from_slice(&y.to_le_bytes());
            net.send(conn, POSITIONS, position)
                .map_err(|e| e.to_string())?;
            if Instant::now() >= next_print {
                next_print += Duration::from_secs(1);
                print_status(&net, conn, &world);
            }
        }
        net.flush();
        std::thread::sleep(TICK.saturating_sub(frame_start.elapsed()));
    }
    net.disconnect(conn, 0); // the goodbye leaves at once: the server knows right away
    println!("bye");
    Ok(())
}

fn print_status(net: &Driver, conn: shoal_std::ConnectionHandle, world: &[u8]) {
    let mut players = Vec::new();
    let mut rest = world;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if tail.len() < len + 4 {
            break;
        }
        let name = String::from_utf8_lossy(&tail[..len]);
        let x = i16::from_le_bytes([tail[len], tail[len + 1]]);
        let y = i16::from_le_bytes([tail[len + 2], tail[len + 3]]);
        players.push(format!("{name}@({x},{y})"));
        rest = &tail[len + 4..];
    }
    if let Some(s) = net.link_stats(conn) {
        println!(
            "rtt {:.1} ms, loss {:.1}%, in {} B/s, out {} B/s | world: {}",
            s.rtt.as_secs_f64() * 1e3,
            s.loss_percent,
            s.bytes_in_per_sec,
            s.bytes_out_per_sec,
            players.join(" ")
        );
    }
}
