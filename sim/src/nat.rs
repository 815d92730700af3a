//! NAT boxes between nodes, in RFC 4787's terms: how a NAT maps an inside endpoint to an
//! outside port (endpoint-independent, or per destination), and which outside senders it lets
//! back in (anyone, the addresses or the address-and-port pairs the inside has sent to).
//!
//! Every NAT has an *inside* network of its own, with private addresses that may repeat from
//! one NAT to the next (two homes both use `192.168.0.1`). A datagram climbs from its sender's
//! network through each NAT's outbound translation until it reaches the network where its
//! destination lives, then descends through inbound translations to the receiving node. A NAT
//! decides when the datagram is sent (it has no latency of its own); links keep applying
//! between the real sender and receiver.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;

use shoal_proto::Instant;

use crate::link::DropCause;
use crate::rng::splitmix64;
use crate::simulator::FastMap;
use crate::{AddNodeError, NodeId, Simulator};

/// Deepest nesting of NATs (a carrier NAT holding home NATs is two).
pub const MAX_NAT_DEPTH: usize = 4;
/// Lowest external port a NAT hands out (below are the well-known ports).
const FIRST_PORT: u16 = 1024;
/// External ports a NAT can hand out.
const PORT_COUNT: u32 = 65_536 - FIRST_PORT as u32;
/// Hosts of an inside network: a /16 without its first and last address.
const MAX_HOSTS: u32 = 65_534;

/// Names one NAT of a [`Simulator`]; NATs are numbered from 0 in the order
/// they were added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatId(pub u32);

impl NatId {
    /// The NAT's number as an index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nat#{}", self.0)
    }
}

/// How a NAT maps and filters (RFC 4787 vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering: once an inside endpoint has sent anything,
    /// anyone may reach it at its mapping.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering: only addresses the inside
    /// endpoint has sent to (any port of theirs) get in.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering: only the exact
    /// address and port the inside endpoint has sent to get in.
    PortRestricted,
    /// Endpoint-dependent mapping: a new external port for every destination address and
    /// port, which lets in only that destination.
    Symmetric,
}

impl NatKind {
    /// Every kind, from the most to the least permissive.
    pub const ALL: [NatKind; 4] = [
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];

    /// Whether an inside endpoint keeps one external port for every destination.
    pub fn endpoint_independent_mapping(self) -> bool {
        self != NatKind::Symmetric
    }

    /// A short snake_case name, for tables.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::FullCone => "full_cone",
            NatKind::AddressRestricted => "address_restricted",
            NatKind::PortRestricted => "port_restricted",
            NatKind::Symmetric => "symmetric",
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of one NAT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// Mapping and filtering behaviour.
    pub kind: NatKind,
    /// A mapping (and what its filter lets in) unused by outbound traffic for longer than
    /// this is forgotten; inbound traffic does not refresh it. Default 30 s.
    pub mapping_timeout: Duration,
    /// Whether an inside node sending to the NAT's public mapping of another inside node
    /// reaches it (with its own source translated to its public mapping). Default off.
    pub hairpinning: bool,
    /// The NAT's outside address; `None` picks a free one (`198.18.x.y` on the public
    /// network, the next host of the parent NAT's inside network when nested).
    pub public_ip: Option<Ipv4Addr>,
    /// First address of the inside network (a /16): hosts get the next addresses in the
    /// order they are added. Default `192.168.0.0` ([`NatConfig::carrier`]: `100.64.0.0`).
    pub inside_network: Ipv4Addr,
    /// Most mappings at once (default 60,000; at most the 64,512 ports above 1023 are ever
    /// used). When full, datagrams that need a new mapping are dropped
    /// ([`DropCause::NatTableFull`]).
    pub max_mappings: usize,
    /// Most remote addresses the address- and port-restricted filters remember, across all
    /// mappings (default 60,000). When full, datagrams to a new remote are dropped
    /// ([`DropCause::NatTableFull`]).
    pub max_filter_entries: usize,
}

