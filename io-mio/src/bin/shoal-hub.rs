//! `shoal-hub`: the rendezvous and relay server. Members connect with
//! `shoal_proto::hub::endpoint_config()`, create and join rooms, and send to one member, a
//! room, or a room except themselves through it.
//!
//! ```text
//! shoal-hub                                   # on 0.0.0.0:7777, the library's limits
//! shoal-hub --bind 127.0.0.1:0 --max-rooms 64 --relay-bytes-per-sec 1048576
//! shoal-hub --help                            # every flag with its default
//! ```
//!
//! It logs (to stderr) its address (`listening on ADDR`), connects, disconnects, rooms opened
//! and closed, and every `--status-interval` one line:
//!
//! ```text
//! status rooms=2 members=5 msgs_per_s=120.0 bytes_per_s=5120 drops=0 drops_total=3
//! ```
//!
//! (`msgs_per_s` and `bytes_per_s`: copies relayed and their payload bytes per second since
//! the last line; `drops`: relayed messages and requests dropped since the last line, of
//! every cause; `drops_total`: since the start.) Ctrl-C (or SIGTERM) disconnects every member,
//! sends the close notices, logs the totals and exits 0; a second Ctrl-C exits at once.

use std::fmt;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::Parser;
use shoal_mio::hub::{HubServer, HubServerEvent};
use shoal_mio::shoal_proto::hub::{self, HubConfig, HubStats, RateLimit};
use shoal_mio::shoal_proto::Config;
use tracing::{error, info, warn};

