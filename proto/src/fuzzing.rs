//! Fuzz target bodies, compiled only for fuzzing (`cfg(fuzzing)`) or with the `fuzzing`
//! feature, so ordinary CI builds them and the `fuzz/` targets stay one line each.

use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::wire::{roundtrip_is_identity, Frames, Packet};
use crate::{Config, Endpoint, Instant};

/// The wire format, for fuzzing and for tests that build packets by hand. Not part of the
/// public API: it changes with the protocol version.
pub mod wire {
    pub use crate::wire::*;
}

/// The key schedule and packet protection, for the protected test vectors.
pub mod protection {
    use crate::crypto::SessionKeys;

    /// Runs the key schedule over a `Connect`, an `Accept` (up to its tag) and the shared
    /// secrets, and returns the `Accept` tag it gives.
    pub fn accept_tag(connect: &[u8], accept: &[u8], shared: &[&[u8]]) -> [u8; 16] {
        SessionKeys::derive(connect, accept, shared).accept_tag(accept)
    }

    /// Seals `packet[..len]` as packet `pn` from the client (`client == true`) or the server,
    /// under the keys of that handshake; returns the protected length.
    pub fn seal(
        (connect, accept, shared): (&[u8], &[u8], &[&[u8]]),
        client: bool,
        pn: u64,
        packet: &mut [u8],
        len: usize,
    ) -> Option<usize> {
        let keys = SessionKeys::derive(connect, accept, shared);
        let key = if client {
            keys.client_to_server
        } else {
            keys.server_to_client
        };
        key.seal(pn, packet, len)
    }

    /// Opens a protected datagram in place; returns its plain length (tag removed).
    pub fn open(
        (connect, accept, shared): (&[u8], &[u8], &[&[u8]]),
        client: bool,
        pn: u64,
        datagram: &mut [u8],
    ) -> Option<usize> {
        let keys = SessionKeys::derive(connect, accept, shared);
        let key = if client {
            keys.client_to_server
        } else {
            keys.server_to_client
        };
        let len = datagram.len().checked_sub(16)?;
        let (body, tag) = datagram.split_at_mut(len);
        key.open(pn, body, tag).then_some(len)
    }
}

/// The hub's control messages and pair sealing (thin wrappers over the crate-private
/// encoders, for the hub vectors), and the `hub_control` body.
pub mod hub;

pub use hub::hub_control;

/// Checks `endpoint`'s timer wake-ups: every live connection with a deadline has a wake-up
/// queued at or before it, and while they are a heap `poll_timeout` is exactly the earliest
/// deadline. Panics otherwise (the fuzz targets and tests call it between operations).
pub fn check_wakeups(endpoint: &Endpoint) {
    endpoint.check_wakeups();
}

/// Decodes arbitrary bytes as a packet and its frames; decoding must not panic and a
/// successful decode must re-encode to the same bytes.
pub fn parse_packet(data: &[u8]) {
    // The decoder of the path after the handshake reads exactly what the general one does.
    match crate::wire::decode_data(data) {
        Some(Ok((header, frames))) => assert!(
            matches!(Packet::decode(data), Ok(Packet::Data { header: h, frames: f }) if h == header && f == frames),
            "decode_data and Packet::decode disagree"
        ),
        Some(Err(e)) => assert_eq!(Packet::decode(data).err(), Some(e)),
        None => assert!(!matches!(Packet::decode(data), Ok(Packet::Data { .. }))),
    }
    if let Ok(Packet::Data { frames, .. }) = Packet::decode(data) {
        for frame in Frames::new(frames) {
            if frame.is_err() {
                break;
            }
        }
    }
    assert!(
        roundtrip_is_identity(data),
        "decode → encode is not the identity"
    );
}

/// Feeds arbitrary datagrams to a server endpoint, both from a stranger (unvalidated: replies
/// must never exceed what arrived) and from a client with an established connection (its
/// `Data` packets get the real connection id patched in, so the live receive path — frames,
/// channels, reassembly, acknowledgements — is what gets fuzzed). Nothing may panic, and
/// reassembly memory must stay within its budget.
pub fn endpoint_input(data: &[u8]) {
    let server_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 9000);
    let client_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 9000);
    let attacker = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66)), 9000);
    let config = Config::default();
    let (Ok(mut server), Ok(mut client)) = (
        Endpoint::new(Config {
            seed: 1,
            secret_seed: Some(crate::SecretSeed::insecure_from_u64(1)),
            ..config.clone()
        }),
        Endpoint::new(Config {
            seed: 2,
            secret_seed: Some(crate::SecretSeed::insecure_from_u64(2)),
            accept_incoming: false,
            ..config
        }),
    ) else {
        return;
    };
    let mut buf = [0u8; 1500];
    let mut now = Instant::from_millis(1);
    // Handshake over a perfect link, learning the connection id from the client's traffic.
    let Ok(conn) = client.connect(now, server_addr, b"fuzz") else {
        return;
    };
    // A first message makes the client send Data, which reveals the connection id.
    if client.send(conn, 0, &b"hello"[..]).is_err() {
        return;
    }
    let mut connection_id = None;
    for _ in 0..8 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            // The clear header shows it even when the rest is encrypted.
            if let Some(id) = crate::wire::short_header_connection(&buf[..t.len]) {
                connection_id = Some(id);
            }
            server.handle_datagram(now, client_addr, &buf[..t.len]);
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            client.handle_datagram(now, server_addr, &buf[..t.len]);
        }
    }
    let Some(connection_id) = connection_id else {
        return;
    };
    while server.poll_event().is_some() {}

    for (i, d) in split_datagrams(data).into_iter().enumerate() {
        if i % 2 == 0 {
            server.handle_datagram(now, attacker, d);
            let mut sent = 0;
            while let Some(t) = server.poll_transmit(now, &mut buf) {
                if t.to == attacker {
                    sent += t.len;
                }
            }
            assert!(
                sent <= d.len(),
                "amplification: {sent} bytes out for {} in",
                d.len()
            );
        } else {
            let mut d = d.to_vec();
            if d.len() >= 9 && d[0] == 0x36 {
                d[1..9].copy_from_slice(&connection_id.to_be_bytes());
            }
            server.handle_datagram(now, client_addr, &d);
            while server.poll_transmit(now, &mut buf).is_some() {}
        }
        assert!(server.reassembly_bytes() <= server.config().endpoint_reassembly_budget);
        server.check_wakeups();
        now += core::time::Duration::from_millis(10);
        server.handle_timeout(now);
        while server.poll_event().is_some() {}
        server.check_wakeups();
    }
}

