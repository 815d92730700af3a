//! A game server in one frame loop: players connect with their name as connect data, send
//! their position 20 times a second, and the server sends everyone the world 20 times a
//! second and tells the others when someone joins or leaves. Every few seconds it prints
//! each player's round trip, loss and traffic.
//!
//! Two terminals (or more, one client each):
//!
//! ```text
//! cargo run -p shoal-std --example server -- 127.0.0.1:4000
//! cargo run -p shoal-std --example client -- 127.0.0.1:4000 alice
//! ```
//!
//! The game code knows only [`Network`], so the same `Game::frame` runs on a `Driver` (here),
//! on the background-thread `Handle` or on a simulator node.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shoal_std::{Config, ConnectionHandle, Driver, Event, Network};

/// Channel ids of the default configuration.
const POSITIONS: u8 = 1; // sequenced: only the newest counts
const NEWS: u8 = 3; // ordered: joins and leaves, in order

const TICK: Duration = Duration::from_millis(50);
const REPORT_EVERY: Duration = Duration::from_secs(3);

/// One player.
struct Player {
    conn: ConnectionHandle,
    name: String,
    position: [i16; 2],
}

/// The game: whatever it needs besides the network. Players sit in a `Vec` indexed by their
/// connection's [`index`](ConnectionHandle::index): no hashing, and the handle beside each
/// entry tells a later connection in the same slot apart.
#[derive(Default)]
struct Game {
    events: Vec<Event>,
    players: Vec<Option<Player>>,
}

impl Game {
    fn player(&mut self, conn: ConnectionHandle) -> Option<&mut Player> {
        let slot = self.players.get_mut(conn.index())?.as_mut()?;
        (slot.conn == conn).then_some(slot)
    }

    /// One frame: take what happened, answer it, send the world.
    fn frame(&mut self, net: &mut impl Network) {
        net.drain_events(&mut self.events); // the network stays free to send below
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            match event {
                Event::Connected { conn, identity, .. } => {
                    let name = String::from_utf8_lossy(&identity.connect_data).into_owned();
                    println!("{name} joined ({conn})");
                    net.broadcast(NEWS, format!("{name} joined"), Some(conn));
                    if self.players.len() <= conn.index() {
                        self.players.resize_with(conn.index() + 1, || None);
                    }
                    self.players[conn.index()] = Some(Player {
                        conn,
                        name,
                        position: [0, 0],
                    });
                }
                Event::Disconnected { conn, reason } => {
                    if let Some(player) = self.player(conn).map(|p| p.name.clone()) {
                        println!("{player} left: {reason}");
                        net.broadcast(NEWS, format!("{player} left"), None);
                        self.players[conn.index()] = None;
                    }
                }
                Event::Message {
                    conn,
                    channel: POSITIONS,
                    payload,
                    ..
                } => {
                    if let (Some(player), &[x0, x1, y0, y1]) = (self.player(conn), &payload[..]) {
                        player.position =
                            [i16::from_le_bytes([x0, x1]), i16::from_le_bytes([y0, y1])];
                    }
                }
                _ => {}
            }
        }
        self.events = events; // the buffer, kept for the next frame
                              // The world: every player's name and position, newest only.
        let world: Vec<u8> = self
            .players
            .iter()
            .flatten()
            .flat_map(|p| {
                let mut entry = Vec::with_capacity(p.name.len() + 5);
                entry.push(p.name.len().min(255) as u8);
                entry.extend_from_slice(&p.name.as_bytes()[..p.name.len().min(255)]);
                entry.extend_from_slice(&p.position[0].to_le_bytes());
                entry.extend_from_slice(&p.position[1].to_le_bytes());
                entry
            })
            .collect();
        if !world.is_empty() {
            net.broadcast(POSITIONS, world, None);
        }
    }

    fn report(&self, net: &impl Network) {
        for player in self.players.iter().flatten() {
            let Some(s) = net.link_stats(player.conn) else {
                continue;
            };
            let name = &player.name;
            println!(
                "  {name:<12} rtt {:>6.1} ms  loss {:>4.1}%  in {:>6} B/s  out {:>6} B/s",
                s.rtt.as_secs_f64() * 1e3,
                s.loss_percent,
                s.bytes_in_per_sec,
                s.bytes_out_per_sec
            );
        }
    }
}

fn main() -> ExitCode {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4000".into());
    let mut net = match Driver::bind(&*bind, Config::default()) {
        Ok(net) => net,
        Err(e) => {
            eprintln!("server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("serving on {} (Ctrl-C to stop)", net.local_addr());
    let mut game = Game::default();
    let mut next_report = Instant::now() + REPORT_EVERY;
    loop {
        let frame_start = Instant::now();
        if let Err(e) = net.update() {
            eprintln!("server: {e}");
            return ExitCode::FAILURE;
        }
        game.frame(&mut *net); // a Driver is a Network through its core
        net.flush(); // what the frame queued leaves now, not next frame
        if Instant::now() >= next_report {
            next_report += REPORT_EVERY;
            game.report(&*net);
        }
        std::thread::sleep(TICK.saturating_sub(frame_start.elapsed()));
    }
}
