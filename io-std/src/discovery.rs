//! LAN discovery: peers on one network find each other without a server.
//!
//! A [`LanResponder`] listens on the discovery port ([`DEFAULT_PORT`] unless configured) and
//! answers each request for its protocol id with the port its Shoal endpoint listens on and
//! the application's data (game name, player count, version: bytes of its choosing, at most
//! [`MAX_APP_DATA`]). A seeker ([`discover`], or [`LanSeeker`] for more control) sends the
//! request by IPv4 broadcast to `255.255.255.255`, by IPv6 multicast to [`MULTICAST_V6`] and
//! to any extra addresses configured, collects answers until its timeout, and keeps those the
//! application's verify hook accepts. The application then `connect`s to a [`LanPeer::addr`].
//!
//! The wire format is [`shoal_proto::discovery`]. Discovery is unauthenticated: anyone on the
//! network can answer, so treat a peer's data as a claim, and let the Shoal handshake (a
//! pinned server key, a connect token) decide whom to trust.
//!
//! ```
//! use std::time::Duration;
//! use shoal_std::discovery::{discover, LanConfig, LanResponder, ResponderConfig};
//!
//! # fn main() -> std::io::Result<()> {
//! // Loopback only here; on a LAN keep the defaults (any address, broadcast and multicast).
//! let responder = LanResponder::bind(ResponderConfig {
//!     shoal_port: 5000,
//!     data: b"chess v1".to_vec(),
//!     ..ResponderConfig::loopback(0)
//! })?;
//! let port = responder.local_addr()?.port();
//! let responder = responder.spawn()?;
//!
//! let peers = discover(LanConfig::loopback(port), Duration::from_millis(500), |peer| {
//!     peer.data.starts_with(b"chess")
//! })?;
//! assert_eq!(peers[0].addr, "127.0.0.1:5000".parse().unwrap());
//! assert_eq!(peers[0].data, "chess v1");
//! responder.stop();
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal_proto::discovery::{DiscoveryError, Request, Response, REQUEST_LEN};
pub use shoal_proto::discovery::{
    DEFAULT_PORT, MAX_APP_DATA, MAX_QUERY_LEN, MAX_RESPONSE_LEN, MULTICAST_V6,
};
use shoal_proto::{Bytes, Config};
use socket2::{Domain, Protocol, Socket, Type};

use crate::io_util::{recv_error_action, RecvErrorAction};

/// One read of a non-blocking discovery socket.
enum Received {
    /// A datagram of this length, from there.
    Datagram(usize, SocketAddr),
    /// An error to step over (an interruption, an ICMP report, a datagram too long for the
    /// buffer on Windows).
    Skip,
    /// Nothing waiting.
    Empty,
}

/// Reads one datagram into `buf`, sorting errors as the drivers do.
fn receive(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    match socket.recv_from(buf) {
        Ok((len, from)) => Ok(Received::Datagram(len, from)),
        Err(e) => match recv_error_action(&e) {
            RecvErrorAction::Empty => Ok(Received::Empty),
            RecvErrorAction::Retry | RecvErrorAction::Ignore => Ok(Received::Skip),
            RecvErrorAction::Fail => Err(e),
        },
    }
}

/// Datagrams one [`LanResponder::update`] or [`LanSeeker::update`] reads at most, so a flood
/// cannot hold a frame loop.
pub const MAX_DATAGRAMS_PER_UPDATE: usize = 64;
/// Distinct answers one discovery keeps at most.
pub const MAX_PEERS: usize = 256;
/// Answers from one host (one IP, however many ports it names) one discovery keeps at most:
/// a host on the LAN answering with port after port does not fill the result and keep
/// everyone else's answers out. (A bound on one address, not on a hostile host: one that
/// answers from sixteen addresses, or spoofs them, still fills it; `verify` decides whom to
/// trust.)
pub const MAX_PEERS_PER_HOST: usize = 16;

/// A peer that answered: where its Shoal endpoint listens and what it advertised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanPeer {
    /// The answer's source IP with the Shoal port it advertised: what to `connect` to.
    pub addr: SocketAddr,
    /// The responder's application data, at most [`MAX_APP_DATA`] bytes.
    pub data: Bytes,
}