impl NatConfig {
    /// A home NAT of `kind`: inside network `192.168.0.0/16`, 30 s mappings, no hairpinning.
    pub fn new(kind: NatKind) -> Self {
        NatConfig {
            kind,
            mapping_timeout: Duration::from_secs(30),
            hairpinning: false,
            public_ip: None,
            inside_network: Ipv4Addr::new(192, 168, 0, 0),
            max_mappings: 60_000,
            max_filter_entries: 60_000,
        }
    }

    /// A carrier-grade NAT of `kind`: as [`new`](Self::new) with the shared address space
    /// `100.64.0.0/16` inside (RFC 6598).
    pub fn carrier(kind: NatKind) -> Self {
        NatConfig {
            inside_network: Ipv4Addr::new(100, 64, 0, 0),
            ..NatConfig::new(kind)
        }
    }
}

impl Default for NatConfig {
    /// A port-restricted home NAT, the most common kind.
    fn default() -> Self {
        NatConfig::new(NatKind::PortRestricted)
    }
}

/// Why a NAT could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddNatError {
    /// Another NAT or a node on the same network has that outside address (on the public
    /// network, `10.0.0.0/8` is kept for nodes).
    AddressInUse(Ipv4Addr),
    /// The NAT would sit deeper than [`MAX_NAT_DEPTH`].
    TooDeep,
    /// The parent NAT's inside network has no address left.
    NoAddressLeft,
}

impl fmt::Display for AddNatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddNatError::AddressInUse(ip) => write!(f, "address {ip} is taken on that network"),
            AddNatError::TooDeep => write!(f, "NATs nest at most {MAX_NAT_DEPTH} deep"),
            AddNatError::NoAddressLeft => f.write_str("the parent NAT's inside network is full"),
        }
    }
}

impl std::error::Error for AddNatError {}

/// Counters of one NAT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Datagrams translated on their way out.
    pub outbound: u64,
    /// Datagrams let in to an inside endpoint (hairpinned ones included).
    pub inbound: u64,
    /// Datagrams from inside to a public mapping of this NAT, turned back in.
    pub hairpinned: u64,
    /// Mappings created.
    pub mappings_created: u64,
    /// Mappings forgotten after [`NatConfig::mapping_timeout`] without outbound traffic.
    pub mappings_expired: u64,
    /// Inbound datagrams to a port with no mapping.
    pub dropped_no_mapping: u64,
    /// Inbound datagrams the filter refused.
    pub dropped_filtered: u64,
    /// Inbound datagrams to a mapping that had just expired.
    pub dropped_expired: u64,
    /// Outbound datagrams that needed a mapping or filter entry while the table was full.
    pub dropped_table_full: u64,
    /// Datagrams from inside to a public mapping, with hairpinning off.
    pub dropped_no_hairpin: u64,
}

/// One live mapping, as [`Simulator::nat_mappings`](crate::Simulator::nat_mappings) shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatMapping {
    /// The inside endpoint.
    pub internal: SocketAddr,
    /// The outside address it is translated to.
    pub external: SocketAddr,
    /// The one destination of a [`NatKind::Symmetric`] mapping (`None` for the others).
    pub remote: Option<SocketAddr>,
    /// The last outbound datagram through it.
    pub last_used: Instant,
}

struct Mapping {
    internal: SocketAddr,
    remote: Option<SocketAddr>,
    last_used: Instant,
    /// What the restricted filters let in, with when the inside last sent there: the remote
    /// address with port 0 (address-restricted) or the exact remote (port-restricted).
    permits: FastMap<SocketAddr, Instant>,
}

