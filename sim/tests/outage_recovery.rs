//! How a connection comes back from an outage of one direction: the server's downlink goes
//! down just as it starts a 64 KiB message, so its congestion window fills with packets that
//! are lost, while the client keeps sending its 20 Hz input over the uplink.

use core::time::Duration;

use shoal_proto::{Config, ConnectionHandle, Event, Instant};
use shoal_sim::{Application, LinkConfig, NodeContext, NodeId, SimConfig, Simulator};

const SEQUENCED: u8 = 1;
const RELIABLE: u8 = 2;
const ORDERED: u8 = 3;
const TICK: u64 = 0;
const LARGE: u64 = 1;

struct Game {
    server: NodeId,
    client: NodeId,
    server_conn: Option<ConnectionHandle>,
    client_conn: Option<ConnectionHandle>,
    states: Vec<Instant>,
    reliable_at: Option<Instant>,
    large_at: Option<Instant>,
}

impl Application for Game {
    fn on_event(&mut self, ctx: &mut NodeContext<'_>, event: Event) {
        let now = ctx.now();
        match event {
            Event::Connected { conn, .. } => {
                if ctx.id() == self.server {
                    self.server_conn = Some(conn);
                    ctx.set_timer(Instant::from_millis(2_000), LARGE);
                } else {
                    self.client_conn = Some(conn);
                }
                ctx.set_timer(now, TICK);
            }
            Event::Message { channel, .. } if ctx.id() == self.client => match channel {
                SEQUENCED => self.states.push(now),
                RELIABLE => self.reliable_at = Some(now),
                ORDERED => self.large_at = Some(now),
                _ => {}
            },
            _ => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut NodeContext<'_>, token: u64) {
        let server = ctx.id() == self.server;
        let conn = if server {
            self.server_conn
        } else {
            self.client_conn
        };
        let Some(conn) = conn else { return };
        match token {
            LARGE => {
                ctx.endpoint()
                    .send(conn, ORDERED, vec![7u8; 64 * 1024])
                    .expect("large");
                ctx.endpoint()
                    .send(conn, RELIABLE, vec![1u8; 32])
                    .expect("reliable");
            }
            _ => {
                let size = if server { 64 } else { 24 };
                let _ = ctx.endpoint().send(conn, SEQUENCED, vec![0u8; size]);
                ctx.set_timer(ctx.now() + Duration::from_millis(50), TICK);
            }
        }
    }
}

/// The game above for 6 s, the server's downlink down from `down` to `up` ms: (the
/// simulator, the game).
fn run_outage(down: u64, up: u64) -> (Simulator, Game) {
    let link = LinkConfig {
        latency: Duration::from_millis(40),
        ..LinkConfig::default()
    };
    let mut sim = Simulator::new(SimConfig {
        seed: 1,
        default_link: link,
        trace_capacity: 100_000,
        ..SimConfig::default()
    })
    .expect("valid");
    let server = sim.add_node(Config::default()).expect("server");
    let client = sim
        .add_node(Config {
            accept_incoming: false,
            ..Config::default()
        })
        .expect("client");
    sim.connect(client, server, b"").expect("connect");
    sim.schedule_link_down(Instant::from_millis(down), server, client);
    sim.schedule_link_up(Instant::from_millis(up), server, client);
    let mut game = Game {
        server,
        client,
        server_conn: None,
        client_conn: None,
        states: Vec::new(),
        reliable_at: None,
        large_at: None,
    };
    sim.run_until_with(Instant::from_millis(6_000), &mut game);
    (sim, game)
}

/// The first state message the client receives after `up`, if any.
fn state_resumed(game: &Game, up: u64) -> Option<Instant> {
    let up_at = Instant::from_millis(up);
    game.states.iter().copied().find(|&t| t >= up_at)
}

/// All the server sends after its probes go unanswered is acknowledgements of the client's
/// input (its window is full). The first of them to cross the healed link asks for an
/// answer, so the lost packets are known lost one round trip later, not at the next probe
/// timeout (0.5 s later here: the fourth, after three unanswered).
#[test]
fn a_healed_path_is_heard_from_the_next_acknowledgement_not_the_next_probe() {
    let (down, up) = (2_000, 2_800);
    let (sim, game) = run_outage(down, up);
    let server = game.server;
    let up_at = Instant::from_millis(up);
    let first_resent_chunk = sim
        .trace()
        .find(|r| r.from_node == server && r.time >= up_at && r.len > 1_000)
        .map(|r| r.time)
        .expect("the lost chunks are sent again");
    // The acknowledgement the client sends by 2.85 s, answered by 2.89 s, then a round
    // trip's margin (the probe timeout would send at 3.31 s).
    assert!(
        first_resent_chunk < up_at + Duration::from_millis(200),
        "first chunk sent again at {first_resent_chunk:?}"
    );
    assert!(game.reliable_at.is_some() && game.large_at.is_some());
    let before = game
        .states
        .iter()
        .filter(|t| t.as_micros() < down * 1_000)
        .count();
    assert!(before > 10, "the game ran before the outage");
    // Once recovered, each side sends its 20 Hz ticks and little else: no liveness pings
    // answering each other.
    let (from, to) = (Instant::from_millis(4_500), Instant::from_millis(6_000));
    for node in [game.server, game.client] {
        let sent = sim
            .trace()
            .filter(|r| r.from_node == node && r.time >= from && r.time < to)
            .count();
        assert!((28..=36).contains(&sent), "{node} sent {sent} in 1.5 s");
    }
}

/// After the outage the server has a window's worth of chunks to send again, each filling a
/// packet, while its window grows back from its minimum. The game's state goes ahead of
/// them: it arrives within a round trip or two of the path's return (with the
/// retransmissions first, 360 ms after it: three to four round trips). The large message
/// still completes.
#[test]
fn after_an_outage_the_state_goes_ahead_of_the_retransmissions() {
    let (down, up) = (2_000, 2_800);
    let (_, game) = run_outage(down, up);
    let resumed = state_resumed(&game, up).expect("the state stream resumed");
    assert!(
        resumed < Instant::from_millis(up + 200),
        "state resumed at {resumed:?}"
    );
    assert!(game.large_at.is_some(), "the large message arrived");
}

/// The reliable event sent beside the large message is lost with its first chunks. Sent
/// again in the order they were lost, it waited behind them, a packet each while the window
/// grew back (3.16 s); whole messages go again before chunks, so it arrives with the state.
#[test]
fn after_an_outage_a_small_reliable_message_goes_again_before_a_large_ones_chunks() {
    let (down, up) = (2_000, 2_800);
    let (_, game) = run_outage(down, up);
    let reliable = game.reliable_at.expect("the reliable event arrived");
    assert!(
        reliable >= Instant::from_millis(up) && reliable < Instant::from_millis(up + 200),
        "reliable event at {reliable:?}"
    );
    let large = game.large_at.expect("the large message arrived");
    assert!(
        large < Instant::from_millis(up + 800),
        "large message at {large:?}"
    );
}