/// A discovery target a request could not be sent to (e.g. no IPv6 on this machine).
#[derive(Debug)]
pub struct TargetError {
    /// The address the request was meant for.
    pub target: SocketAddr,
    /// Why it was not sent.
    pub error: io::Error,
}

/// Where and what a seeker asks.
#[derive(Clone, Debug)]
pub struct LanConfig {
    /// Port responders listen on.
    pub port: u16,
    /// Only responders with this id answer (the application's `Config::protocol_id`).
    pub protocol_id: u32,
    /// Send to the IPv4 broadcast address `255.255.255.255`.
    pub broadcast_v4: bool,
    /// Send to the IPv6 group [`MULTICAST_V6`].
    pub multicast_v6: bool,
    /// Interface index for the IPv6 group (its scope id); 0 lets the OS choose.
    pub multicast_v6_interface: u32,
    /// More addresses to ask, each with its own port (e.g. a known host, or loopback).
    pub extra_targets: Vec<SocketAddr>,
    /// Application bytes for responders, at most [`MAX_QUERY_LEN`].
    pub query: Vec<u8>,
}

impl Default for LanConfig {
    /// Broadcast and multicast on [`DEFAULT_PORT`], for `Config::default()`'s protocol id.
    fn default() -> Self {
        LanConfig {
            port: DEFAULT_PORT,
            protocol_id: Config::default().protocol_id,
            broadcast_v4: true,
            multicast_v6: true,
            multicast_v6_interface: 0,
            extra_targets: Vec::new(),
            query: Vec::new(),
        }
    }
}

impl LanConfig {
    /// Asks `127.0.0.1:port` only (no broadcast, no multicast): for tests and one machine.
    pub fn loopback(port: u16) -> Self {
        LanConfig {
            port,
            broadcast_v4: false,
            multicast_v6: false,
            extra_targets: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))],
            ..LanConfig::default()
        }
    }

    /// Every address this configuration sends a request to.
    pub fn targets(&self) -> Vec<SocketAddr> {
        let mut targets = Vec::new();
        if self.broadcast_v4 {
            targets.push(SocketAddr::from((Ipv4Addr::BROADCAST, self.port)));
        }
        if self.multicast_v6 {
            let group = SocketAddrV6::new(MULTICAST_V6, self.port, 0, self.multicast_v6_interface);
            targets.push(SocketAddr::V6(group));
        }
        targets.extend(self.extra_targets.iter().copied());
        targets
    }
}

/// One discovery's outcome.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Verified peers, one per address, in the order they answered.
    pub peers: Vec<LanPeer>,
    /// Targets the request could not be sent to, once each with its latest error; a socket
    /// that could not be opened is listed as `0.0.0.0:0` (IPv4) or `[::]:0` (IPv6).
    pub failures: Vec<TargetError>,
    /// Well-formed answers the verify hook refused.
    pub refused: usize,
    /// Datagrams ignored: malformed, another protocol id, or a nonce not ours.
    pub ignored: usize,
    /// Well-formed answers not kept for want of room: the result held [`MAX_PEERS`], or
    /// [`MAX_PEERS_PER_HOST`] from the same host.
    pub dropped: usize,
}

/// A seeker: sends one request to every target and collects the answers to it.
///
/// [`discover`] runs it to a timeout; a frame loop can instead call [`LanSeeker::send`]
/// once and [`LanSeeker::update`] every frame.
#[derive(Debug)]
pub struct LanSeeker {
    config: LanConfig,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    nonce: u64,
    result: Discovery,
}