/// One NAT's state.
pub(crate) struct Nat {
    pub(crate) config: NatConfig,
    /// The NAT whose inside network holds this NAT's outside address.
    pub(crate) parent: Option<u32>,
    depth: usize,
    pub(crate) ip: Ipv4Addr,
    next_host: u32,
    /// Nodes on the inside network, by address.
    pub(crate) inside_nodes: FastMap<SocketAddr, u32>,
    /// Nested NATs on the inside network, by outside address.
    inside_nats: FastMap<Ipv4Addr, u32>,
    by_key: FastMap<(SocketAddr, Option<SocketAddr>), u16>,
    by_port: FastMap<u16, Mapping>,
    next_port: u16,
    permits: usize,
    /// Nothing can have expired before this: a full table is not rescanned sooner.
    next_purge: Instant,
    pub(crate) stats: NatStats,
}

impl Nat {
    fn expired(&self, now: Instant, last_used: Instant) -> bool {
        now.saturating_duration_since(last_used) > self.config.mapping_timeout
    }

    /// The next free address of the inside network.
    pub(crate) fn allocate_host(&mut self) -> Option<Ipv4Addr> {
        if self.next_host > MAX_HOSTS {
            return None;
        }
        let base = u32::from(self.config.inside_network) & 0xFFFF_0000;
        let ip = Ipv4Addr::from(base | self.next_host);
        self.next_host += 1;
        Some(ip)
    }

    fn forget(&mut self, port: u16) {
        if let Some(m) = self.by_port.remove(&port) {
            self.by_key.remove(&(m.internal, m.remote));
            self.permits -= m.permits.len();
        }
    }

