//! A terminal chat with a server in the middle: each line typed goes to the server on the
//! ordered channel, and the server sends it on to everyone else with the sender's name.
//!
//! ```text
//! cargo run -p shoal-std --example chat -- serve 127.0.0.1:4100
//! cargo run -p shoal-std --example chat -- join 127.0.0.1:4100 alice
//! cargo run -p shoal-std --example chat -- join 127.0.0.1:4100 bob
//! ```
//!
//! The server keeps each member's name as the connection's user data
//! (`Endpoint::set_user_data`), set from the connect data when it connects and still there
//! when its `Disconnected` arrives. A member's side is a `Driver` in a blocking `poll` loop
//! with a thread reading stdin; end of input (Ctrl-D) leaves.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::mpsc::{self, TryRecvError};
use std::time::Duration;

use shoal_std::{Config, Driver, Event};

/// The ordered channel of the default configuration: lines arrive in the order typed.
const LINES: u8 = 3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", addr] => serve(addr),
        ["join", addr, name] => join(addr, name),
        _ => Err("usage: chat serve ADDR | chat join ADDR NAME".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The name a member connected with.
struct Name(String);

fn serve(addr: &str) -> Result<(), String> {
    let mut net = Driver::bind(addr, Config::default()).map_err(|e| e.to_string())?;
    println!("chat server on {}", net.local_addr());
    let mut events = Vec::new();
    loop {
        net.poll(None).map_err(|e| e.to_string())?;
        net.drain_events(&mut events);
        for event in events.drain(..) {
            match event {
                Event::Connected { conn, identity, .. } => {
                    let name = String::from_utf8_lossy(&identity.connect_data).into_owned();
                    net.broadcast(LINES, format!("* {name} joined"), Some(conn));
                    println!("* {name} joined");
                    net.endpoint_mut().set_user_data(conn, Name(name));
                }
                Event::Message { conn, payload, .. } => {
                    let name = net.endpoint().user_data::<Name>(conn).map(|n| n.0.clone());
                    let line = format!(
                        "{}: {}",
                        name.unwrap_or_default(),
                        String::from_utf8_lossy(&payload)
                    );
                    net.broadcast(LINES, line, Some(conn));
                }
                Event::Disconnected { conn, reason } => {
                    // The user data is still readable while its `Disconnected` is handled.
                    if let Some(Name(name)) = net.endpoint().user_data::<Name>(conn) {
                        let line = format!("* {name} left ({reason})");
                        println!("{line}");
                        net.broadcast(LINES, line, None);
                    }
                }
                _ => {}
            }
        }
    }
}

fn join(addr: &str, name: &str) -> Result<(), String> {
    let config = Config {
        accept_incoming: false,
        ..Config::default()
    };
    let mut net = Driver::bind("0.0.0.0:0", config).map_err(|e| e.to_string())?;
    let server = net
        .connect(addr, name.as_bytes())
        .map_err(|e| e.to_string())?;
    let (lines, typed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut events = Vec::new();
    loop {
        // Wakes for datagrams and timers; stdin is looked at every 50 ms.
        net.poll(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        net.drain_events(&mut events);
        for event in events.drain(..) {
            match event {
                Event::Connected { .. } => println!("* connected to {addr} as {name}"),
                Event::ConnectFailed { reason, .. } => {
                    return Err(format!("could not connect to {addr}: {reason}"))
                }
                Event::Disconnected { reason, .. } => {
                    return Err(format!("disconnected: {reason}"))
                }
                Event::Message { payload, .. } => println!("{}", String::from_utf8_lossy(&payload)),
                _ => {}
            }
        }
        loop {
            match typed.try_recv() {
                Ok(line) => net.send(server, LINES, line).map_err(|e| e.to_string())?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    net.disconnect(server, 0);
                    return Ok(());
                }
            }
        }
    }
}