impl LanSeeker {
    /// Opens the seeker's sockets (an IPv4 one with broadcast allowed, and an IPv6 one if the
    /// machine has IPv6) on ephemeral ports, with a fresh nonce from the OS random source.
    /// Fails only if neither socket opens, or the query is too long.
    pub fn new(config: LanConfig) -> io::Result<Self> {
        if config.query.len() > MAX_QUERY_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                DiscoveryError::TooLong,
            ));
        }
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).map_err(io::Error::other)?;
        let mut result = Discovery::default();
        let v4 = open_seeker_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let v6 = open_seeker_socket(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)));
        let (v4, v6) = match (v4, v6) {
            (Err(e), Err(_)) => return Err(e),
            (v4, v6) => (
                keep_error(v4, &mut result, Ipv4Addr::UNSPECIFIED.into()),
                keep_error(v6, &mut result, Ipv6Addr::UNSPECIFIED.into()),
            ),
        };
        Ok(LanSeeker {
            config,
            v4,
            v6,
            nonce: u64::from_be_bytes(nonce),
            result,
        })
    }

    /// The nonce answers must echo.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// The IPv4 socket's address, if it opened (answers arrive there).
    pub fn local_addr_v4(&self) -> Option<SocketAddr> {
        self.v4.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Sends the request to every target; returns how many it reached. A target that fails is
    /// recorded in [`Discovery::failures`]; it is an error only if every target failed.
    pub fn send(&mut self) -> io::Result<usize> {
        let mut buf = [0u8; REQUEST_LEN];
        let request = Request {
            protocol_id: self.config.protocol_id,
            nonce: self.nonce,
            query: &self.config.query,
        };
        let len = request
            .encode(&mut buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let targets = self.config.targets();
        let mut sent = 0;
        for target in &targets {
            let socket = match target {
                SocketAddr::V4(_) => self.v4.as_ref(),
                SocketAddr::V6(_) => self.v6.as_ref(),
            };
            let outcome = match socket {
                Some(socket) => socket.send_to(&buf[..len], target).map(|_| ()),
                None => Err(io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    "no socket of this address family",
                )),
            };
            // (One entry per target, the latest error: a loop that sends again and again must
            // not grow the list.)
            let failures = &mut self.result.failures;
            match (outcome, failures.iter_mut().find(|f| f.target == *target)) {
                (Ok(()), _) => sent += 1,
                (Err(error), Some(known)) => known.error = error,
                (Err(error), None) => failures.push(TargetError {
                    target: *target,
                    error,
                }),
            }
        }
        if sent == 0 && !targets.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "the discovery request reached no target",
            ));
        }
        Ok(sent)
    }

    /// Reads the answers waiting (never blocks) and keeps those `verify` accepts.
    pub fn update(&mut self, verify: &mut impl FnMut(&LanPeer) -> bool) -> io::Result<()> {
        let mut buf = [0u8; MAX_RESPONSE_LEN + 1];
        for socket in [self.v4.as_ref(), self.v6.as_ref()].into_iter().flatten() {
            for _ in 0..MAX_DATAGRAMS_PER_UPDATE {
                let (len, from) = match receive(socket, &mut buf)? {
                    Received::Datagram(len, from) => (len, from),
                    Received::Skip => continue,
                    Received::Empty => break,
                };
                let bytes = buf.get(..len).unwrap_or_default();
                accept_answer(
                    &mut self.result,
                    &self.config,
                    self.nonce,
                    from,
                    bytes,
                    verify,
                );
            }
        }
        Ok(())
    }

    /// What was collected so far.
    pub fn result(&self) -> &Discovery {
        &self.result
    }

    /// Sends the request, collects answers for `timeout`, and returns them.
    pub fn run(
        mut self,
        timeout: Duration,
        mut verify: impl FnMut(&LanPeer) -> bool,
    ) -> io::Result<Discovery> {
        // (A timeout past what the clock can hold, `Duration::MAX`, waits for ever.)
        let deadline = Instant::now().checked_add(timeout);
        self.send()?;
        loop {
            self.update(&mut verify)?;
            let now = Instant::now();
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(now));
            if left.is_zero() {
                break;
            }
            // Sleeping between reads keeps one socket per family and no poller.
            std::thread::sleep(left.min(Duration::from_millis(2)));
        }
        Ok(self.result)
    }
}