    /// Forgets expired mappings and filter entries, at most once per possible expiry.
    fn purge(&mut self, now: Instant) {
        if now < self.next_purge {
            return;
        }
        let timeout = self.config.mapping_timeout;
        let mut gone = Vec::new();
        let mut oldest: Option<Instant> = None;
        let mut removed_permits = 0;
        for (&port, m) in &mut self.by_port {
            if now.saturating_duration_since(m.last_used) > timeout {
                gone.push(port);
                continue;
            }
            let before = m.permits.len();
            m.permits
                .retain(|_, &mut t| now.saturating_duration_since(t) <= timeout);
            removed_permits += before - m.permits.len();
            for t in core::iter::once(m.last_used).chain(m.permits.values().copied()) {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        self.permits -= removed_permits;
        gone.sort_unstable();
        for port in gone {
            self.forget(port);
            self.stats.mappings_expired += 1;
        }
        self.next_purge = oldest.map_or(now, |t| t + timeout + Duration::from_micros(1));
    }

    fn create(
        &mut self,
        now: Instant,
        key: (SocketAddr, Option<SocketAddr>),
    ) -> Result<u16, DropCause> {
        if self.by_port.len() >= self.config.max_mappings {
            self.purge(now);
            if self.by_port.len() >= self.config.max_mappings {
                return Err(DropCause::NatTableFull);
            }
        }
        // Ports are handed out in turn from a start fixed by the NAT's number and the seed.
        let mut port = self.next_port;
        for _ in 0..PORT_COUNT {
            let candidate = port;
            port = if port == u16::MAX {
                FIRST_PORT
            } else {
                port + 1
            };
            if !self.by_port.contains_key(&candidate) {
                self.next_port = port;
                self.by_key.insert(key, candidate);
                self.by_port.insert(
                    candidate,
                    Mapping {
                        internal: key.0,
                        remote: key.1,
                        last_used: now,
                        permits: FastMap::default(),
                    },
                );
                self.stats.mappings_created += 1;
                return Ok(candidate);
            }
        }
        Err(DropCause::NatTableFull)
    }

    /// Translates a datagram from `internal` to `remote` on its way out: finds or creates the
    /// mapping, opens the filter to `remote`, and refreshes both.
    fn outbound(
        &mut self,
        now: Instant,
        internal: SocketAddr,
        remote: SocketAddr,
    ) -> Result<SocketAddr, DropCause> {
        let kind = self.config.kind;
        let key = (
            internal,
            (!kind.endpoint_independent_mapping()).then_some(remote),
        );
        let port = match self.by_key.get(&key).copied() {
            Some(port) => {
                let live = self
                    .by_port
                    .get(&port)
                    .is_some_and(|m| !self.expired(now, m.last_used));
                if live {
                    port
                } else {
                    // Forgotten: the flow gets a new mapping, as on a real NAT.
                    self.forget(port);
                    self.stats.mappings_expired += 1;
                    self.create(now, key)?
                }
            }
            None => self.create(now, key)?,
        };
        let permit = match kind {
            NatKind::AddressRestricted => Some(SocketAddr::new(remote.ip(), 0)),
            NatKind::PortRestricted => Some(remote),
            NatKind::FullCone | NatKind::Symmetric => None,
        };
        if let Some(permit) = permit {
            let known = self
                .by_port
                .get(&port)
                .is_some_and(|m| m.permits.contains_key(&permit));
            if !known {
                if self.permits >= self.config.max_filter_entries {
                    self.purge(now);
                }
                if self.permits >= self.config.max_filter_entries {
                    return Err(DropCause::NatTableFull);
                }
                self.permits += 1;
            }
        }
        // The purge above may have removed this very mapping if it had gone idle.
        let Some(m) = self.by_port.get_mut(&port) else {
            return Err(DropCause::NatTableFull);
        };
        m.last_used = now;
        if let Some(permit) = permit {
            m.permits.insert(permit, now);
        }
        self.stats.outbound += 1;
        Ok(SocketAddr::new(IpAddr::V4(self.ip), port))
    }

    /// Lets a datagram from `from` to external `port` in, if a live mapping and the filter
    /// allow it; returns the inside endpoint.
    fn inbound(
        &mut self,
        now: Instant,
        from: SocketAddr,
        port: u16,
    ) -> Result<SocketAddr, DropCause> {
        let Some(m) = self.by_port.get(&port) else {
            return Err(DropCause::NatNoMapping);
        };
        if self.expired(now, m.last_used) {
            self.forget(port);
            self.stats.mappings_expired += 1;
            return Err(DropCause::NatExpired);
        }
        let fresh = |t: Option<&Instant>| {
            t.is_some_and(|&t| now.saturating_duration_since(t) <= self.config.mapping_timeout)
        };
        let allowed = match self.config.kind {
            NatKind::FullCone => true,
            NatKind::AddressRestricted => fresh(m.permits.get(&SocketAddr::new(from.ip(), 0))),
            NatKind::PortRestricted => fresh(m.permits.get(&from)),
            NatKind::Symmetric => m.remote == Some(from),
        };
        if !allowed {
            return Err(DropCause::NatFiltered);
        }
        self.stats.inbound += 1;
        Ok(m.internal)
    }

    fn count_drop(&mut self, cause: DropCause) {
        let counter = match cause {
            DropCause::NatNoMapping => &mut self.stats.dropped_no_mapping,
            DropCause::NatFiltered => &mut self.stats.dropped_filtered,
            DropCause::NatExpired => &mut self.stats.dropped_expired,
            DropCause::NatTableFull => &mut self.stats.dropped_table_full,
            DropCause::NatNoHairpin => &mut self.stats.dropped_no_hairpin,
            _ => return,
        };
        *counter += 1;
    }

    /// The live mapping `internal` uses for every destination (endpoint-independent kinds).
    pub(crate) fn mapping_of(&self, now: Instant, internal: SocketAddr) -> Option<SocketAddr> {
        let port = *self.by_key.get(&(internal, None))?;
        let m = self.by_port.get(&port)?;
        (!self.expired(now, m.last_used)).then(|| SocketAddr::new(IpAddr::V4(self.ip), port))
    }

    /// Live mappings, by external port.
    pub(crate) fn mappings(&self, now: Instant) -> Vec<NatMapping> {
        let mut all: Vec<NatMapping> = self
            .by_port
            .iter()
            .filter(|(_, m)| !self.expired(now, m.last_used))
            .map(|(&port, m)| NatMapping {
                internal: m.internal,
                external: SocketAddr::new(IpAddr::V4(self.ip), port),
                remote: m.remote,
                last_used: m.last_used,
            })
            .collect();
        all.sort_unstable_by_key(|m| m.external.port());
        all
    }
}

/// Where a datagram ends up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// At `node`, seen as coming from `from`.
    Deliver { node: u32, from: SocketAddr },
    /// Dropped, after its source was translated to `from`.
    Drop { cause: DropCause, from: SocketAddr },
}

/// Every NAT of a simulation.
#[derive(Default)]
pub(crate) struct Nats {
    pub(crate) nats: Vec<Nat>,
    /// NATs on the public network, by outside address.
    public: FastMap<Ipv4Addr, u32>,
    next_public: u32,
}

impl Nats {
    pub(crate) fn is_empty(&self) -> bool {
        self.nats.is_empty()
    }

