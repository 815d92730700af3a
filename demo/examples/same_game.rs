//! One game, two networks: the same server and bot code, written against
//! [`Network`], runs in the simulator (default: 40 ms away, 5% loss, seeded, faster than
//! real time) and on real sockets over loopback (`--real`).
//!
//! ```text
//! cargo run -p shoal-demo --example same_game            # in the simulator
//! cargo run -p shoal-demo --example same_game -- --real  # on 127.0.0.1
//! ```
//!
//! The server sends the game tick to everyone 20 times a second (sequenced: only the newest
//! counts), passes each bot's numbered chat lines on to the others (ordered), and answers
//! each bot's "score?" request. Each bot checks what it gets: chat lines from every other bot
//! in order with no gap, a tick that never goes back, every request answered.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_sim::shoal_proto::{Config, ConnectionHandle, Event, Network, RequestId};
use shoal_sim::{LinkConfig, SimConfig, Simulator};

const TICKS: u8 = 1; // sequenced
const REQUESTS: u8 = 2; // reliable
const CHAT: u8 = 3; // ordered
const FRAME: Duration = Duration::from_millis(50);
const FRAMES: u32 = 100;
const BOTS: usize = 3;

/// The server's game logic.
#[derive(Default)]
struct Server {
    events: Vec<Event>,
    tick: u32,
}

impl Server {
    fn frame(&mut self, net: &mut impl Network) {
        self.tick += 1;
        net.drain_events(&mut self.events);
        for event in self.events.drain(..) {
            match event {
                Event::Message {
                    conn,
                    channel: CHAT,
                    payload,
                    ..
                } => {
                    net.broadcast(CHAT, payload, Some(conn)); // to the other bots
                }
                Event::Request { conn, request, .. } => {
                    let score = format!("score {}", self.tick);
                    net.respond(conn, request, score).expect("answer");
                }
                _ => {}
            }
        }
        net.broadcast(TICKS, self.tick.to_le_bytes().to_vec(), None);
    }
}

/// A bot's game logic, and what it checks.
struct Bot {
    id: u8,
    server: Option<ConnectionHandle>,
    events: Vec<Event>,
    said: u32,
    heard: BTreeMap<u8, u32>,
    out_of_order: u32,
    newest_tick: u32,
    tick_went_back: bool,
    asked: Vec<RequestId>,
    answered: u32,
}

impl Bot {
    fn new(id: u8) -> Self {
        Bot {
            id,
            server: None,
            events: Vec::new(),
            said: 0,
            heard: BTreeMap::new(),
            out_of_order: 0,
            newest_tick: 0,
            tick_went_back: false,
            asked: Vec::new(),
            answered: 0,
        }
    }

    fn frame(&mut self, net: &mut impl Network, frame: u32) {
        net.drain_events(&mut self.events);
        for event in self.events.drain(..) {
            match event {
                Event::Connected { conn, .. } => self.server = Some(conn),
                Event::Message {
                    channel: TICKS,
                    payload,
                    ..
                } => {
                    let tick = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
                    self.tick_went_back |= tick < self.newest_tick;
                    self.newest_tick = self.newest_tick.max(tick);
                }
                Event::Message {
                    channel: CHAT,
                    payload,
                    ..
                } => {
                    let (from, n) = (
                        payload[0],
                        u32::from_le_bytes(payload[1..5].try_into().expect("4")),
                    );
                    let expected = self.heard.get(&from).map_or(0, |last| last + 1);
                    if n != expected {
                        self.out_of_order += 1;
                    }
                    self.heard.insert(from, n);
                }
                Event::Response { id, .. } => {
                    if let Some(i) = self.asked.iter().position(|&a| a == id) {
                        self.asked.swap_remove(i);
                        self.answered += 1;
                    }
                }
                _ => {}
            }
        }
        let Some(server) = self.server else { return };
        if frame < FRAMES - 20 {
            // A numbered chat line every frame, a question every tenth.
            let mut line = vec![self.id];
            line.extend_from_slice(&self.said.to_le_bytes());
            if net.send(server, CHAT, line).is_ok() {
                self.said += 1;
            }
            if frame % 10 == 0 {
                if let Ok(id) = net.request(server, REQUESTS, "score?") {
                    self.asked.push(id);
                }
            }
        }
    }