/// A duration on the command line: `10s`, `500ms`, `2m`, or plain seconds (`1.5`).
#[derive(Clone, Copy, Debug)]
struct Span(Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
            Some(i) => s.split_at(i),
            None => (s, "s"),
        };
        let n: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (try 10s, 500ms, 2m)"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("unknown unit `{unit}` (use ms, s, m or h)")),
        };
        Duration::try_from_secs_f64(n * scale)
            .map(Span)
            .map_err(|_| format!("`{s}` is not a duration (try 10s, 500ms, 2m)"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A protocol id: decimal or `0x` hex.
fn protocol_id(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("`{s}` is not a 32-bit protocol id (decimal or 0x hex)"))
}

#[derive(Parser, Debug)]
#[command(
    name = "shoal-hub",
    about = "Shoal hub: rooms, member lists and relay by user id",
    long_about = "Shoal hub: rooms, member lists and relay by user id.\n\nMembers connect with \
                  shoal_proto::hub::endpoint_config() (4 application channels and the control \
                  channel 4). Durations take ms, s, m or h (plain numbers are seconds). \
                  Ctrl-C disconnects every member and exits."
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7777")]
    bind: SocketAddr,
    /// The application's protocol id (members must use the same; decimal or 0x hex).
    #[arg(long, value_parser = protocol_id, default_value_t = Config::default().protocol_id)]
    protocol_id: u32,
    /// Most connections at once (members and handshakes).
    #[arg(long, default_value_t = hub::endpoint_config().max_connections)]
    max_connections: usize,
    /// Most connections from one IP address (raise it for members behind one NAT).
    #[arg(long, default_value_t = hub::endpoint_config().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Key exchanges (X25519, the cost of each new connection) taken per second, on
    /// average; past it a connect request is dropped and its member sends it again.
    #[arg(long, default_value_t = hub::endpoint_config().key_exchanges.per_second)]
    key_exchange_rate: f64,
    /// Key exchanges taken at once (every member reconnecting after a restart).
    #[arg(long, default_value_t = hub::endpoint_config().key_exchanges.burst)]
    key_exchange_burst: f64,
    /// Key exchanges one network (an IPv4 /24, an IPv6 /48) may take per second, so that
    /// no one network spends them all (raise it for members behind a carrier-grade NAT).
    #[arg(long, default_value_t = hub::endpoint_config().key_exchanges_per_network.per_second)]
    network_key_exchange_rate: f64,
    /// Key exchanges one network may take at once.
    #[arg(long, default_value_t = hub::endpoint_config().key_exchanges_per_network.burst)]
    network_key_exchange_burst: f64,
    /// A member silent this long is disconnected.
    #[arg(long, default_value_t = Span(hub::endpoint_config().idle_timeout))]
    idle_timeout: Span,
    /// How often to log the status line (0 for never).
    #[arg(long, default_value_t = Span(Duration::from_secs(5)))]
    status_interval: Span,
    /// Most rooms at once (at most 8192).
    #[arg(long, default_value_t = HubConfig::default().max_rooms)]
    max_rooms: usize,
    /// Most rooms one member may be in, its own included.
    #[arg(long, default_value_t = HubConfig::default().max_rooms_per_member)]
    max_rooms_per_member: usize,
    /// Most members of one room.
    #[arg(long, default_value_t = HubConfig::default().max_members_per_room)]
    max_members_per_room: usize,
    /// Longest room name and password, in bytes.
    #[arg(long, default_value_t = HubConfig::default().max_name_len)]
    max_name_len: usize,
    /// Most bytes of metadata a member gives about itself.
    #[arg(long, default_value_t = HubConfig::default().max_metadata_len)]
    max_metadata_len: usize,
    /// Most joins waiting for one room owner's approval.
    #[arg(long, default_value_t = HubConfig::default().max_pending_joins)]
    max_pending_joins: usize,
    /// Most rooms one member may own at once.
    #[arg(long, default_value_t = HubConfig::default().max_owned_rooms)]
    max_owned_rooms: usize,
    /// Most rooms the members at one IP address (an IPv6 address by its /64) may own at once.
    #[arg(long, default_value_t = HubConfig::default().max_owned_rooms_per_ip)]
    max_owned_rooms_per_ip: usize,
    /// Most rooms one member may wait in for the owner's approval at once.
    #[arg(long, default_value_t = HubConfig::default().max_pending_asks)]
    max_pending_asks: usize,
    /// How long a join waits for the owner's approval.
    #[arg(long, default_value_t = Span(HubConfig::default().approval_timeout))]
    approval_timeout: Span,
    /// Rooms one member may create per second, on average.
    #[arg(long, default_value_t = HubConfig::default().room_creates.per_second)]
    room_create_rate: f64,
    /// Rooms one member may create at once.
    #[arg(long, default_value_t = HubConfig::default().room_creates.burst)]
    room_create_burst: f64,
    /// Copies one member may have relayed per second (a room broadcast costs one per
    /// recipient).
    #[arg(long, default_value_t = HubConfig::default().relay_messages.per_second)]
    relay_msgs_per_sec: f64,
    /// Copies one member may have relayed at once.
    #[arg(long, default_value_t = HubConfig::default().relay_messages.burst)]
    relay_msgs_burst: f64,
    /// Payload bytes one member may have relayed per second, counted per copy.
    #[arg(long, default_value_t = HubConfig::default().relay_bytes.per_second)]
    relay_bytes_per_sec: f64,
    /// Payload bytes one member may have relayed at once.
    #[arg(long, default_value_t = HubConfig::default().relay_bytes.burst)]
    relay_bytes_burst: f64,
    /// Relayed requests one member may have waiting for their responses.
    #[arg(long, default_value_t = HubConfig::default().max_relayed_requests)]
    max_relayed_requests: usize,
    /// Commands (join, leave, kick, close, approve, announce) one member may send per
    /// second, on average.
    #[arg(long, default_value_t = HubConfig::default().commands.per_second)]
    command_rate: f64,
    /// Commands one member may send at once.
    #[arg(long, default_value_t = HubConfig::default().commands.burst)]
    command_burst: f64,
    /// Joins one room takes per second, on average, whoever asks.
    #[arg(long, default_value_t = HubConfig::default().room_joins.per_second)]
    room_join_rate: f64,
    /// Joins one room takes at once (at least the room's size, for a room to form at once).
    #[arg(long, default_value_t = HubConfig::default().room_joins.burst)]
    room_join_burst: f64,
    /// Notices one member's joins may make the hub send its new room mates per second, on
    /// average (one a room mate).
    #[arg(long, default_value_t = HubConfig::default().join_notices.per_second)]
    join_notice_rate: f64,
    /// Notices one member's joins may cost at once (raised to --max-members-per-room if
    /// below).
    #[arg(long, default_value_t = HubConfig::default().join_notices.burst)]
    join_notice_burst: f64,
    /// How long a member's queue may stay full with nothing draining before it is
    /// disconnected as not reading (until then what does not fit is dropped and counted).
    #[arg(long, default_value_t = Span(HubConfig::default().stall_timeout))]
    stall_timeout: Span,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

impl Cli {
    fn endpoint_config(&self) -> Config {
        Config {
            protocol_id: self.protocol_id,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            key_exchanges: RateLimit {
                per_second: self.key_exchange_rate,
                burst: self.key_exchange_burst,
            },
            key_exchanges_per_network: RateLimit {
                per_second: self.network_key_exchange_rate,
                burst: self.network_key_exchange_burst,
            },
            idle_timeout: self.idle_timeout.0,
            ..hub::endpoint_config()
        }
    }

    fn hub_config(&self) -> HubConfig {
        HubConfig {
            max_rooms: self.max_rooms,
            max_rooms_per_member: self.max_rooms_per_member,
            max_members_per_room: self.max_members_per_room,
            max_name_len: self.max_name_len,
            max_metadata_len: self.max_metadata_len,
            max_pending_joins: self.max_pending_joins,
            max_owned_rooms: self.max_owned_rooms,
            max_owned_rooms_per_ip: self.max_owned_rooms_per_ip,
            max_pending_asks: self.max_pending_asks,
            approval_timeout: self.approval_timeout.0,
            room_creates: RateLimit {
                per_second: self.room_create_rate,
                burst: self.room_create_burst,
            },
            relay_messages: RateLimit {
                per_second: self.relay_msgs_per_sec,
                burst: self.relay_msgs_burst,
            },
            relay_bytes: RateLimit {
                per_second: self.relay_bytes_per_sec,
                burst: self.relay_bytes_burst,
            },
            max_relayed_requests: self.max_relayed_requests,
            commands: RateLimit {
                per_second: self.command_rate,
                burst: self.command_burst,
            },
            room_joins: RateLimit {
                per_second: self.room_join_rate,
                burst: self.room_join_burst,
            },
            join_notices: RateLimit {
                per_second: self.join_notice_rate,
                burst: self.join_notice_burst,
            },
            stall_timeout: self.stall_timeout.0,
            // Filled from the OS random source by `HubServer::bind`.
            secret_seed: None,
            ..HubConfig::default()
        }
    }
}

/// Relayed messages and requests dropped, of every cause.
fn drops(s: &HubStats) -> u64 {
    s.dropped_unknown_target
        + s.dropped_no_shared_room
        + s.dropped_rate_limited
        + s.dropped_queue_full
        + s.dropped_requests
}

/// The counters the status line turns into rates.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    messages: u64,
    bytes: u64,
    drops: u64,
}

