//! LAN discovery on loopback: ephemeral ports, no broadcast or multicast, every wait bounded.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use shoal_std::discovery::{
    Discovery, LanConfig, LanResponder, LanSeeker, RateLimit, ResponderConfig, ResponderStats,
};
use shoal_std::shoal_proto::discovery::{Request, Response, MAX_RESPONSE_LEN, REQUEST_LEN};

const SEEK: Duration = Duration::from_millis(400);
const PATIENCE: Duration = Duration::from_secs(5);

fn responder(protocol_id: u32, data: &[u8]) -> (LanResponder, u16) {
    let responder = LanResponder::bind(ResponderConfig {
        protocol_id,
        shoal_port: 4242,
        data: data.to_vec(),
        ..ResponderConfig::loopback(0)
    })
    .expect("binds");
    let port = responder.local_addr().expect("addr").port();
    (responder, port)
}

fn seek(config: LanConfig, verify: impl FnMut(&shoal_std::LanPeer) -> bool) -> Discovery {
    LanSeeker::new(config)
        .expect("opens")
        .run(SEEK, verify)
        .expect("runs")
}

/// Updates `responder` until `done` holds of its stats, at most `PATIENCE`.
fn update_until(responder: &mut LanResponder, done: impl Fn(&ResponderStats) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done(&responder.stats()) {
        assert!(Instant::now() < deadline, "stats {:?}", responder.stats());
        responder.update().expect("update");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn raw_socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("binds");
    socket
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    socket
}

fn request(protocol_id: u32, nonce: u64) -> Vec<u8> {
    let mut buf = vec![0u8; REQUEST_LEN];
    let len = Request {
        protocol_id,
        nonce,
        query: b"",
    }
    .encode(&mut buf)
    .expect("encodes");
    buf.truncate(len);
    buf
}

#[test]
fn seeker_finds_responder_with_its_data() {
    let (responder, port) = responder(7, b"game=chess;players=3;v=1");
    let handle = responder.spawn().expect("spawns");
    let found = seek(
        LanConfig {
            protocol_id: 7,
            ..LanConfig::loopback(port)
        },
        |_| true,
    );
    let stats = handle.stop().expect("stops cleanly").stats();

    assert_eq!(found.peers.len(), 1, "{found:?}");
    assert_eq!(
        found.peers[0].addr,
        "127.0.0.1:4242".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(found.peers[0].data, "game=chess;players=3;v=1");
    assert!(found.failures.is_empty(), "{:?}", found.failures);
    assert_eq!((found.refused, found.ignored), (0, 0));
    assert_eq!(stats.answered, 1);
}

/// A handle dropped without `stop` stops its thread: nothing answers after.
#[test]
fn dropping_a_responder_handle_stops_answering() {
    let (responder, port) = responder(7, b"game=chess");
    let handle = responder.spawn().expect("spawns");
    drop(handle);
    let found = seek(
        LanConfig {
            protocol_id: 7,
            ..LanConfig::loopback(port)
        },
        |_| true,
    );
    assert!(found.peers.is_empty(), "{found:?}");
}

#[test]
fn discover_returns_updated_data_once_per_peer() {
    let (responder, port) = responder(7, b"v=1;players=0");
    let handle = responder.spawn().expect("spawns");
    handle.set_data(b"v=1;players=2".to_vec()).expect("fits");
    // The same responder asked twice (as broadcast and multicast would): listed once.
    let mut config = LanConfig {
        protocol_id: 7,
        ..LanConfig::loopback(port)
    };
    config.extra_targets.push(config.extra_targets[0]);
    let peers = shoal_std::discover(config, SEEK, |_| true).expect("discovers");
    let stats = handle.stop().expect("stops cleanly").stats();

    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].data, "v=1;players=2");
    assert_eq!(stats.answered, 2, "both requests were answered");
}

#[test]
fn verify_hook_refuses_another_version() {
    let (responder, port) = responder(7, b"game=chess;v=2");
    let handle = responder.spawn().expect("spawns");
    let mut seen = Vec::new();
    let found = seek(
        LanConfig {
            protocol_id: 7,
            ..LanConfig::loopback(port)
        },
        |peer| {
            seen.push(peer.data.clone());
            peer.data == "game=chess;v=1"
        },
    );
    handle.stop().expect("stops cleanly");

    assert!(found.peers.is_empty(), "{found:?}");
    assert_eq!(found.refused, 1);
    assert_eq!(seen, ["game=chess;v=2"], "the hook saw the answer");
}

#[test]
fn another_protocol_id_gets_no_answer() {
    let (mut responder, port) = responder(7, b"data");
    let socket = raw_socket();
    socket
        .send_to(&request(8, 1), ("127.0.0.1", port))
        .expect("sends");
    update_until(&mut responder, |s| s.wrong_protocol == 1);
    assert_eq!(responder.stats().answered, 0);

    // And through a seeker: nothing comes back, so nothing is even ignored.
    let handle = responder.spawn().expect("spawns");
    let found = seek(
        LanConfig {
            protocol_id: 8,
            ..LanConfig::loopback(port)
        },
        |_| true,
    );
    let responder = handle.stop().expect("stops cleanly");
    assert!(found.peers.is_empty(), "{found:?}");
    assert_eq!(found.ignored, 0);
    assert_eq!(responder.stats().wrong_protocol, 2);
    assert_eq!(responder.stats().answered, 0);
}