    fn report(&self, bots: &[Bot]) -> bool {
        let others_said: u32 = bots
            .iter()
            .filter(|b| b.id != self.id)
            .map(|b| b.said)
            .sum();
        let heard: u32 = self.heard.values().map(|n| n + 1).sum();
        let ok = heard == others_said
            && self.out_of_order == 0
            && !self.tick_went_back
            && self.asked.is_empty();
        println!(
            "bot {}: heard {heard} of {others_said} chat lines ({} out of order), newest tick {}, {} of {} requests answered -> {}",
            self.id,
            self.out_of_order,
            self.newest_tick,
            self.answered,
            self.answered as usize + self.asked.len(),
            if ok { "ok" } else { "NOT OK" }
        );
        ok
    }
}

fn main() {
    let real = std::env::args().any(|a| a == "--real");
    let bots = if real { on_sockets() } else { in_simulator() };
    // Every bot reports, even after one that is not ok.
    let verdicts: Vec<bool> = bots.iter().map(|b| b.report(&bots)).collect();
    let all_ok = verdicts.iter().all(|&ok| ok);
    std::process::exit(if all_ok { 0 } else { 1 });
}

/// The game in the simulator: run a frame of simulated time, then each node's frame.
fn in_simulator() -> Vec<Bot> {
    let mut sim = Simulator::new(SimConfig {
        seed: 7,
        default_link: LinkConfig {
            latency: Duration::from_millis(40),
            loss: 0.05,
            ..LinkConfig::default()
        },
        ..SimConfig::default()
    })
    .expect("valid");
    let server_node = sim.add_node(Config::default()).expect("node");
    let client = Config {
        accept_incoming: false,
        ..Config::default()
    };
    let nodes: Vec<_> = (0..BOTS)
        .map(|_| sim.add_node(client.clone()).expect("node"))
        .collect();
    let server_addr = sim.address(server_node);
    for &node in &nodes {
        sim.network(node)
            .connect(server_addr, b"bot")
            .expect("connect");
    }
    let (mut server, mut bots) = (
        Server::default(),
        (0..BOTS as u8).map(Bot::new).collect::<Vec<_>>(),
    );
    println!("in the simulator: {BOTS} bots, 40 ms away, 5% loss");
    for frame in 0..FRAMES + 40 {
        sim.run_for(FRAME);
        server.frame(&mut sim.network(server_node));
        for (bot, &node) in bots.iter_mut().zip(&nodes) {
            bot.frame(&mut sim.network(node), frame);
        }
    }
    bots
}

/// The same game on real sockets: one `Driver` each, all in this thread's frame loop.
fn on_sockets() -> Vec<Bot> {
    use shoal_std::Driver;
    let mut server_net = Driver::bind("127.0.0.1:0", Config::default()).expect("bind");
    let client = Config {
        accept_incoming: false,
        ..Config::default()
    };
    let mut nets: Vec<Driver> = (0..BOTS)
        .map(|_| Driver::bind("127.0.0.1:0", client.clone()).expect("bind"))
        .collect();
    for net in &mut nets {
        net.connect(server_net.local_addr(), b"bot")
            .expect("connect");
    }
    let (mut server, mut bots) = (
        Server::default(),
        (0..BOTS as u8).map(Bot::new).collect::<Vec<_>>(),
    );
    println!("on 127.0.0.1: {BOTS} bots");
    for frame in 0..FRAMES + 40 {
        let start = std::time::Instant::now();
        server_net.update().expect("socket");
        server.frame(&mut *server_net); // a Driver is a Network through its core
        server_net.flush();
        for (bot, net) in bots.iter_mut().zip(&mut nets) {
            net.update().expect("socket");
            bot.frame(&mut **net, frame);
            net.flush();
        }
        std::thread::sleep(FRAME.saturating_sub(start.elapsed()));
    }
    bots
}
