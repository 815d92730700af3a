//! A chat room through a Shoal hub: every line typed goes to the others in the room, and
//! their lines are printed with their names.
//!
//! Two terminals on one machine (the hub runs in the background of the first; its log goes
//! to `hub.log`):
//!
//! ```text
//! # terminal 1
//! cargo run --release -p shoal-mio --bin shoal-hub -- --bind 127.0.0.1:7777 2>hub.log &
//! cargo run -p shoal-std --example room_chat -- --hub 127.0.0.1:7777 --room lobby --name alice
//!
//! # terminal 2
//! cargo run -p shoal-std --example room_chat -- --hub 127.0.0.1:7777 --room lobby --name bob
//! ```
//!
//! Then type. `/to <name or user id> <text>` sends to one member only, over a peer link: a
//! connection between the two chats, keyed end to end, that starts through the hub and moves
//! to a direct path when one opens (the chat prints `[path] ...` each time it moves).
//! `/who` lists the room, `/quit` (or end of input) leaves the room and exits.
//! The first member creates the room; the others join it. `--password <word>` makes a room
//! that needs one (and joins with it).
//!
//! How it works: one `Driver` in a blocking `poll` loop, a `HubClient` that turns the
//! endpoint's events into [`HubEvent`]s, and a thread that reads stdin and hands lines over
//! a channel. Members' names travel as the metadata they join with.

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use shoal_std::shoal_proto::hub::{
    self, HubClient, HubError, HubEvent, OpId, PathPolicy, Refusal, RoomId, RoomOptions, Target,
};
use shoal_std::{Config, Driver, Event};

/// The ordered channel of `hub::endpoint_config()`: chat lines arrive in the order typed.
const CHAT: u8 = 3;
/// How long `/quit` waits for the hub to confirm the leave.
const QUIT_WAIT: Duration = Duration::from_secs(2);

struct Args {
    hub: SocketAddr,
    room: String,
    name: String,
    password: String,
}

const USAGE: &str =
    "usage: room_chat --name NAME [--hub 127.0.0.1:7777] [--room lobby] [--password WORD]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        hub: SocketAddr::from(([127, 0, 0, 1], 7777)),
        room: "lobby".into(),
        name: String::new(),
        password: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--hub" => {
                let v = value()?;
                args.hub = v.parse().map_err(|_| format!("`{v}` is not an address"))?;
            }
            "--room" => args.room = value()?,
            "--name" => args.name = value()?,
            "--password" => args.password = value()?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if args.name.is_empty() {
        return Err(format!("--name is required\n{USAGE}"));
    }
    Ok(args)
}

/// Text from another member, fit for a terminal (no control characters).
fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// Lines from stdin, read on a thread; the channel closes at end of input.
fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

struct Chat {
    args: Args,
    driver: Driver,
    client: HubClient,
    /// The pending join or create, to know what a refusal answers.
    join_op: Option<OpId>,
    create_op: Option<OpId>,
    room: Option<RoomId>,
    /// Names of the others in the room, by user id.
    names: BTreeMap<u16, String>,
    /// Set by `/quit`: when to give up waiting for the hub's confirmation.
    quitting: Option<Instant>,
}

impl Chat {
    fn name_of(&self, user: u16) -> String {
        self.names
            .get(&user)
            .cloned()
            .unwrap_or_else(|| format!("user {user}"))
    }

    fn join(&mut self) -> Result<(), HubError> {
        let (name, password) = (self.args.room.clone(), self.args.password.clone());
        let ep = self.driver.endpoint_mut();
        let op =
            self.client
                .join_room(ep, &name, password.as_bytes(), self.args.name.as_bytes())?;
        self.join_op = Some(op);
        Ok(())
    }

    fn create(&mut self) -> Result<(), HubError> {
        let options = RoomOptions {
            password: self.args.password.as_bytes().to_vec(),
            metadata: self.args.name.as_bytes().to_vec(),
            ..RoomOptions::default()
        };
        let room = self.args.room.clone();
        let op = self
            .client
            .create_room(self.driver.endpoint_mut(), &room, &options)?;
        self.create_op = Some(op);
        Ok(())
    }

