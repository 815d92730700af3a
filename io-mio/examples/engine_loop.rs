//! Shoal inside an engine's own `mio::Poll`, next to a TCP listener: the engine's loop waits
//! on both, runs a 20 Hz game tick, and lets an admin type announcements over TCP that go to
//! every player.
//!
//! ```text
//! cargo run -p shoal-mio --example engine_loop -- 127.0.0.1:4800 127.0.0.1:4801
//! nc 127.0.0.1 4801                                         # then type: lines go to players
//! cargo run -p shoal-std --example client -- 127.0.0.1:4800 alice
//! ```
//!
//! `--demo` instead runs a player of its own on a background thread for three seconds,
//! connects an admin, and exits: the whole loop, checked in one command.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use shoal_mio::{Config, Event, MioDriver, Network};

const NET: Token = Token(0);
const ADMIN_LISTENER: Token = Token(1);
/// Admin connections take the tokens after it.
const FIRST_ADMIN: usize = 2;
const TICK: Duration = Duration::from_millis(50);
const NEWS: u8 = 3; // the ordered channel

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let demo = args.iter().any(|a| a == "--demo");
    let mut addrs = args.iter().filter(|a| !a.starts_with("--"));
    let game: SocketAddr = parse(addrs.next(), "127.0.0.1:4800")?;
    let admin: SocketAddr = parse(addrs.next(), "127.0.0.1:4801")?;

    let mut poll = Poll::new()?;
    let mut net = MioDriver::bind(game, Config::default())?;
    net.register(poll.registry(), NET)?;
    let mut listener = TcpListener::bind(admin)?;
    poll.registry()
        .register(&mut listener, ADMIN_LISTENER, Interest::READABLE)?;
    println!(
        "game on udp {}, admin console on tcp {admin}",
        net.local_addr()
    );

    let player = demo.then(|| std::thread::spawn(move || demo_player(game)));
    let mut admin_client = None;
    let mut admins: HashMap<Token, TcpStream> = HashMap::new();
    let mut next_token = FIRST_ADMIN;
    let mut readiness = Events::with_capacity(128);
    let mut events = Vec::new();
    let mut next_tick = Instant::now();
    let started = Instant::now();
    loop {
        // Sleep until the socket, the listener, the next tick or Shoal's own timer.
        let until_tick = next_tick.saturating_duration_since(Instant::now());
        let timeout = net.next_timeout().map_or(until_tick, |t| t.min(until_tick));
        poll.poll(&mut readiness, Some(timeout))?;
        for ready in readiness.iter() {
            match ready.token() {
                NET => net.on_event(ready)?,
                ADMIN_LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, from)) => {
                            let token = Token(next_token);
                            next_token += 1;
                            poll.registry()
                                .register(&mut stream, token, Interest::READABLE)?;
                            println!("admin connected from {from}");
                            admins.insert(token, stream);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                },
                token => {
                    if let Some(stream) = admins.get_mut(&token) {
                        if !announce(stream, &mut *net)? {
                            admins.remove(&token);
                        }
                    }
                }
            }
        }
        if Instant::now() >= next_tick {
            next_tick += TICK;
            game_tick(&mut *net, &mut events);
        }
        net.update()?; // timers, then send what the tick and the admins queued
        if demo {
            let elapsed = started.elapsed();
            if admin_client.is_none() && elapsed > Duration::from_millis(500) {
                let mut stream = std::net::TcpStream::connect(admin)?;
                stream.write_all(b"server restarts in 5 minutes\n")?;
                admin_client = Some(stream);
            }
            if elapsed > Duration::from_secs(3) {
                break;
            }
        }
    }
    if let Some(player) = player {
        let heard = player.join().expect("the demo player ran");
        println!("the demo player heard: {heard:?}");
        assert!(heard.iter().any(|l| l.contains("restarts")), "{heard:?}");
    }
    Ok(())
}

/// The game's 20 Hz tick: it knows only `Network`, so the same code runs on `shoal-std`
/// and in the simulator.
fn game_tick(net: &mut impl Network, events: &mut Vec<Event>) {
    net.drain_events(events);
    for event in events.drain(..) {
        match event {
            Event::Connected { conn, identity, .. } => {
                let name = String::from_utf8_lossy(&identity.connect_data).into_owned();
                println!("{name} joined");
                let _ = net.send(conn, NEWS, format!("welcome, {name}"));
            }
            Event::Disconnected { reason, .. } => println!("a player left: {reason}"),
            _ => {}
        }
    }
}

/// Reads what an admin typed and sends each line to every player. `false` once the admin
/// has gone.
fn announce(stream: &mut TcpStream, net: &mut impl Network) -> io::Result<bool> {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    let sent = net.broadcast(NEWS, format!("[admin] {line}"), None);
                    println!("announced to {sent} players: {line}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A player on `shoal-std`'s background thread, for `--demo`: the news lines it heard.
fn demo_player(game: SocketAddr) -> Vec<String> {
    let config = Config {
        accept_incoming: false,
        ..Config::default()
    };
    let Ok(player) = shoal_std::spawn("127.0.0.1:0", config) else {
        return Vec::new();
    };
    if player.connect(game, b"demo").is_err() {
        return Vec::new();
    }
    let mut heard = Vec::new();
    let until = Instant::now() + Duration::from_millis(2_800);
    while Instant::now() < until {
        if let Ok(Some(shoal_std::Output::Event(Event::Message { payload, .. }))) =
            player.next_output(Duration::from_millis(50))
        {
            heard.push(String::from_utf8_lossy(&payload).into_owned());
        }
    }
    heard
}

fn parse(arg: Option<&String>, default: &str) -> io::Result<SocketAddr> {
    arg.map_or(default, |s| s.as_str())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))
}
