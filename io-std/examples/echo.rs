//! An echo server and a client in one process, over loopback.
//!
//! The server runs a blocking `poll` loop on its own thread and sends every message back on
//! the channel it came on. The client runs a game-style frame loop with `update`, sends one
//! message on each of the four default channels, prints the echoes, disconnects and exits.
//!
//! ```text
//! cargo run -p shoal-std --example echo
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_std::{Config, DisconnectReason, Driver, Event};

const CHANNEL_NAMES: [&str; 4] = ["unreliable", "sequenced", "reliable", "ordered"];

fn main() -> io::Result<()> {
    let mut server = Driver::bind("127.0.0.1:0", Config::default())?;
    let server_addr = server.local_addr();
    println!("[server] listening on {server_addr}");
    let server_thread = std::thread::spawn(move || serve(&mut server));

    let result = run_client(server_addr);
    let served = server_thread
        .join()
        .map_err(|_| io::Error::other("server thread panicked"))?;
    result.and(served)
}

/// Echoes messages until its one client leaves (or ten seconds pass).
fn serve(server: &mut Driver) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        server.poll(Some(Duration::from_millis(100)))?;
        while let Some(event) = server.poll_event() {
            match event {
                Event::Connected {
                    conn,
                    remote,
                    identity,
                } => {
                    let user = identity.user_id;
                    println!("[server] {remote} connected as user {user} ({conn})");
                }
                Event::Message {
                    conn,
                    channel,
                    payload,
                    ..
                } => {
                    println!(
                        "[server] echoing {:?} on channel {channel}",
                        String::from_utf8_lossy(&payload)
                    );
                    if let Err(e) = server.send(conn, channel, payload) {
                        println!("[server] could not echo: {e}");
                    }
                }
                Event::Disconnected { conn, reason } => {
                    println!("[server] {conn} left: {reason}");
                    server.flush();
                    return Ok(());
                }
                other => println!("[server] {other:?}"),
            }
        }
    }
    println!("[server] nobody left within 10 s; stopping");
    Ok(())
}

fn run_client(server_addr: SocketAddr) -> io::Result<()> {
    let config = Config {
        accept_incoming: false,
        ..Config::default()
    };
    let mut client = Driver::bind("127.0.0.1:0", config)?;
    let conn = client
        .connect(server_addr, b"echo please")
        .map_err(|e| io::Error::other(e.to_string()))?;
    println!("[client] connecting from {}", client.local_addr());

    let frame = Duration::from_millis(16);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut echoes = 0;
    let mut sent = false;
    while Instant::now() < deadline {
        client.update()?;
        while let Some(event) = client.poll_event() {
            match event {
                Event::Connected { identity, .. } => {
                    let us = identity.local_user_id;
                    println!("[client] connected; the server calls us user {us}");
                    sent = true;
                    for (channel, name) in CHANNEL_NAMES.iter().enumerate() {
                        let text = format!("hello over the {name} channel");
                        // Channel ids 0..=3 are the defaults; `send` cannot fail for them.
                        if let Err(e) = client.send(conn, channel as u8, text) {
                            println!("[client] send failed: {e}");
                        }
                    }
                }
                Event::Message {
                    channel, payload, ..
                } => {
                    echoes += 1;
                    println!(
                        "[client] echo on channel {channel}: {:?}",
                        String::from_utf8_lossy(&payload)
                    );
                }
                other => println!("[client] {other:?}"),
            }
        }
        if sent && echoes == CHANNEL_NAMES.len() {
            break;
        }
        std::thread::sleep(frame); // the rest of the game's frame
    }
    println!(
        "[client] {echoes} of {} echoes back; disconnecting",
        CHANNEL_NAMES.len()
    );
    client.disconnect(conn, 0);
    client.flush();
    for event in client.events() {
        if let Event::Disconnected {
            reason: DisconnectReason::ClosedLocally,
            ..
        } = event
        {
            println!("[client] closed");
        }
    }
    Ok(())
}