/// Sends a discovery request, waits `timeout` for answers, and returns the peers `verify`
/// accepts. Targets that cannot be reached are skipped (see [`LanSeeker`] for the list); the
/// error is for a request that reached none.
pub fn discover(
    config: LanConfig,
    timeout: Duration,
    verify: impl FnMut(&LanPeer) -> bool,
) -> io::Result<Vec<LanPeer>> {
    Ok(LanSeeker::new(config)?.run(timeout, verify)?.peers)
}

fn open_seeker_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    if addr.is_ipv4() {
        socket.set_broadcast(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn keep_error(
    socket: io::Result<UdpSocket>,
    result: &mut Discovery,
    ip: IpAddr,
) -> Option<UdpSocket> {
    socket
        .map_err(|error| {
            result.failures.push(TargetError {
                target: SocketAddr::new(ip, 0),
                error,
            })
        })
        .ok()
}

fn accept_answer(
    result: &mut Discovery,
    config: &LanConfig,
    nonce: u64,
    from: SocketAddr,
    bytes: &[u8],
    verify: &mut impl FnMut(&LanPeer) -> bool,
) {
    let response = match Response::decode(bytes) {
        Ok(r) if r.protocol_id == config.protocol_id && r.nonce == nonce => r,
        _ => {
            result.ignored += 1;
            return;
        }
    };
    // (An IPv6 link-local source keeps its scope: without it the address cannot be used.)
    let addr = match from {
        SocketAddr::V6(v6) => {
            SocketAddr::V6(SocketAddrV6::new(*v6.ip(), response.port, 0, v6.scope_id()))
        }
        SocketAddr::V4(_) => SocketAddr::new(from.ip(), response.port),
    };
    let peer = LanPeer {
        addr,
        data: Bytes::copy_from_slice(response.data),
    };
    // One answer per advertised address: a responder reached twice (broadcast and multicast)
    // answers twice.
    if result.peers.iter().any(|p| p.addr == peer.addr) {
        return;
    }
    let same_host = result.peers.iter().filter(|p| p.addr.ip() == addr.ip());
    if result.peers.len() >= MAX_PEERS || same_host.count() >= MAX_PEERS_PER_HOST {
        result.dropped += 1;
        return;
    }
    if verify(&peer) {
        result.peers.push(peer);
    } else {
        result.refused += 1;
    }
}

/// How often a responder answers one source IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Answers per source IP in one window.
    pub per_source: u32,
    /// The window.
    pub window: Duration,
    /// Source IPs remembered at once; a request from another one while all are in their
    /// window is not answered (so the table is bounded and the total rate too). The price
    /// of that bound: requests from this many addresses a window (spoofed ones too, some
    /// 51 KB/s at the defaults) keep a responder from answering anyone else while they
    /// last. Discovery is a convenience, never the only way to reach a server.
    pub max_sources: usize,
}

impl Default for RateLimit {
    /// 4 answers per IP a second, 256 IPs: at most ~545 KB/s of answers however many ask.
    fn default() -> Self {
        RateLimit {
            per_source: 4,
            window: Duration::from_secs(1),
            max_sources: 256,
        }
    }
}

/// Per-source answer counter with fixed windows.
#[derive(Debug)]
struct RateLimiter {
    limit: RateLimit,
    sources: HashMap<IpAddr, (Instant, u32)>,
}

impl RateLimiter {
    fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            sources: HashMap::new(),
        }
    }

    /// Whether `ip` may get an answer at `now`; counts it if so.
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let window = self.limit.window;
        let expired = |start: Instant| now.saturating_duration_since(start) >= window;
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.limit.max_sources {
            self.sources.retain(|_, (start, _)| !expired(*start));
            if self.sources.len() >= self.limit.max_sources {
                return false;
            }
        }
        let (start, count) = self.sources.entry(ip).or_insert((now, 0));
        if expired(*start) {
            *start = now;
            *count = 0;
        }
        if *count >= self.limit.per_source {
            return false;
        }
        *count += 1;
        true
    }
}