fn split_datagrams(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == 0xff && data[i + 1] == 0xfe {
            out.push(&data[start..i]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    out.push(&data[start..]);
    out
}

#[cfg(feature = "fuzzing")]
pub use ops::{describe_endpoint_ops, endpoint_ops};

/// The structured target: a sequence of operations derived with `arbitrary`, run against one
/// server and two clients, with the invariants checked after every operation.
#[cfg(feature = "fuzzing")]
mod ops {
    use alloc::collections::VecDeque;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::net::{IpAddr, Ipv4Addr, SocketAddr};
    use core::time::Duration;

    use arbitrary::{Arbitrary, Unstructured};
    use bytes::Bytes;

    use crate::endpoint::events::EVENT_OVERHEAD;
    use crate::wire::{
        Ack, ChunkInfo, DataHeader, Frame, Frames, MessageHeader, Packet, SendType,
        MAX_DATA_HEADER_LEN, MAX_MESSAGE_HEADER_LEN, MAX_VARINT_LEN, MESSAGE_HEADER_LEN,
    };
    use crate::{
        Config, ConnectionHandle, DeliveryKind, DisconnectReason, DropReason, Endpoint, Event,
        IncomingRequest, Instant, MESSAGE_WINDOW,
    };

    /// Most operations one input runs.
    const MAX_OPS: usize = 512;
    /// Captured datagrams kept for `Replay` (a ring: the newest replace the oldest).
    const POOL: usize = 256;
    /// Datagrams waiting on the honest link towards one client; past it the newest are lost.
    const INBOX: usize = 512;
    /// Requests remembered per endpoint for `Respond`.
    const REQUESTS: usize = 64;

    /// Endpoints, by index; endpoint `i` lives at address `i`.
    const SERVER: usize = 0;
    /// The honest client: a real handshake, its link moved only by `Deliver`.
    const CLIENT: usize = 1;
    /// The second client: a real handshake too, but hostile: its link is moved by
    /// `DeliverInjector` (which may corrupt its datagrams), and its address is one the
    /// injected datagrams may come from, with its own valid connection id.
    const INJECTOR: usize = 2;
    /// Addresses: the three endpoints', then three strangers that nobody answers for.
    const ADDRS: usize = 6;

    /// Where an injected datagram goes.
    #[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
    enum Target {
        Server,
        Client,
        Injector,
    }

    impl Target {
        fn endpoint(self) -> usize {
            match self {
                Target::Server => SERVER,
                Target::Client => CLIENT,
                Target::Injector => INJECTOR,
            }
        }
    }

    /// A real connection id to write into an injected packet (or none: leave it as it is).
    #[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
    enum Patch {
        None,
        Honest,
        Injector,
    }

    /// Which endpoint acts, on which connection.
    #[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
    enum Side {
        /// The honest client, on its connection.
        Client,
        /// The server, on the honest client's connection.
        ServerToClient,
        /// The injector, on its connection.
        Injector,
        /// The server, on the injector's connection.
        ServerToInjector,
    }

    /// One message frame of a crafted `Data` packet, encoded with the real wire encoder.
    #[derive(Arbitrary, Debug)]
    struct FrameSpec {
        channel: u8,
        response: bool,
        reliable: bool,
        /// `None`: the sender's real user id (0 from the server).
        owner: Option<u16>,
        sequence: u16,
        redirect: Option<u16>,
        /// (index, count), normalised to a valid pair.
        chunk: Option<(u16, u16)>,
        /// A chunk carrying exactly `chunk_payload` bytes (as every chunk but the last must).
        full_chunk: bool,
        len: u16,
        fill: u8,
    }

    /// The acknowledgement of a crafted `Data` packet.
    #[derive(Arbitrary, Debug)]
    struct AckSpec {
        /// Relative to the newest packet number seen going the other way.
        largest_delta: i16,
        delay_micros: u16,
        first: u8,
        /// (gap, length) of further ranges.
        ranges: Vec<(u8, u8)>,
    }

    /// A repair block spliced into a crafted `Data` packet: forged coding the receiver will
    /// try to solve.
    #[derive(Arbitrary, Debug)]
    struct RepairSpec {
        distance: u8,
        mask: u16,
        lens: Vec<u16>,
        symbol: Vec<u8>,
    }

    #[derive(Arbitrary, Debug)]
    enum Op {
        /// Raw bytes from one of the addresses (see `source`). With `patch`, a packet whose first byte is `0x36..=0x39` (Data,
        /// Disconnect, PathChallenge, PathResponse) gets a real connection id in `[1..9]`.
        Datagram {
            from: u8,
            to: Target,
            patch: Patch,
            bytes: Vec<u8>,
        },
        /// A well-formed `Data` packet on a real connection id (or 0), with a packet number
        /// near the newest seen on that path, an acknowledgement and message frames.
        Crafted {
            from: u8,
            to: Target,
            conn: Patch,
            pn_delta: i16,
            ping: bool,
            ack: Option<AckSpec>,
            repair: Option<RepairSpec>,
            frames: Vec<FrameSpec>,
        },
        /// A datagram captured from the traffic so far (any endpoint's), re-sent from any
        /// address to any endpoint.
        Replay {
            index: u16,
            from: u8,
            to: Target,
        },
        /// Time passes (up to about 4.2 s) and every endpoint's due timers fire.
        AdvanceTime {
            micros: u32,
        },
        /// A long pause (up to 255 s): connections time out.
        Sleep {
            secs: u8,
        },
        Send {
            side: Side,
            channel: u8,
            len: u16,
        },
        Request {
            side: Side,
            channel: u8,
            len: u16,
        },
        /// Answers one of the requests the application has read.
        Respond {
            who: Target,
            index: u8,
            len: u16,
        },
        /// The application reads up to `max` events (0: it is busy).
        ReadEvents {
            who: Target,
            max: u8,
        },
        Disconnect {
            side: Side,
            code: u16,
        },
        /// A client with no connection connects again.
        Reconnect {
            injector: bool,
        },
        /// The honest link runs: the client's datagrams reach the server and the server's
        /// waiting datagrams reach the client, for 1 to 4 rounds.
        Deliver {
            rounds: u8,
        },
        /// The injector's link runs; `corrupt` xors a byte of its first datagram each round.
        DeliverInjector {
            rounds: u8,
            corrupt: Option<(u16, u8)>,
        },
    }

    /// The ops an input decodes to (for triage: `cargo fuzz tmin` gives bytes, this gives
    /// the story).
    pub fn describe_endpoint_ops(data: &[u8]) -> String {
        alloc::format!("{:#?}", decode(data))
    }

    fn decode(data: &[u8]) -> Vec<Op> {
        let mut u = Unstructured::new(data);
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS && !u.is_empty() {
            match Op::arbitrary(&mut u) {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        ops
    }

    /// Runs a sequence of operations (derived from `data` with `arbitrary`) against a server,
    /// an honest client and a hostile second client, and checks after every one of them:
    ///
    /// - nothing panics (debug assertions included: time never goes backwards, buffers);
    /// - every endpoint's reassembly memory stays within `endpoint_reassembly_budget`;
    /// - every endpoint's event queue stays within 1.25 x `max_pending_event_bytes` plus one
    ///   admitted packet's worth (`event_slack`), however often peers reconnect, and an
    ///   input that arrives while the queue is at or over the limit adds one packet's worth
    ///   at most;
    /// - no endpoint sends an address that is not a validated peer more bytes than that
    ///   address sent it (anti-amplification, cumulative per address);
    /// - after `handle_timeout(now)` the next wake-up is after `now`;
    /// - while no datagram was injected from the honest peers' own addresses (spoofing, which
    ///   the protocol does not claim to stop) and no stranger has answered a path challenge
    ///   (an on-path attacker, which it does not claim to stop either): nothing the honest
    ///   connection delivers differs from what its peer sent, and it ends only for a reason
    ///   one of its two ends caused (a `disconnect` call, a reconnect, or silence: it never
    ///   times out on a side that received a packet of its peer within `idle_timeout`).
    pub fn endpoint_ops(data: &[u8]) {
        let ops = decode(data);
        let mut h = Harness::new();
        for op in ops {
            h.run(op);
            h.check();
        }
        // The application finally reads everything: late `Disconnected` reasons are judged.
        for who in [SERVER, CLIENT, INJECTOR] {
            h.read_events(who, usize::MAX);
        }
    }

    /// The configuration of all three endpoints: small limits, so that a few hundred
    /// operations reach them.
    fn fuzz_config() -> Config {
        let mut config = Config {
            max_message_size: 8 * 1024,
            reassembly_budget: 16 * 1024,
            endpoint_reassembly_budget: 24 * 1024,
            max_pending_event_bytes: 8 * 1024,
            max_pending_requests: 32,
            max_control_queue: 64,
            // The attacker model reads and forges clear packets (sniffed ids, tokens, packet
            // numbers): the worst case, which only plain mode allows. Protected connections
            // are attacked by `endpoint_input` and the secure tests.
            protection: crate::Protection::None,
            ..Config::default()
        };
        for channel in &mut config.channels {
            channel.max_queued_bytes = 64 * 1024;
        }
        config
    }

    /// How far one admitted `Data` packet can push an event queue past
    /// `max_pending_event_bytes`. Past the limit the queue refuses a packet's messages unless
    /// its connection has none waiting, and an admitted packet delivers everything it
    /// completes:
    ///
    /// - its own frames: at most `mtu` payload bytes, and one event per frame, a frame being
    ///   at least `MESSAGE_HEADER_LEN + 1` bytes;
    /// - messages it completes from what the connection held (chunked messages, whole
    ///   messages waiting behind a gap on an ordered channel, partial responses): at most the
    ///   connection's `reassembly_budget` of payload;
    /// - the per-event overhead of held messages released on ordered channels: up to
    ///   `MESSAGE_WINDOW` of them per ordered channel. Zero-length held messages cost the
    ///   reassembly budget nothing, so this term is not bounded by the budget.
    ///
    /// So the slack is `mtu + reassembly_budget + EVENT_OVERHEAD × (mtu / 6 + MESSAGE_WINDOW ×
    /// ordered channels)` (6 = `MESSAGE_HEADER_LEN + 1`): not "a few MTU-sized messages" but
    /// one packet plus one connection's held messages.
    fn event_slack(config: &Config) -> usize {
        let ordered = config
            .channels
            .iter()
            .filter(|c| c.kind == DeliveryKind::Ordered)
            .count();
        config.mtu
            + config.reassembly_budget
            + EVENT_OVERHEAD
                * (config.mtu / (MESSAGE_HEADER_LEN + 1) + MESSAGE_WINDOW as usize * ordered)
    }

    /// The address an injected datagram comes from, weighted towards those that do not
    /// spoof an honest peer (which turns the honest connection's checks off for the run):
    /// server and honest client 1/8 each, injector 1/4, each stranger 1/8 to 1/4.
    fn source(from: u8) -> usize {
        match from % 8 {
            0 => SERVER,
            1 => CLIENT,
            2 | 3 => INJECTOR,
            4 => 3,
            5 => 4,
            _ => 5,
        }
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + i as u8)), 9000)
    }

    /// The payload the honest application sends: position-dependent, so that a payload
    /// changed or forged on the way shows.
    fn pattern(len: usize) -> Bytes {
        (0..len).map(|i| pattern_byte(len, i)).collect()
    }

    fn pattern_byte(len: usize, i: usize) -> u8 {
        (i.wrapping_mul(7).wrapping_add(len) as u8) ^ 0xa5
    }

    fn is_pattern(payload: &[u8]) -> bool {
        payload
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(payload.len(), i))
    }

    /// When one end of an honest connection went away, and what was true then.
    #[derive(Clone, Copy, Debug)]
    struct Death {
        at: Instant,
        /// That end had received a packet of its peer less than `idle_timeout` before.
        heard_recently: bool,
        /// The peer end had been closed by its application.
        peer_closed_locally: bool,
        /// Spoofing or an on-path attacker had been at work: nothing is claimed.
        excused: bool,
    }

    /// One connection of the honest client, from `connect` on.
    #[derive(Debug)]
    struct Session {
        client: ConnectionHandle,
        server: Option<ConnectionHandle>,
        connection_id: Option<u64>,
        /// When a `Data` packet of the client last reached the live server end.
        heard_by_server: Option<Instant>,
        /// When a `Data` packet of the server last reached the connected client end.
        heard_by_client: Option<Instant>,
        client_closed_locally: bool,
        server_closed_locally: bool,
        client_death: Option<Death>,
        server_death: Option<Death>,
    }

    impl Session {
        fn new(client: ConnectionHandle) -> Self {
            Session {
                client,
                server: None,
                connection_id: None,
                heard_by_server: None,
                heard_by_client: None,
                client_closed_locally: false,
                server_closed_locally: false,
                client_death: None,
                server_death: None,
            }
        }
    }

    struct Harness {
        config: Config,
        slack: usize,
        now: Instant,
        eps: [Endpoint; 3],
        /// Datagrams from the server waiting on each client's link (index: endpoint).
        inbox: [VecDeque<Vec<u8>>; 3],
        /// (from, to, bytes) of datagrams the endpoints sent.
        pool: Vec<(usize, usize, Vec<u8>)>,
        pool_next: usize,
        /// Bytes each endpoint received from each address and sent to it.
        received: [[u64; ADDRS]; 3],
        sent: [[u64; ADDRS]; 3],
        /// An address answered a challenge of that endpoint: it is a peer now.
        validated: [[bool; ADDRS]; 3],
        /// (endpoint, address, token) of every path challenge sent.
        challenges: Vec<(usize, usize, u64)>,
        /// A datagram was injected from an honest peer's own address to the other peer.
        spoofed: bool,
        /// A path challenge was answered by someone other than the honest peer.
        compromised: bool,
        sessions: Vec<Session>,
        injector: Option<ConnectionHandle>,
        /// Real connection ids (honest, injector), from their clients' `Data` packets.
        connection_ids: [Option<u64>; 2],
        /// The clients' user ids, from their frames.
        user_ids: [u16; 2],
        /// Newest packet number seen on each connection (honest, injector) each way
        /// (to the server, to the client).
        newest_pn: [[u32; 2]; 2],
        requests: [Vec<(ConnectionHandle, IncomingRequest)>; 3],
    }

    impl Harness {
        fn new() -> Self {
            let config = fuzz_config();
            let endpoint = |seed, accept_incoming| {
                Endpoint::new(Config {
                    seed,
                    accept_incoming,
                    ..config.clone()
                })
                .expect("the fuzz configuration is valid")
            };
            let eps = [endpoint(1, true), endpoint(2, false), endpoint(3, false)];
            let mut h = Harness {
                slack: event_slack(&config),
                config,
                now: Instant::from_millis(1),
                eps,
                inbox: Default::default(),
                pool: Vec::new(),
                pool_next: 0,
                received: [[0; ADDRS]; 3],
                sent: [[0; ADDRS]; 3],
                validated: [[false; ADDRS]; 3],
                challenges: Vec::new(),
                spoofed: false,
                compromised: false,
                sessions: Vec::new(),
                injector: None,
                connection_ids: [None; 2],
                user_ids: [0; 2],
                newest_pn: [[0; 2]; 2],
                requests: Default::default(),
            };
            // Both clients complete a real handshake and send a first message, which shows
            // their connection ids and user ids.
            h.reconnect(CLIENT);
            h.reconnect(INJECTOR);
            for _ in 0..6 {
                h.deliver(CLIENT, 1, None);
                h.deliver(INJECTOR, 1, None);
            }
            let session = h.sessions.last().expect("connected above");
            assert!(
                h.eps[CLIENT].is_established(session.client)
                    && session.server.is_some()
                    && h.connection_ids.iter().all(Option::is_some),
                "setup: the handshakes did not complete: {:?}",
                h.sessions
            );
            for who in [SERVER, CLIENT, INJECTOR] {
                h.read_events(who, usize::MAX);
            }
            h.check();
            h
        }

        fn run(&mut self, op: Op) {
            match op {
                Op::Datagram {
                    from,
                    to,
                    patch,
                    mut bytes,
                } => {
                    bytes.truncate(self.config.mtu + 64);
                    if let Some(id) = self.patch_id(patch) {
                        if bytes.len() >= 9 && (0x36..=0x39).contains(&bytes[0]) {
                            bytes[1..9].copy_from_slice(&id.to_be_bytes());
                        }
                    }
                    self.inject(source(from), to.endpoint(), &bytes);
                }
                Op::Crafted {
                    from,
                    to,
                    conn,
                    pn_delta,
                    ping,
                    ack,
                    repair,
                    frames,
                } => {
                    if let Some(mut bytes) = self.craft(to, conn, pn_delta, ping, ack, &frames) {
                        if let Some(spec) = repair {
                            Self::splice_repair(&mut bytes, &spec, &self.config);
                        }
                        self.inject(source(from), to.endpoint(), &bytes);
                    }
                }
                Op::Replay { index, from, to } => {
                    if !self.pool.is_empty() {
                        let bytes = self.pool[usize::from(index) % self.pool.len()].2.clone();
                        self.inject(source(from), to.endpoint(), &bytes);
                    }
                }
                Op::AdvanceTime { micros } => {
                    self.advance(Duration::from_micros(u64::from(micros & 0x3f_ffff)));
                }
                Op::Sleep { secs } => self.advance(Duration::from_secs(u64::from(secs))),
                Op::Send { side, channel, len } => {
                    if let Some((ep, conn)) = self.side(side) {
                        let payload = self.payload(len);
                        let _ = self.eps[ep].send(conn, channel % 6, payload);
                    }
                }
                Op::Request { side, channel, len } => {
                    if let Some((ep, conn)) = self.side(side) {
                        let payload = self.payload(len);
                        let _ = self.eps[ep].request(self.now, conn, channel % 6, payload);
                    }
                }
                Op::Respond { who, index, len } => {
                    let ep = who.endpoint();
                    if !self.requests[ep].is_empty() {
                        let i = usize::from(index) % self.requests[ep].len();
                        let (conn, request) = self.requests[ep].swap_remove(i);
                        let payload = self.payload(len);
                        let _ = self.eps[ep].respond(conn, request, payload);
                    }
                }
                Op::ReadEvents { who, max } => self.read_events(who.endpoint(), usize::from(max)),
                Op::Disconnect { side, code } => {
                    if let Some((ep, conn)) = self.side(side) {
                        if let Some(s) = self.sessions.last_mut() {
                            match side {
                                Side::Client => s.client_closed_locally = true,
                                Side::ServerToClient => s.server_closed_locally = true,
                                _ => {}
                            }
                        }
                        self.eps[ep].disconnect(conn, code);
                    }
                }
                Op::Reconnect { injector } => {
                    self.reconnect(if injector { INJECTOR } else { CLIENT });
                }
                Op::Deliver { rounds } => self.deliver(CLIENT, rounds, None),
                Op::DeliverInjector { rounds, corrupt } => {
                    self.deliver(INJECTOR, rounds, corrupt);
                }
            }
        }

        // ------------------------------------------------------------------ the network

        /// A datagram from `from` reaches endpoint `ep`.
        fn arrive(&mut self, from: usize, ep: usize, bytes: &[u8]) {
            // A path response from `from` that validates it: whoever is there receives there
            // (it saw the challenge, or guessed its token), and may act as a peer from now on.
            let mut answered = None;
            if let Ok(Packet::PathResponse {
                connection_id,
                token,
                ..
            }) = Packet::decode(bytes)
            {
                if self.challenges.contains(&(ep, from, token)) {
                    self.validated[ep][from] = true;
                    self.compromised = true;
                }
                // A response to a live connection that it does not count as unexpected
                // validated its address (a token the harness has not seen go out: guessed).
                answered = self.handle_for(ep, connection_id).and_then(|h| {
                    let unexpected = self.unexpected_drops(ep, h)?;
                    Some((h, unexpected))
                });
            }
            self.received[ep][from] += bytes.len() as u64;
            let before = self.eps[ep].pending_event_bytes();
            // Hints read whatever a datagram's header names: they must neither panic nor
            // name nothing for the endpoint itself.
            let mut named = 0usize;
            for hint in [
                crate::MemoryHint::Datagram(bytes),
                crate::MemoryHint::Endpoint,
                crate::MemoryHint::Transmit(from),
            ] {
                for stage in 0..=hint.stages() {
                    self.eps[ep].memory_hints(hint, stage, &mut |_, len| named += len);
                }
            }
            assert!(named > 0, "the endpoint's own lines are always named");
            self.eps[ep].handle_datagram(self.now, addr(from), bytes);
            self.check_event_growth(ep, before, "a datagram");
            if let Some((h, unexpected)) = answered {
                if self.unexpected_drops(ep, h) == Some(unexpected) {
                    self.validated[ep][from] = true;
                    self.compromised = true;
                }
            }
            if ep == SERVER {
                self.pump_server();
            }
        }

        /// Endpoint `ep`'s end of the connection with this id, if the harness knows it.
        fn handle_for(&self, ep: usize, connection_id: u64) -> Option<ConnectionHandle> {
            let which = self
                .connection_ids
                .iter()
                .position(|&id| id == Some(connection_id))?;
            match (ep, which) {
                (SERVER, 0) => self.sessions.last()?.server,
                (SERVER, _) => self.side(Side::ServerToInjector).map(|(_, h)| h),
                (CLIENT, 0) => Some(self.sessions.last()?.client),
                (INJECTOR, 1) => self.injector,
                _ => None,
            }
        }

        fn unexpected_drops(&self, ep: usize, conn: ConnectionHandle) -> Option<u64> {
            let stats = self.eps[ep].connection_stats(conn)?;
            Some(stats.drops.get(DropReason::Unexpected))
        }

        /// A datagram that is not the honest traffic between its sender and receiver.
        fn inject(&mut self, from: usize, ep: usize, bytes: &[u8]) {
            if (from == CLIENT && ep == SERVER) || (from == SERVER && ep == CLIENT) {
                self.spoofed = true;
            }
            self.arrive(from, ep, bytes);
        }

        /// Takes what endpoint `ep` sends: counts and captures it, and returns it with its
        /// destination.
        fn drain(&mut self, ep: usize) -> Vec<(usize, Vec<u8>)> {
            let mut buf = [0u8; 1500];
            let mut out = Vec::new();
            while let Some(t) = self.eps[ep].poll_transmit(self.now, &mut buf) {
                assert!(t.len <= self.config.mtu, "datagram over the mtu: {}", t.len);
                let bytes = buf[..t.len].to_vec();
                let to = (0..ADDRS)
                    .find(|&i| addr(i) == t.to)
                    .expect("endpoints only send to addresses they heard from");
                self.sent[ep][to] += t.len as u64;
                self.observe(ep, to, &bytes);
                if self.pool.len() < POOL {
                    self.pool.push((ep, to, bytes.clone()));
                } else {
                    self.pool[self.pool_next] = (ep, to, bytes.clone());
                    self.pool_next = (self.pool_next + 1) % POOL;
                }
                out.push((to, bytes));
            }
            out
        }

        /// Learns from a datagram sent: challenge tokens, connection ids, user ids and packet
        /// numbers for crafted packets.
        fn observe(&mut self, ep: usize, to: usize, bytes: &[u8]) {
            match Packet::decode(bytes) {
                Ok(Packet::PathChallenge { token, .. })
                    if !self.challenges.contains(&(ep, to, token)) =>
                {
                    self.challenges.push((ep, to, token));
                }
                Ok(Packet::Data { header, frames }) => {
                    let (conn, dir) = match (ep, to) {
                        (CLIENT, SERVER) => (0, 0),
                        (INJECTOR, SERVER) => (1, 0),
                        (SERVER, CLIENT) => (0, 1),
                        (SERVER, INJECTOR) => (1, 1),
                        _ => return,
                    };
                    self.newest_pn[conn][dir] = header.packet_number;
                    if dir == 0 {
                        self.connection_ids[conn] = Some(header.connection_id);
                        if let Some(Ok(frame)) = Frames::new(frames).next() {
                            self.user_ids[conn] = frame.header.owner;
                        }
                        if conn == 0 {
                            if let Some(s) = self.sessions.last_mut() {
                                s.connection_id.get_or_insert(header.connection_id);
                            }
                        }
                    }
                }
                _ => {}
            }
        }

        /// The server's datagrams go on its links to the clients; to anyone else, nowhere.
        fn pump_server(&mut self) {
            for (to, bytes) in self.drain(SERVER) {
                if (to == CLIENT || to == INJECTOR) && self.inbox[to].len() < INBOX {
                    self.inbox[to].push_back(bytes);
                }
            }
            self.discover();
        }

        /// Runs a client's link for 1 to 4 rounds: due timers fire, the client's datagrams
        /// reach the server, the server's waiting ones reach the client.
        fn deliver(&mut self, client: usize, rounds: u8, corrupt: Option<(u16, u8)>) {
            for _ in 0..rounds % 4 + 1 {
                self.tick(SERVER);
                self.tick(client);
                for (i, (to, mut bytes)) in self.drain(client).into_iter().enumerate() {
                    if to != SERVER {
                        continue;
                    }
                    match corrupt {
                        Some((at, xor)) if i == 0 && xor != 0 && !bytes.is_empty() => {
                            let at = usize::from(at) % bytes.len();
                            bytes[at] ^= xor;
                            self.arrive(client, SERVER, &bytes);
                        }
                        _ => self.honest_arrival(client, SERVER, &bytes),
                    }
                }
                while let Some(bytes) = self.inbox[client].pop_front() {
                    self.honest_arrival(SERVER, client, &bytes);
                }
            }
        }

        /// A datagram on the honest link; for the honest connection it records when each end
        /// last heard its peer.
        fn honest_arrival(&mut self, from: usize, ep: usize, bytes: &[u8]) {
            let honest = from == CLIENT || ep == CLIENT;
            let data_id = match Packet::decode(bytes) {
                Ok(Packet::Data { header, .. }) if honest => Some(header.connection_id),
                _ => None,
            };
            // Only a packet the receiving end must accept counts: a `Data` packet of the
            // session's connection, reaching an end that is live and connected.
            let counts = match (self.sessions.last(), data_id) {
                (Some(s), Some(id)) if s.connection_id == Some(id) => {
                    if ep == SERVER {
                        s.server.is_some_and(|h| self.eps[SERVER].is_established(h))
                    } else {
                        self.eps[CLIENT].is_established(s.client)
                    }
                }
                _ => false,
            };
            self.arrive(from, ep, bytes);
            if counts {
                let now = self.now;
                if let Some(s) = self.sessions.last_mut() {
                    if ep == SERVER {
                        s.heard_by_server = Some(now);
                    } else {
                        s.heard_by_client = Some(now);
                    }
                }
            }
        }

        /// Finds the server's end of the honest client's newest connection.
        fn discover(&mut self) {
            let Some(s) = self.sessions.last() else {
                return;
            };
            if s.server.is_some() {
                return;
            }
            let server = &self.eps[SERVER];
            let found = server.connections().find(|&h| {
                server.remote_address(h) == Some(addr(CLIENT))
                    && !self.sessions.iter().any(|s| s.server == Some(h))
            });
            if let Some(s) = self.sessions.last_mut() {
                s.server = found;
            }
        }

        fn reconnect(&mut self, client: usize) {
            if self.eps[client].connection_count() > 0 {
                return;
            }
            let data: &[u8] = if client == CLIENT {
                b"honest"
            } else {
                b"injector"
            };
            let Ok(conn) = self.eps[client].connect(self.now, addr(SERVER), data) else {
                return;
            };
            if client == CLIENT {
                self.sessions.push(Session::new(conn));
            } else {
                self.injector = Some(conn);
            }
            // A first message makes the client send `Data` once connected.
            let _ = self.eps[client].send(conn, 2, pattern(5));
        }

        // ------------------------------------------------------------------ time

        fn advance(&mut self, by: Duration) {
            let before = self.now;
            self.now += by;
            assert!(self.now >= before, "time went backwards");
            for ep in [SERVER, CLIENT, INJECTOR] {
                self.tick(ep);
            }
        }

        /// Fires endpoint `ep`'s timers if one is due, as a driver does.
        fn tick(&mut self, ep: usize) {
            if self.eps[ep].poll_timeout().is_none_or(|t| t > self.now) {
                return;
            }
            let before = self.eps[ep].pending_event_bytes();
            self.eps[ep].handle_timeout(self.now);
            self.check_event_growth(ep, before, "a timeout");
            let next = self.eps[ep].poll_timeout();
            assert!(
                next.is_none_or(|t| t > self.now),
                "endpoint {ep}: after handle_timeout({:?}) the next wake-up is {next:?}",
                self.now
            );
            if ep == SERVER {
                self.pump_server();
            }
        }

        // ------------------------------------------------------------------ application

        fn payload(&self, len: u16) -> Bytes {
            // Mostly within max_message_size, sometimes just over it.
            pattern(usize::from(len) % (self.config.max_message_size + 256))
        }

        fn patch_id(&self, patch: Patch) -> Option<u64> {
            match patch {
                Patch::None => None,
                Patch::Honest => self.connection_ids[0],
                Patch::Injector => self.connection_ids[1],
            }
        }

        fn side(&self, side: Side) -> Option<(usize, ConnectionHandle)> {
            match side {
                Side::Client => Some((CLIENT, self.sessions.last()?.client)),
                Side::ServerToClient => Some((SERVER, self.sessions.last()?.server?)),
                Side::Injector => Some((INJECTOR, self.injector?)),
                Side::ServerToInjector => {
                    let server = &self.eps[SERVER];
                    let conn = server
                        .connections()
                        .find(|&h| server.remote_address(h) == Some(addr(INJECTOR)))?;
                    Some((SERVER, conn))
                }
            }
        }

        fn read_events(&mut self, ep: usize, max: usize) {
            self.note_deaths();
            for _ in 0..max {
                let Some(event) = self.eps[ep].poll_event() else {
                    return;
                };
                self.on_event(ep, event);
            }
        }

        fn on_event(&mut self, ep: usize, event: Event) {
            match event {
                Event::Disconnected { conn, reason } => {
                    self.requests[ep].retain(|(c, _)| *c != conn);
                    self.judge_end(ep, conn, reason);
                }
                Event::Message { conn, payload, .. } | Event::Response { conn, payload, .. } => {
                    self.check_payload(ep, conn, &payload);
                }
                Event::Request {
                    conn,
                    request,
                    payload,
                    ..
                } => {
                    self.check_payload(ep, conn, &payload);
                    if self.requests[ep].len() < REQUESTS {
                        self.requests[ep].push((conn, request));
                    }
                }
                _ => {}
            }
        }

        /// What the honest connection delivers is what its peer's application sent.
        fn check_payload(&self, ep: usize, conn: ConnectionHandle, payload: &[u8]) {
            if self.spoofed || self.compromised {
                return;
            }
            let honest = self.sessions.iter().any(|s| match ep {
                SERVER => s.server == Some(conn),
                CLIENT => s.client == conn,
                _ => false,
            });
            assert!(
                !honest || is_pattern(payload),
                "endpoint {ep} delivered {} bytes on the honest connection that its peer \
                 never sent: {:02x?}",
                payload.len(),
                &payload[..payload.len().min(32)]
            );
        }

        /// Judges why an end of the honest connection went away.
        fn judge_end(&self, ep: usize, conn: ConnectionHandle, reason: DisconnectReason) {
            let Some(i) = self.sessions.iter().position(|s| match ep {
                SERVER => s.server == Some(conn),
                CLIENT => s.client == conn,
                _ => false,
            }) else {
                return;
            };
            let s = &self.sessions[i];
            let (death, closed_locally, peer_death) = if ep == SERVER {
                (s.server_death, s.server_closed_locally, s.client_death)
            } else {
                (s.client_death, s.client_closed_locally, s.server_death)
            };
            let Some(death) = death else {
                panic!("endpoint {ep}: Disconnected({reason:?}) for a connection still live");
            };
            if death.excused {
                return;
            }
            let ok = match reason {
                DisconnectReason::ClosedLocally => closed_locally,
                DisconnectReason::TimedOut => !death.heard_recently,
                DisconnectReason::ClosedByPeer { .. } => death.peer_closed_locally,
                // The client connected again: its old connection gives way on the server.
                DisconnectReason::Replaced => ep == SERVER && i + 1 < self.sessions.len(),
                // The peer had dropped the connection already and said so ("unknown
                // connection"), with nothing authentic from it since.
                DisconnectReason::PeerReset => peer_death.is_some_and(|d| d.at <= death.at),
                _ => false,
            };
            assert!(
                ok,
                "the honest connection's {} end ended with {reason:?} at {:?}, though only \
                 strangers injected anything: {s:?}",
                if ep == SERVER { "server" } else { "client" },
                death.at
            );
        }

        // ------------------------------------------------------------------ crafted packets

        fn craft(
            &self,
            to: Target,
            conn: Patch,
            pn_delta: i16,
            ping: bool,
            ack: Option<AckSpec>,
            specs: &[FrameSpec],
        ) -> Option<Vec<u8>> {
            let (index, connection_id) = match conn {
                Patch::None => (0, 0),
                Patch::Honest => (0, self.connection_ids[0]?),
                Patch::Injector => (1, self.connection_ids[1]?),
            };
            // Packets to the server continue its peer's numbering; to a client, the server's.
            let dir = usize::from(to != Target::Server);
            let packet_number = self.newest_pn[index][dir].wrapping_add(pn_delta as i32 as u32);
            let owner = if to == Target::Server {
                self.user_ids[index]
            } else {
                0
            };
            let chunk_payload = self.config.chunk_payload();
            let room = self.config.mtu - MAX_DATA_HEADER_LEN;
            let mut frames = Vec::new();
            let mut scratch = vec![0u8; self.config.mtu];
            for spec in specs.iter().take(64) {
                let chunk = spec.chunk.map(|(index, count)| {
                    let count = count.max(2);
                    ChunkInfo {
                        index: index % count,
                        count,
                    }
                });
                let header = MessageHeader {
                    channel: spec.channel % 16,
                    send_type: if spec.response {
                        SendType::Response
                    } else {
                        SendType::Message
                    },
                    reliable: spec.reliable && !spec.response,
                    owner: spec.owner.unwrap_or(owner),
                    sequence: spec.sequence,
                    redirect: spec.redirect,
                    chunk,
                };
                let overhead = MAX_MESSAGE_HEADER_LEN + MAX_VARINT_LEN;
                let Some(left) = room.checked_sub(frames.len() + overhead) else {
                    break;
                };
                let want = if chunk.is_some() && spec.full_chunk {
                    chunk_payload
                } else {
                    usize::from(spec.len)
                };
                let payload = vec![spec.fill; want.min(left)];
                let frame = Frame {
                    header,
                    payload: &payload,
                };
                let n = frame.encode_to(&mut scratch)?;
                frames.extend_from_slice(&scratch[..n]);
            }
            let mut ack_buf = [0u8; 256];
            let ack = ack.and_then(|a| {
                let largest =
                    self.newest_pn[index][1 - dir].wrapping_add(a.largest_delta as i32 as u32);
                let mut ranges = vec![(u64::from(a.first), 0u64)];
                let mut low = u64::from(a.first);
                for &(gap, len) in a.ranges.iter().take(31) {
                    let high = low + 2 + u64::from(gap);
                    low = high + u64::from(len);
                    ranges.push((low, high));
                }
                Ack::build(largest, u64::from(a.delay_micros), &ranges, &mut ack_buf)
            });
            let packet = Packet::Data {
                header: DataHeader {
                    connection_id,
                    packet_number,
                    ping,
                    ack,
                    repair: None,
                },
                frames: &frames,
            };
            let mut out = vec![0u8; self.config.mtu + MAX_DATA_HEADER_LEN];
            let n = packet.encode(&mut out)?;
            out.truncate(n);
            Some(out)
        }

        /// Inserts a repair block after a crafted packet's acknowledgement (before its frames),
        /// keeping the datagram within the MTU.
        fn splice_repair(bytes: &mut Vec<u8>, spec: &RepairSpec, config: &Config) {
            let Ok(Packet::Data { frames, .. }) = Packet::decode(bytes) else {
                return;
            };
            let at = bytes.len() - frames.len();
            let mask = spec.mask | 1;
            let mut block = Vec::new();
            let put = |v: u32, block: &mut Vec<u8>| {
                let mut b = [0u8; 3];
                if let Some(n) = crate::wire::encode_varint(v.min(crate::wire::MAX_VARINT), &mut b)
                {
                    block.extend_from_slice(&b[..n]);
                }
            };
            put(u32::from(spec.distance.max(1)), &mut block);
            block.extend_from_slice(&mask.to_be_bytes());
            let mut longest = 1;
            for i in 0..mask.count_ones() as usize {
                let len = spec.lens.get(i).copied().unwrap_or(1).max(1) % 700;
                let len = u32::from(len.max(1));
                longest = longest.max(len as usize);
                put(len, &mut block);
            }
            let mut symbol = spec.symbol.clone();
            symbol.resize(longest, 0x5a);
            block.extend_from_slice(&symbol);
            if bytes.len() + block.len() > config.mtu {
                return;
            }
            bytes[crate::wire::DATA_HEADER_LEN - 1] |= crate::wire::REPAIR_BIT;
            bytes.splice(at..at, block);
        }

        // ------------------------------------------------------------------ invariants

        /// An input that arrives while the event queue is at its limit grows it by one
        /// admitted packet's worth at most (only a connection with none of its events waiting
        /// gets a packet in then); a timeout never grows it past the limit.
        fn check_event_growth(&self, ep: usize, before: usize, what: &str) {
            let after = self.eps[ep].pending_event_bytes();
            assert!(
                before < self.config.max_pending_event_bytes || after <= before + self.slack,
                "endpoint {ep}: {what} grew the event queue from {before} to {after} bytes \
                 though it was at its limit of {} (one packet may add {})",
                self.config.max_pending_event_bytes,
                self.slack
            );
        }

        fn check(&mut self) {
            let config = &self.config;
            for (ep, e) in self.eps.iter().enumerate() {
                e.check_wakeups();
                assert!(
                    e.reassembly_bytes() <= config.endpoint_reassembly_budget,
                    "endpoint {ep} holds {} reassembly bytes, over its budget of {}",
                    e.reassembly_bytes(),
                    config.endpoint_reassembly_budget
                );
                // Past the limit, only a connection with none of its events waiting gets a
                // packet in, and only while the queue is less than a quarter over: so the
                // queue never exceeds 1.25 x the limit plus the one packet that crossed it.
                let limit = config.max_pending_event_bytes;
                assert!(
                    e.pending_event_bytes() <= limit + limit / 4 + self.slack,
                    "endpoint {ep} has {} bytes of events waiting, over {limit} + {} + {} \
                     for the packet that crossed it",
                    e.pending_event_bytes(),
                    limit / 4,
                    self.slack
                );
                // Addresses that are no peer of this endpoint: its own, the strangers', and
                // for a client the other client's.
                for stranger in 0..ADDRS {
                    let peer = match ep {
                        SERVER => stranger == CLIENT || stranger == INJECTOR,
                        _ => stranger == SERVER,
                    };
                    if peer || self.validated[ep][stranger] {
                        continue;
                    }
                    assert!(
                        self.sent[ep][stranger] <= self.received[ep][stranger],
                        "amplification: endpoint {ep} sent {} bytes to {} that sent it {}",
                        self.sent[ep][stranger],
                        addr(stranger),
                        self.received[ep][stranger]
                    );
                }
            }
            // The honest connection moved: someone answered a path challenge.
            for s in &self.sessions {
                let server_end = s.server.and_then(|h| self.eps[SERVER].remote_address(h));
                let client_end = self.eps[CLIENT].remote_address(s.client);
                if server_end.is_some_and(|a| a != addr(CLIENT))
                    || client_end.is_some_and(|a| a != addr(SERVER))
                {
                    self.compromised = true;
                }
            }
            self.note_deaths();
        }

        /// Notes when each end of the honest connections went away, and what was true then.
        fn note_deaths(&mut self) {
            let now = self.now;
            let idle = self.config.idle_timeout;
            let excused = self.spoofed || self.compromised;
            for s in &mut self.sessions {
                let recently = |t: Option<Instant>| t.is_some_and(|t| now < t + idle);
                if s.client_death.is_none() && self.eps[CLIENT].remote_address(s.client).is_none() {
                    s.client_death = Some(Death {
                        at: now,
                        heard_recently: recently(s.heard_by_client),
                        peer_closed_locally: s.server_closed_locally,
                        excused,
                    });
                }
                if let Some(h) = s.server {
                    if s.server_death.is_none() && self.eps[SERVER].remote_address(h).is_none() {
                        s.server_death = Some(Death {
                            at: now,
                            heard_recently: recently(s.heard_by_server),
                            peer_closed_locally: s.client_closed_locally,
                            excused,
                        });
                    }
                }
            }
        }
    }
}