#[test]
fn malformed_datagrams_get_no_answer_and_no_panic() {
    let (mut responder, port) = responder(7, b"data");
    let socket = raw_socket();
    let good = request(7, 99);
    let mut long = good.clone();
    long.push(0);
    let mut bad_padding = good.clone();
    bad_padding[REQUEST_LEN - 1] = 1;
    let mut response_kind = good.clone();
    response_kind[4] = 0x12;
    let malformed: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        vec![0x31; 48], // a Shoal Hello's first byte
        good[..REQUEST_LEN - 1].to_vec(),
        long,
        bad_padding,
        response_kind,
        vec![0xf5; 2000],
    ];
    for datagram in &malformed {
        socket
            .send_to(datagram, ("127.0.0.1", port))
            .expect("sends");
    }
    socket.send_to(&good, ("127.0.0.1", port)).expect("sends");
    update_until(&mut responder, |s| s.malformed + s.answered == 9);
    assert_eq!(responder.stats().malformed, 8);

    // Loopback keeps order: the first answer is the good request's, so none came before it.
    let mut buf = [0u8; MAX_RESPONSE_LEN + 1];
    let len = socket.recv(&mut buf).expect("an answer");
    let response = Response::decode(&buf[..len]).expect("a response");
    assert_eq!(response.nonce, 99);
}

#[test]
fn answers_with_a_wrong_nonce_are_ignored() {
    let fake = raw_socket();
    let port = fake.local_addr().expect("addr").port();
    let seeker = LanSeeker::new(LanConfig {
        protocol_id: 7,
        ..LanConfig::loopback(port)
    })
    .expect("opens");
    let nonce = seeker.nonce();
    let found = std::thread::scope(|s| {
        let seeking = s.spawn(|| seeker.run(Duration::from_millis(1500), |_| true));
        let mut buf = [0u8; REQUEST_LEN + 1];
        let (len, from) = fake.recv_from(&mut buf).expect("the request arrives");
        let request = Request::decode(&buf[..len]).expect("a request");
        assert_eq!((request.protocol_id, request.nonce), (7, nonce));
        let answer = |protocol_id, nonce, data: &'static [u8]| {
            let mut out = [0u8; MAX_RESPONSE_LEN];
            let response = Response {
                protocol_id,
                nonce,
                port: 1000,
                data,
            };
            let len = response.encode(&mut out).expect("encodes");
            fake.send_to(&out[..len], from).expect("sends");
        };
        answer(7, nonce.wrapping_add(1), b"stale");
        answer(8, nonce, b"other protocol");
        fake.send_to(b"junk", from).expect("sends");
        answer(7, nonce, b"real");
        seeking.join().expect("no panic").expect("runs")
    });
    assert_eq!(found.ignored, 3, "{found:?}");
    assert_eq!(found.peers.len(), 1, "{found:?}");
    assert_eq!(found.peers[0].data, "real");
    assert_eq!(found.peers[0].addr.port(), 1000);
}

#[test]
fn responder_rate_limits_each_source() {
    let mut responder = LanResponder::bind(ResponderConfig {
        protocol_id: 7,
        shoal_port: 4242,
        rate_limit: RateLimit {
            per_source: 2,
            // Long enough that the test never crosses into a new window.
            window: Duration::from_secs(600),
            max_sources: 16,
        },
        ..ResponderConfig::loopback(0)
    })
    .expect("binds");
    let port = responder.local_addr().expect("addr").port();
    let socket = raw_socket();
    for nonce in 0..5 {
        socket
            .send_to(&request(7, nonce), ("127.0.0.1", port))
            .expect("sends");
    }
    update_until(&mut responder, |s| s.answered + s.rate_limited == 5);
    assert_eq!(responder.stats().answered, 2);
    assert_eq!(responder.stats().rate_limited, 3);
}

#[cfg(target_os = "linux")]
#[test]
fn a_failing_target_is_reported_not_fatal() {
    let (responder, port) = responder(7, b"data");
    let handle = responder.spawn().expect("spawns");
    let bad: SocketAddr = "127.0.0.1:0".parse().expect("addr"); // Linux refuses port 0
    let mut config = LanConfig {
        protocol_id: 7,
        ..LanConfig::loopback(port)
    };
    config.extra_targets.insert(0, bad);
    let found = seek(config, |_| true);
    handle.stop().expect("stops cleanly");
    assert_eq!(found.peers.len(), 1, "{found:?}");
    assert_eq!(found.failures.len(), 1, "{found:?}");
    assert_eq!(found.failures[0].target, bad);

    // With no target left, sending is the error.
    let only_bad = LanConfig {
        extra_targets: vec![bad],
        ..LanConfig::loopback(port)
    };
    let mut seeker = LanSeeker::new(only_bad).expect("opens");
    assert!(seeker.send().is_err());
    assert_eq!(seeker.result().failures.len(), 1);
}

#[test]
fn oversized_data_is_refused_up_front() {
    let config = ResponderConfig {
        shoal_port: 1,
        data: vec![0; shoal_std::discovery::MAX_APP_DATA + 1],
        ..ResponderConfig::loopback(0)
    };
    assert!(LanResponder::bind(config).is_err());
    let no_port = ResponderConfig::loopback(0);
    assert!(
        LanResponder::bind(no_port).is_err(),
        "shoal_port 0 is refused"
    );
}