    /// Whether `ip` is the outside address of a NAT on the network inside `realm` (`None`:
    /// the public network).
    pub(crate) fn has_nat_at(&self, realm: Option<u32>, ip: IpAddr) -> bool {
        self.nat_at(realm, ip).is_some()
    }

    fn nat_at(&self, realm: Option<u32>, ip: IpAddr) -> Option<u32> {
        let IpAddr::V4(ip) = ip else {
            return None;
        };
        match realm {
            None => self.public.get(&ip).copied(),
            Some(r) => self.nats.get(r as usize)?.inside_nats.get(&ip).copied(),
        }
    }

    /// Adds a NAT on the network inside `parent` (`None`: public). `ip_taken` says whether a
    /// node of that network already uses an address.
    pub(crate) fn add(
        &mut self,
        seed: u64,
        parent: Option<u32>,
        config: NatConfig,
        ip_taken: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<u32, AddNatError> {
        let depth = match parent {
            None => 1,
            Some(p) => self.nats[p as usize].depth + 1,
        };
        if depth > MAX_NAT_DEPTH {
            return Err(AddNatError::TooDeep);
        }
        let ip = match (config.public_ip, parent) {
            (Some(ip), _) => {
                // 10.0.0.0/8 is where public nodes are numbered.
                let nodes_range = parent.is_none() && ip.octets()[0] == 10;
                if nodes_range || ip_taken(ip) || self.has_nat_at(parent, IpAddr::V4(ip)) {
                    return Err(AddNatError::AddressInUse(ip));
                }
                ip
            }
            (None, None) => loop {
                self.next_public += 1;
                if self.next_public >= 1 << 17 {
                    return Err(AddNatError::NoAddressLeft);
                }
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + self.next_public);
                if !ip_taken(ip) && !self.public.contains_key(&ip) {
                    break ip;
                }
            },
            (None, Some(p)) => loop {
                let Some(ip) = self.nats[p as usize].allocate_host() else {
                    return Err(AddNatError::NoAddressLeft);
                };
                if !ip_taken(ip) && !self.has_nat_at(parent, IpAddr::V4(ip)) {
                    break ip;
                }
            },
        };
        let index = self.nats.len() as u32;
        let mut state = seed ^ (u64::from(index) << 32 | 0x4A7);
        let next_port = FIRST_PORT + (splitmix64(&mut state) % u64::from(PORT_COUNT)) as u16;
        match parent {
            None => {
                self.public.insert(ip, index);
            }
            Some(p) => {
                self.nats[p as usize].inside_nats.insert(ip, index);
            }
        }
        self.nats.push(Nat {
            config,
            parent,
            depth,
            ip,
            next_host: 1,
            inside_nodes: FastMap::default(),
            inside_nats: FastMap::default(),
            by_key: FastMap::default(),
            by_port: FastMap::default(),
            next_port,
            permits: 0,
            next_purge: Instant::ZERO,
            stats: NatStats::default(),
        });
        Ok(index)
    }