impl Sample {
    fn of(s: &HubStats, at: Instant) -> Self {
        Sample {
            at,
            messages: s.relayed_messages,
            bytes: s.relayed_bytes,
            drops: drops(s),
        }
    }
}

fn status(server: &HubServer, last: &mut Sample) {
    let stats = server.hub().stats();
    let now = Sample::of(stats, Instant::now());
    let secs = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
    info!(
        rooms = stats.rooms,
        members = server.member_count(),
        msgs_per_s = format_args!("{:.1}", (now.messages - last.messages) as f64 / secs),
        bytes_per_s = format_args!("{:.0}", (now.bytes - last.bytes) as f64 / secs),
        drops = now.drops - last.drops,
        drops_total = now.drops,
        "status"
    );
    *last = now;
}

fn name(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn log_event(event: &HubServerEvent) {
    match event {
        HubServerEvent::Connected { user, remote, .. } => {
            info!(user, %remote, "member connected");
        }
        HubServerEvent::Disconnected {
            user,
            remote,
            reason,
            ..
        } => match (user, remote) {
            (Some(user), Some(remote)) => {
                info!(user, %remote, reason = ?reason, "member disconnected");
            }
            _ => info!(reason = ?reason, "handshake ended"),
        },
        HubServerEvent::RoomOpened {
            room,
            name: n,
            owner,
        } => {
            info!(room = room.0, name = %name(n), owner, "room opened");
        }
        HubServerEvent::RoomClosed { room, name: n } => {
            info!(room = room.0, name = %name(n), "room closed");
        }
        HubServerEvent::Other(event) => {
            tracing::debug!(?event, "event for the hub itself, ignored");
        }
        _ => {}
    }
}

fn run(cli: &Cli) -> std::io::Result<()> {
    let mut server = HubServer::bind(cli.bind, cli.endpoint_config(), cli.hub_config())?;
    info!("listening on {}", server.local_addr());

    let stopper = server.stopper();
    let handler = ctrlc::set_handler(move || {
        if stopper.is_stopped() {
            // A second Ctrl-C: the user does not want to wait for the goodbyes.
            std::process::exit(130);
        }
        stopper.stop();
    });
    if let Err(e) = handler {
        warn!("cannot catch Ctrl-C ({e}); it will end the hub without disconnecting members");
    }

    let interval = (!cli.status_interval.0.is_zero()).then_some(cli.status_interval.0);
    let mut last = Sample::of(server.hub().stats(), Instant::now());
    let mut next_status = interval.map(|i| Instant::now() + i);
    while !server.is_stopped() {
        let wait = next_status.map(|t| t.saturating_duration_since(Instant::now()));
        server.run_once(wait)?;
        while let Some(event) = server.poll_event() {
            log_event(&event);
        }
        if let (Some(at), Some(every)) = (next_status, interval) {
            if Instant::now() >= at {
                status(&server, &mut last);
                next_status = Some(Instant::now() + every);
            }
        }
    }

    info!("shutting down: disconnecting every member");
    let closed = server.shutdown(shoal_mio::hub::SHUTDOWN_LINGER)?;
    while let Some(event) = server.poll_event() {
        log_event(&event);
    }
    let s = server.hub().stats();
    info!(
        closed,
        rooms_created = s.rooms_created,
        relayed_messages = s.relayed_messages,
        relayed_bytes = s.relayed_bytes,
        relayed_requests = s.relayed_requests,
        relayed_responses = s.relayed_responses,
        dropped_unknown_target = s.dropped_unknown_target,
        dropped_no_shared_room = s.dropped_no_shared_room,
        dropped_rate_limited = s.dropped_rate_limited,
        dropped_queue_full = s.dropped_queue_full,
        dropped_requests = s.dropped_requests,
        bad_commands = s.bad_commands,
        refusals = s.refusals,
        kicks = s.kicks,
        too_slow = s.too_slow,
        "stopped"
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_max_level(cli.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