/// A responder's settings.
#[derive(Clone, Debug)]
pub struct ResponderConfig {
    /// Discovery port to listen on; 0 picks an ephemeral one (tests).
    pub port: u16,
    /// IPv4 address to bind; `0.0.0.0` (the default) also receives broadcasts.
    pub bind_v4: Ipv4Addr,
    /// Also listen on IPv6 (`[::]:port`, joined to [`MULTICAST_V6`]). A machine without IPv6
    /// is not an error: see [`LanResponder::ipv6_error`].
    pub ipv6: bool,
    /// Interface index to join the IPv6 group on; 0 lets the OS choose.
    pub multicast_v6_interface: u32,
    /// Answer only requests with this protocol id.
    pub protocol_id: u32,
    /// The port the application's Shoal endpoint listens on (advertised; never 0).
    pub shoal_port: u16,
    /// Application data for every answer, at most [`MAX_APP_DATA`] bytes.
    pub data: Vec<u8>,
    /// Per-source answer limit.
    pub rate_limit: RateLimit,
    /// Hop limit (IPv4 TTL, IPv6 unicast hops) of the answers. 1, the default, keeps them on
    /// the local link: a responder that requests reach from elsewhere (a public address, a
    /// forwarded port) is then no reflector beyond it. Raise it for seekers on other subnets
    /// (`LanConfig::extra_targets`).
    pub answer_hops: u32,
}

impl Default for ResponderConfig {
    /// Any address on [`DEFAULT_PORT`], IPv6 too, for `Config::default()`'s protocol id;
    /// set `shoal_port`.
    fn default() -> Self {
        ResponderConfig {
            port: DEFAULT_PORT,
            bind_v4: Ipv4Addr::UNSPECIFIED,
            ipv6: true,
            multicast_v6_interface: 0,
            protocol_id: Config::default().protocol_id,
            shoal_port: 0,
            data: Vec::new(),
            rate_limit: RateLimit::default(),
            answer_hops: 1,
        }
    }
}

impl ResponderConfig {
    /// Listens on `127.0.0.1:port` only, without IPv6: for tests and one machine.
    pub fn loopback(port: u16) -> Self {
        ResponderConfig {
            port,
            bind_v4: Ipv4Addr::LOCALHOST,
            ipv6: false,
            ..ResponderConfig::default()
        }
    }
}

/// What a responder did with the datagrams it received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponderStats {
    /// Requests answered.
    pub answered: u64,
    /// Datagrams that were not a well-formed request.
    pub malformed: u64,
    /// Requests for another protocol id.
    pub wrong_protocol: u64,
    /// Requests not answered because their source asked too often.
    pub rate_limited: u64,
    /// Answers the socket refused to send.
    pub send_errors: u64,
}

/// Answers discovery requests on the discovery port.
///
/// Drive it with [`LanResponder::update`] from a frame loop, or hand it to a background
/// thread with [`LanResponder::spawn`].
#[derive(Debug)]
pub struct LanResponder {
    v4: UdpSocket,
    v6: Option<UdpSocket>,
    ipv6_error: Option<io::Error>,
    config: ResponderConfig,
    limiter: RateLimiter,
    stats: ResponderStats,
    /// New data from a [`ResponderHandle`], taken just before answering so an answer sent
    /// after `set_data` returned always carries it.
    pending_data: Option<Arc<Mutex<Option<Vec<u8>>>>>,
}