    /// Carries a datagram from `from` (a node on the network inside `realm`) to `to`:
    /// outbound through NATs until `to` is on the current network, then inbound down to a
    /// node. Creates and refreshes mappings on the way.
    pub(crate) fn route(
        &mut self,
        now: Instant,
        public_nodes: &FastMap<SocketAddr, u32>,
        realm: Option<u32>,
        from: SocketAddr,
        to: SocketAddr,
    ) -> Route {
        let (mut realm, mut src, mut dst) = (realm, from, to);
        // Once inbound, never outbound again: a stale mapping must not bounce a datagram out.
        let mut descending = false;
        let mut just_left: Option<u32> = None;
        // Each step climbs or descends one NAT.
        for _ in 0..2 * MAX_NAT_DEPTH + 2 {
            let nodes = match realm {
                None => public_nodes,
                Some(r) => &self.nats[r as usize].inside_nodes,
            };
            if let Some(&node) = nodes.get(&dst) {
                return Route::Deliver { node, from: src };
            }
            if let Some(n) = self.nat_at(realm, dst.ip()) {
                let nat = &mut self.nats[n as usize];
                let hairpin = just_left == Some(n);
                if hairpin && !nat.config.hairpinning {
                    nat.count_drop(DropCause::NatNoHairpin);
                    return Route::Drop {
                        cause: DropCause::NatNoHairpin,
                        from: src,
                    };
                }
                match nat.inbound(now, src, dst.port()) {
                    Ok(internal) => {
                        if hairpin {
                            nat.stats.hairpinned += 1;
                        }
                        dst = internal;
                        realm = Some(n);
                        descending = true;
                        just_left = None;
                        continue;
                    }
                    Err(cause) => {
                        nat.count_drop(cause);
                        return Route::Drop { cause, from: src };
                    }
                }
            }
            let Some(n) = realm.filter(|_| !descending) else {
                break;
            };
            let nat = &mut self.nats[n as usize];
            match nat.outbound(now, src, dst) {
                Ok(external) => {
                    src = external;
                    realm = nat.parent;
                    just_left = Some(n);
                }
                Err(cause) => {
                    nat.count_drop(cause);
                    return Route::Drop { cause, from: src };
                }
            }
        }
        Route::Drop {
            cause: DropCause::Unroutable,
            from: src,
        }
    }

    /// The address the public network sees `internal` (on the network inside `realm`) at,
    /// if every NAT above maps it independently of the destination and the mappings live.
    pub(crate) fn public_address(
        &self,
        now: Instant,
        realm: Option<u32>,
        internal: SocketAddr,
    ) -> Option<SocketAddr> {
        let (mut realm, mut addr) = (realm, internal);
        while let Some(r) = realm {
            let nat = &self.nats[r as usize];
            if !nat.config.kind.endpoint_independent_mapping() {
                return None;
            }
            addr = nat.mapping_of(now, addr)?;
            realm = nat.parent;
        }
        Some(addr)
    }
}

impl Simulator {
    // ------------------------------------------------------------------ NATs

    /// Adds a NAT on the public network. Its inside network is empty until nodes
    /// ([`add_node_behind`](Self::add_node_behind)) or NATs ([`add_nat_behind`](Self::add_nat_behind))
    /// are put behind it.
    pub fn add_nat(&mut self, config: NatConfig) -> Result<NatId, AddNatError> {
        self.insert_nat(None, config)
    }

    /// Adds a NAT whose outside is on `parent`'s inside network (a home NAT behind a carrier
    /// NAT).
    ///
    /// # Panics
    /// If `parent` is not a NAT of this simulator (as do the other methods taking a `NatId`).
    pub fn add_nat_behind(
        &mut self,
        parent: NatId,
        config: NatConfig,
    ) -> Result<NatId, AddNatError> {
        assert!(
            parent.index() < self.nats.nats.len(),
            "{parent} does not exist"
        );
        self.insert_nat(Some(parent.0), config)
    }