    fn quit(&mut self) {
        if self.quitting.is_some() {
            return;
        }
        self.quitting = Some(Instant::now() + QUIT_WAIT);
        if let Some(room) = self.room {
            if self
                .client
                .leave_room(self.driver.endpoint_mut(), room)
                .is_err()
            {
                // Nothing to wait for: close at once.
                self.quitting = Some(Instant::now());
            }
        } else {
            self.quitting = Some(Instant::now());
        }
    }

    /// Handles one event; `Err` ends the program with that message.
    fn on_event(&mut self, event: HubEvent) -> Result<(), String> {
        match event {
            HubEvent::Transport(Event::Connected { identity, .. }) => {
                let us = identity.local_user_id;
                println!("connected to {} as user {us}", self.args.hub);
                // Our address on the local network, for chats behind the same NAT.
                if let Some(own) = lan_address(self.args.hub, self.driver.local_addr()) {
                    let ep = self.driver.endpoint_mut();
                    self.client
                        .announce(ep, &[own])
                        .map_err(|e| e.to_string())?;
                }
                self.join().map_err(|e| e.to_string())?;
            }
            HubEvent::PathChanged { user, direct } => {
                let name = self.name_of(user);
                let how = if direct { "direct" } else { "through the hub" };
                println!("[path] to {name}: {how}");
            }
            HubEvent::Transport(Event::ConnectFailed { reason, .. }) => {
                return Err(format!("could not reach the hub: {reason}"));
            }
            HubEvent::Transport(Event::Disconnected { reason, .. }) => {
                return Err(format!("disconnected from the hub: {reason}"));
            }
            HubEvent::Refused { op, reason } => {
                if Some(op) == self.join_op && reason == Refusal::UnknownRoom {
                    println!("no room {:?} yet: creating it", self.args.room);
                    self.create().map_err(|e| e.to_string())?;
                } else if Some(op) == self.create_op && reason == Refusal::RoomExists {
                    // Someone else created it meanwhile.
                    self.join().map_err(|e| e.to_string())?;
                } else {
                    println!("the hub refused: {reason}");
                    if self.room.is_none() {
                        return Err("could not enter the room".into());
                    }
                }
            }
            HubEvent::Joined { room, .. } => {
                self.room = Some(room);
                let me = self.client.user_id();
                let Some(view) = self.client.room(room) else {
                    return Ok(());
                };
                let owner = view.owner;
                self.names = view
                    .members
                    .iter()
                    .filter(|m| Some(m.user) != me)
                    .map(|m| (m.user, clean(&m.metadata)))
                    .collect();
                let others: Vec<String> = self
                    .names
                    .iter()
                    .map(|(u, n)| format!("{n} ({u})"))
                    .collect();
                println!(
                    "in room {:?} ({room}, owner: {}); here: {}",
                    self.args.room,
                    if Some(owner) == me {
                        "you".to_string()
                    } else {
                        self.name_of(owner)
                    },
                    if others.is_empty() {
                        "nobody else yet".to_string()
                    } else {
                        others.join(", ")
                    }
                );
                println!("type to talk; /to <name> <text>, /who, /quit");
            }
            HubEvent::PeerJoined { room, user } => {
                let name = self
                    .client
                    .room(room)
                    .and_then(|v| v.members.iter().find(|m| m.user == user))
                    .map(|m| clean(&m.metadata))
                    .unwrap_or_else(|| format!("user {user}"));
                println!("* {name} joined");
                self.names.insert(user, name);
            }
            HubEvent::PeerLeft { user, reason, .. } => {
                println!("* {} left ({reason})", self.name_of(user));
                self.names.remove(&user);
            }
            HubEvent::OwnerChanged { owner, .. } => {
                let who = if Some(owner) == self.client.user_id() {
                    "you".to_string()
                } else {
                    self.name_of(owner)
                };
                println!("* the room's owner is now {who}");
            }
            HubEvent::RoomLeft { reason, .. } => {
                println!("* you left the room ({reason})");
                self.room = None;
                self.quitting = Some(Instant::now());
            }
            HubEvent::Done { .. } if self.quitting.is_some() => {
                self.quitting = Some(Instant::now());
            }
            HubEvent::Message {
                from, to, payload, ..
            } => {
                let name = self.name_of(from);
                match to {
                    Target::User(_) => println!("[{name} → you] {}", clean(&payload)),
                    _ => println!("[{name}] {}", clean(&payload)),
                }
            }
            // Requests, join approvals and whatever later versions add: not for a chat.
            _ => {}
        }
        Ok(())
    }