impl LanResponder {
    /// Binds the discovery port (shared with other responders on this host: `SO_REUSEADDR`),
    /// and on IPv6 too if configured and available.
    pub fn bind(config: ResponderConfig) -> io::Result<Self> {
        check_answer(&config.data, config.shoal_port)?;
        check_rate_limit(&config.rate_limit)?;
        let v4 = bind_shared(SocketAddr::from((config.bind_v4, config.port)))?;
        v4.set_ttl(config.answer_hops)?;
        let port = v4.local_addr()?.port();
        let (v6, ipv6_error) = if config.ipv6 {
            let bound = bind_v6(port, config.multicast_v6_interface).and_then(|socket| {
                socket2::SockRef::from(&socket).set_unicast_hops_v6(config.answer_hops)?;
                Ok(socket)
            });
            match bound {
                Ok(socket) => (Some(socket), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        Ok(LanResponder {
            v4,
            v6,
            ipv6_error,
            limiter: RateLimiter::new(config.rate_limit),
            config,
            stats: ResponderStats::default(),
            pending_data: None,
        })
    }

    /// The IPv4 socket's address (its port is the discovery port).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.v4.local_addr()
    }

    /// Why IPv6 is not listened on, if it was asked for and failed.
    pub fn ipv6_error(&self) -> Option<&io::Error> {
        self.ipv6_error.as_ref()
    }

    /// Replaces the advertised data (e.g. a new player count).
    pub fn set_data(&mut self, data: Vec<u8>) -> io::Result<()> {
        check_answer(&data, self.config.shoal_port)?;
        self.config.data = data;
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> ResponderStats {
        self.stats
    }

    /// Answers the requests waiting, at most [`MAX_DATAGRAMS_PER_UPDATE`] a socket; never
    /// blocks. Returns how many were answered.
    pub fn update(&mut self) -> io::Result<usize> {
        let before = self.stats.answered;
        // One byte more than a request, so a longer datagram is seen as one.
        let mut buf = [0u8; REQUEST_LEN + 1];
        let mut out = [0u8; MAX_RESPONSE_LEN];
        for socket in [Some(&self.v4), self.v6.as_ref()].into_iter().flatten() {
            for _ in 0..MAX_DATAGRAMS_PER_UPDATE {
                let (len, from) = match receive(socket, &mut buf)? {
                    Received::Datagram(len, from) => (len, from),
                    Received::Skip => continue,
                    Received::Empty => break,
                };
                let request = match Request::decode(buf.get(..len).unwrap_or_default()) {
                    Ok(r) => r,
                    Err(_) => {
                        self.stats.malformed += 1;
                        continue;
                    }
                };
                if request.protocol_id != self.config.protocol_id {
                    self.stats.wrong_protocol += 1;
                    continue;
                }
                if !self.limiter.allow(from.ip(), Instant::now()) {
                    self.stats.rate_limited += 1;
                    continue;
                }
                take_pending_data(&self.pending_data, &mut self.config.data);
                let response = Response {
                    protocol_id: self.config.protocol_id,
                    nonce: request.nonce,
                    port: self.config.shoal_port,
                    data: &self.config.data,
                };
                // Checked at bind and set_data: data within MAX_APP_DATA, port non-zero.
                let Ok(n) = response.encode(&mut out) else {
                    continue;
                };
                match socket.send_to(&out[..n], from) {
                    Ok(_) => self.stats.answered += 1,
                    Err(_) => self.stats.send_errors += 1,
                }
            }
        }
        Ok(usize::try_from(self.stats.answered - before).unwrap_or(usize::MAX))
    }

    /// Leaves the background thread: keeps the last data set and stops looking for more.
    fn detach(&mut self) {
        take_pending_data(&self.pending_data, &mut self.config.data);
        self.pending_data = None;
    }

    /// Runs the responder on a background thread until [`ResponderHandle::stop`].
    pub fn spawn(mut self) -> io::Result<ResponderHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(self.stats));
        let pending_data = Arc::new(Mutex::new(None));
        self.pending_data = Some(Arc::clone(&pending_data));
        let thread = {
            let stop = Arc::clone(&stop);
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("shoal-lan-responder".into())
                .spawn(move || {
                    let mut responder = self;
                    while !stop.load(Ordering::Relaxed) {
                        let result = responder.update();
                        *stats.lock().unwrap_or_else(PoisonError::into_inner) = responder.stats;
                        match result {
                            Ok(0) => std::thread::sleep(RESPONDER_IDLE_SLEEP),
                            Ok(_) => {}
                            Err(e) => {
                                responder.detach();
                                return (responder, Err(e));
                            }
                        }
                    }
                    responder.detach();
                    (responder, Ok(()))
                })?
        };
        Ok(ResponderHandle {
            stop,
            stats,
            pending_data,
            thread: Some(thread),
        })
    }
}

/// How long the background responder sleeps when nothing came in: the latency it adds.
const RESPONDER_IDLE_SLEEP: Duration = Duration::from_millis(2);

/// A responder running on a background thread.
#[derive(Debug)]
pub struct ResponderHandle {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ResponderStats>>,
    pending_data: Arc<Mutex<Option<Vec<u8>>>>,
    /// `None` once stopped.
    thread: Option<JoinHandle<(LanResponder, io::Result<()>)>>,
}

impl Drop for ResponderHandle {
    /// A handle dropped without `stop` stops its thread too (else it would go on answering,
    /// with data no one can change, on a port no one can take back).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl ResponderHandle {
    /// Replaces the advertised data: every answer sent after this returns carries it.
    /// Refused if longer than [`MAX_APP_DATA`].
    pub fn set_data(&self, data: Vec<u8>) -> io::Result<()> {
        if data.len() > MAX_APP_DATA {
            return Err(too_long());
        }
        *self
            .pending_data
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(data);
        Ok(())
    }