    fn insert_nat(&mut self, parent: Option<u32>, config: NatConfig) -> Result<NatId, AddNatError> {
        let owners = match parent {
            None => &self.owners,
            Some(p) => &self.nats.nats[p as usize].inside_nodes,
        };
        // (Scans the nodes: adding a NAT is rare.)
        let taken: Vec<IpAddr> = owners.keys().map(SocketAddr::ip).collect();
        let ip_taken = |ip: Ipv4Addr| taken.contains(&IpAddr::V4(ip));
        self.nats
            .add(self.config.seed, parent, config, ip_taken)
            .map(NatId)
    }

    /// Adds a node on `nat`'s inside network, at its next private address (port 7000). It
    /// reaches nodes of the same network directly, and everything else through the NAT; see
    /// [`add_node`](Self::add_node) for `config`.
    pub fn add_node_behind(
        &mut self,
        config: shoal_proto::Config,
        nat: NatId,
    ) -> Result<NodeId, AddNodeError> {
        assert!(nat.index() < self.nats.nats.len(), "{nat} does not exist");
        self.push_node(config, Some(nat.0))
    }

    /// Number of NATs.
    pub fn nat_count(&self) -> usize {
        self.nats.nats.len()
    }

    /// The NAT `node` sits directly behind, if any.
    pub fn nat_of(&self, node: NodeId) -> Option<NatId> {
        self.nodes[node.index()].nat.map(NatId)
    }

    /// The NAT whose inside network holds `nat`'s outside, if any.
    pub fn nat_parent(&self, nat: NatId) -> Option<NatId> {
        self.nats.nats[nat.index()].parent.map(NatId)
    }

    /// `nat`'s outside address.
    pub fn nat_address(&self, nat: NatId) -> Ipv4Addr {
        self.nats.nats[nat.index()].ip
    }

    /// `nat`'s settings.
    pub fn nat_config(&self, nat: NatId) -> &NatConfig {
        &self.nats.nats[nat.index()].config
    }

    /// `nat`'s counters. (Its drops are also counted in [`SimStats::drops`](crate::SimStats::drops).)
    pub fn nat_stats(&self, nat: NatId) -> &NatStats {
        &self.nats.nats[nat.index()].stats
    }

    /// `nat`'s live mappings now, by external port.
    pub fn nat_mappings(&self, nat: NatId) -> Vec<NatMapping> {
        self.nats.nats[nat.index()].mappings(self.now)
    }