    fn on_line(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        if line == "/quit" {
            self.quit();
            return;
        }
        if line == "/who" {
            let list: Vec<String> = self
                .names
                .iter()
                .map(|(u, n)| format!("{n} ({u})"))
                .collect();
            println!("here besides you: {}", list.join(", "));
            return;
        }
        let Some(room) = self.room else {
            println!("(not in the room yet)");
            return;
        };
        let (target, text) = if let Some(rest) = line.strip_prefix("/to ") {
            let (who, text) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
            let user = who.parse::<u16>().ok().or_else(|| {
                self.names
                    .iter()
                    .find(|(_, n)| n.as_str() == who)
                    .map(|(u, _)| *u)
            });
            match user {
                Some(u) => (Target::User(u), text.trim()),
                None => {
                    println!("(nobody called {who:?} here; /who lists the room)");
                    return;
                }
            }
        } else if line.starts_with('/') {
            println!("(commands: /to <name or id> <text>, /who, /quit)");
            return;
        } else {
            (Target::RoomExceptSender(room), line)
        };
        let ep = self.driver.endpoint_mut();
        if let Err(e) = self.client.send(ep, target, CHAT, text.as_bytes().to_vec()) {
            println!("(not sent: {e})");
        }
    }
}

/// The address other machines on our network reach this socket at: the interface the route
/// to the hub leaves by (a connected UDP socket sends nothing to learn it), with our port.
fn lan_address(hub: SocketAddr, bound: SocketAddr) -> Option<SocketAddr> {
    let any: SocketAddr = if hub.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(hub).ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then(|| SocketAddr::new(ip, bound.port()))
}

fn run(args: Args) -> Result<(), String> {
    let bind = if args.hub.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    // Peer links are connections the other chats open to this one.
    let config = Config {
        accept_incoming: true,
        ..hub::endpoint_config()
    };
    let mut driver = Driver::bind(bind, config).map_err(|e| format!("bind: {e}"))?;
    let conn = driver
        .connect(args.hub, &[])
        .map_err(|e| format!("connect: {e}"))?;
    let client = HubClient::with_paths(conn, driver.endpoint().config(), PathPolicy::Auto)
        .map_err(|e| e.to_string())?;
    let mut chat = Chat {
        args,
        driver,
        client,
        join_op: None,
        create_op: None,
        room: None,
        names: BTreeMap::new(),
        quitting: None,
    };
    println!("connecting to {}...", chat.args.hub);
    let lines = stdin_lines();
    loop {
        chat.driver
            .poll(Some(Duration::from_millis(20)))
            .map_err(|e| format!("socket: {e}"))?;
        let now = chat.driver.now();
        while let Some(event) = chat.client.next_event(chat.driver.endpoint_mut(), now) {
            chat.on_event(event)?;
        }
        loop {
            match lines.try_recv() {
                Ok(line) => chat.on_line(&line),
                Err(TryRecvError::Empty) => break,
                // End of input: leave as `/quit` does.
                Err(TryRecvError::Disconnected) => {
                    chat.quit();
                    break;
                }
            }
        }
        if chat.quitting.is_some_and(|t| Instant::now() >= t) {
            chat.driver.disconnect(conn, 0);
            chat.driver.flush();
            println!("bye");
            return Ok(());
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