    /// The responder's counters as of its last update.
    pub fn stats(&self) -> ResponderStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the thread; returns the responder (with its final [`LanResponder::stats`] and
    /// data), or the socket error that stopped it earlier.
    pub fn stop(mut self) -> io::Result<LanResponder> {
        self.stop.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return Err(io::Error::other("the responder was stopped already"));
        };
        match thread.join() {
            Ok((responder, Ok(()))) => Ok(responder),
            Ok((_, Err(e))) => Err(e),
            Err(_) => Err(io::Error::other("the responder thread panicked")),
        }
    }
}

/// Takes data a [`ResponderHandle`] set (checked there against [`MAX_APP_DATA`]).
fn take_pending_data(slot: &Option<Arc<Mutex<Option<Vec<u8>>>>>, data: &mut Vec<u8>) {
    if let Some(slot) = slot {
        if let Some(new) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
            *data = new;
        }
    }
}

fn too_long() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, DiscoveryError::TooLong)
}

fn check_answer(data: &[u8], shoal_port: u16) -> io::Result<()> {
    if data.len() > MAX_APP_DATA {
        return Err(too_long());
    }
    if shoal_port == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "ResponderConfig::shoal_port must be set",
        ));
    }
    Ok(())
}

/// A rate limit that limits: a zero window would answer everyone without limit, and no
/// answers per source or no sources remembered would answer no one.
fn check_rate_limit(limit: &RateLimit) -> io::Result<()> {
    let field = if limit.window.is_zero() {
        "window"
    } else if limit.per_source == 0 {
        "per_source"
    } else if limit.max_sources == 0 {
        "max_sources"
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("ResponderConfig::rate_limit.{field} must not be 0"),
    ))
}