    /// The address the public network sees `node` at: its own for a public node; for a node
    /// behind NATs, its live mapping through each, if every one maps independently of the
    /// destination (a symmetric NAT has no single public address: `None`).
    pub fn public_address(&self, node: NodeId) -> Option<SocketAddr> {
        let realm = self.nodes[node.index()].nat;
        self.nats
            .public_address(self.now, realm, self.addresses[node.index()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("valid address")
    }

    fn nats(kind: NatKind) -> (Nats, FastMap<SocketAddr, u32>) {
        let mut nats = Nats::default();
        let config = NatConfig {
            mapping_timeout: Duration::from_secs(10),
            ..NatConfig::new(kind)
        };
        let n = nats.add(1, None, config, |_| false).expect("room");
        let inside = nats.nats[n as usize].allocate_host().expect("room");
        nats.nats[n as usize]
            .inside_nodes
            .insert(SocketAddr::new(IpAddr::V4(inside), 7000), 0);
        let mut public = FastMap::default();
        public.insert(addr("10.0.0.2:7000"), 1);
        public.insert(addr("10.0.0.3:7000"), 2);
        (nats, public)
    }

    #[test]
    fn restricted_filter_follows_what_was_sent_and_forgets_it_with_the_mapping() {
        let (mut nats, public) = nats(NatKind::PortRestricted);
        let inside = addr("192.168.0.1:7000");
        let server = addr("10.0.0.2:7000");
        let Route::Deliver { from: mapped, .. } =
            nats.route(Instant::ZERO, &public, Some(0), inside, server)
        else {
            panic!("outbound must reach the public server");
        };
        let back = |nats: &mut Nats, at: u64, from: &str| {
            nats.route(Instant::from_millis(at), &public, None, addr(from), mapped)
        };
        assert_eq!(
            back(&mut nats, 1, "10.0.0.2:7000"),
            Route::Deliver {
                node: 0,
                from: server
            }
        );
        assert!(matches!(
            back(&mut nats, 2, "10.0.0.3:7000"),
            Route::Drop {
                cause: DropCause::NatFiltered,
                ..
            }
        ));
        assert!(matches!(
            back(&mut nats, 10_001, "10.0.0.2:7000"),
            Route::Drop {
                cause: DropCause::NatExpired,
                ..
            }
        ));
        assert!(matches!(
            back(&mut nats, 10_002, "10.0.0.2:7000"),
            Route::Drop {
                cause: DropCause::NatNoMapping,
                ..
            }
        ));
        let stats = nats.nats[0].stats;
        assert_eq!(
            (
                stats.dropped_filtered,
                stats.dropped_expired,
                stats.dropped_no_mapping
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn only_outbound_traffic_refreshes_a_mapping() {
        let (mut nats, public) = nats(NatKind::FullCone);
        let inside = addr("192.168.0.1:7000");
        let server = addr("10.0.0.2:7000");
        let out = |nats: &mut Nats, ms: u64| {
            nats.route(Instant::from_millis(ms), &public, Some(0), inside, server)
        };
        let Route::Deliver { from: mapped, .. } = out(&mut nats, 0) else {
            panic!("outbound must reach the public server");
        };
        let back = |nats: &mut Nats, ms: u64| {
            nats.route(Instant::from_millis(ms), &public, None, server, mapped)
        };
        // Inbound every 4 s does not keep it past 10 s of outbound silence...
        for ms in [4_000, 8_000] {
            assert!(matches!(
                back(&mut nats, ms),
                Route::Deliver { node: 0, .. }
            ));
        }
        assert!(matches!(
            back(&mut nats, 10_001),
            Route::Drop {
                cause: DropCause::NatExpired,
                ..
            }
        ));
        // ...while outbound every 8 s does (on a new mapping: the old one was forgotten).
        let Route::Deliver { from: renewed, .. } = out(&mut nats, 10_002) else {
            panic!("outbound must reach the public server");
        };
        assert_ne!(renewed, mapped);
        for ms in [18_000, 26_000] {
            assert!(matches!(out(&mut nats, ms), Route::Deliver { .. }));
        }
        let back = |nats: &mut Nats, ms: u64| {
            nats.route(Instant::from_millis(ms), &public, None, server, renewed)
        };
        assert!(matches!(
            back(&mut nats, 35_000),
            Route::Deliver { node: 0, .. }
        ));
    }

    #[test]
    fn a_full_table_refuses_new_flows_until_old_ones_expire() {
        let (mut nats, public) = nats(NatKind::Symmetric);
        nats.nats[0].config.max_mappings = 1;
        let inside = addr("192.168.0.1:7000");
        let to = |s| addr(s);
        let first = nats.route(Instant::ZERO, &public, Some(0), inside, to("10.0.0.2:7000"));
        assert!(matches!(first, Route::Deliver { node: 1, .. }));
        let second = nats.route(Instant::ZERO, &public, Some(0), inside, to("10.0.0.3:7000"));
        assert!(matches!(
            second,
            Route::Drop {
                cause: DropCause::NatTableFull,
                ..
            }
        ));
        let later = Instant::from_millis(11_000);
        let third = nats.route(later, &public, Some(0), inside, to("10.0.0.3:7000"));
        assert!(matches!(third, Route::Deliver { node: 2, .. }));
        assert_eq!(nats.nats[0].stats.dropped_table_full, 1);
        assert_eq!(nats.nats[0].stats.mappings_expired, 1);
    }
}