/// A non-blocking UDP socket bound with `SO_REUSEADDR` (and `SO_REUSEPORT` where the BSDs
/// need it to share a port), so several responders on one host all receive broadcasts.
fn bind_shared(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    ))]
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn bind_v6(port: u16, interface: u32) -> io::Result<UdpSocket> {
    let socket = bind_shared(SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::UNSPECIFIED,
        port,
        0,
        0,
    )))?;
    socket.join_multicast_v6(&MULTICAST_V6, interface)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_counts_per_source_and_window() {
        let limit = RateLimit {
            per_source: 2,
            window: Duration::from_secs(1),
            max_sources: 2,
        };
        let mut limiter = RateLimiter::new(limit);
        let t0 = Instant::now();
        let a: IpAddr = Ipv4Addr::new(127, 0, 0, 1).into();
        let b: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
        let c: IpAddr = Ipv4Addr::new(127, 0, 0, 3).into();
        assert!(limiter.allow(a, t0));
        assert!(limiter.allow(a, t0));
        assert!(!limiter.allow(a, t0), "third answer in one window");
        assert!(limiter.allow(b, t0), "another source has its own count");
        assert!(!limiter.allow(c, t0), "table full, all in their window");
        let t1 = t0 + Duration::from_secs(1);
        assert!(limiter.allow(a, t1), "a new window");
        assert!(limiter.allow(c, t1), "expired sources make room");
        assert!(limiter.sources.len() <= 2);
    }

    /// A rate limit of zero answers everyone or no one: refused when the responder binds.
    #[test]
    fn a_rate_limit_that_does_not_limit_is_refused() {
        for (limit, field) in [
            (
                RateLimit {
                    window: Duration::ZERO,
                    ..RateLimit::default()
                },
                "window",
            ),
            (
                RateLimit {
                    per_source: 0,
                    ..RateLimit::default()
                },
                "per_source",
            ),
            (
                RateLimit {
                    max_sources: 0,
                    ..RateLimit::default()
                },
                "max_sources",
            ),
        ] {
            let config = ResponderConfig {
                shoal_port: 4242,
                rate_limit: limit,
                ..ResponderConfig::loopback(0)
            };
            let Err(e) = LanResponder::bind(config) else {
                panic!("a rate limit without {field} was taken");
            };
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn a_target_that_fails_every_send_is_listed_once() {
        let mut config = LanConfig::loopback(47_999);
        config
            .extra_targets
            .push(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let mut seeker = LanSeeker::new(config).expect("opens");
        for _ in 0..10 {
            seeker.send().expect("one target is reached");
        }
        let port_zero = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let failed: Vec<_> = seeker.result.failures.iter().map(|f| f.target).collect();
        assert_eq!(failed, vec![port_zero]);
    }

    #[test]
    fn answers_stay_on_the_local_link_unless_configured_otherwise() {
        let config = ResponderConfig {
            shoal_port: 4242,
            ..ResponderConfig::loopback(0)
        };
        let responder = LanResponder::bind(config.clone()).expect("binds");
        assert_eq!(responder.v4.ttl().expect("ttl"), 1);
        let wider = LanResponder::bind(ResponderConfig {
            answer_hops: 8,
            ..config
        })
        .expect("binds");
        assert_eq!(wider.v4.ttl().expect("ttl"), 8);
    }

    #[test]
    fn an_ipv6_link_local_answer_keeps_its_scope_id() {
        let config = LanConfig::default();
        let nonce = 0x1234;
        let answer = Response {
            protocol_id: config.protocol_id,
            nonce,
            port: 5000,
            data: b"lobby",
        };
        let mut bytes = vec![0u8; answer.encoded_len()];
        let len = answer.encode(&mut bytes).expect("encodes");
        let from = SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse().expect("ip"),
            47777,
            0,
            3,
        ));
        let mut result = Discovery::default();
        accept_answer(
            &mut result,
            &config,
            nonce,
            from,
            &bytes[..len],
            &mut |_| true,
        );
        let SocketAddr::V6(addr) = result.peers[0].addr else {
            panic!("an IPv6 peer");
        };
        assert_eq!((addr.port(), addr.scope_id()), (5000, 3));
    }

    /// One host answering with port after port keeps at most `MAX_PEERS_PER_HOST` places,
    /// and the answers past it are counted: another host's answer still gets in.
    #[test]
    fn one_host_cannot_fill_the_result_of_a_discovery() {
        let config = LanConfig::default();
        let nonce = 0x1234;
        let mut result = Discovery::default();
        let answer = |result: &mut Discovery, ip: [u8; 4], port: u16| {
            let response = Response {
                protocol_id: config.protocol_id,
                nonce,
                port,
                data: b"lobby",
            };
            let mut bytes = vec![0u8; response.encoded_len()];
            let len = response.encode(&mut bytes).expect("encodes");
            let from = SocketAddr::from((ip, 47777));
            accept_answer(result, &config, nonce, from, &bytes[..len], &mut |_| true);
        };
        for port in 1..=MAX_PEERS as u16 {
            answer(&mut result, [192, 168, 1, 66], port);
        }
        answer(&mut result, [192, 168, 1, 7], 4000);
        assert_eq!(result.peers.len(), MAX_PEERS_PER_HOST + 1);
        assert_eq!(result.dropped, MAX_PEERS - MAX_PEERS_PER_HOST);
        assert_eq!(
            result.peers.last().map(|p| p.addr),
            Some(SocketAddr::from(([192, 168, 1, 7], 4000)))
        );
    }
}
