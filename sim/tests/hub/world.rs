//! The test world: a hub node and its members, driven by the simulator.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_proto::hub::{
    self, Hub, HubClient, HubConfig, HubEvent, PathPolicy, RoomId, RoomOptions, Target,
};
use shoal_proto::{Bytes, Config, Endpoint, Event, SecretSeed};
use shoal_sim::{Application, LinkConfig, NatId, NodeContext, NodeId, SimConfig, Simulator};

/// The hub node and its members, each a `HubClient` on its own endpoint.
pub struct World {
    pub hub_node: NodeId,
    pub hub: Hub,
    pub members: Vec<NodeId>,
    pub clients: BTreeMap<NodeId, HubClient>,
    pub log: BTreeMap<NodeId, Vec<HubEvent>>,
    /// Relayed payloads as the hub's endpoint handed them to the hub.
    pub hub_saw: Vec<Bytes>,
    /// When each member's first peer link went direct.
    pub direct_at: BTreeMap<NodeId, shoal_proto::Instant>,
}

impl Application for World {
    fn on_event(&mut self, ctx: &mut NodeContext<'_>, event: Event) {
        let now = ctx.now();
        if ctx.id() == self.hub_node {
            if let Event::Message {
                relay:
                    Some(shoal_proto::Relay {
                        target: Some(_), ..
                    }),
                payload,
                ..
            } = &event
            {
                self.hub_saw.push(payload.clone());
            }
            self.hub.handle_event(ctx.endpoint(), now, event);
            if let Some(at) = self.hub.poll_timeout() {
                ctx.set_timer(at, 0);
            }
        } else if let Some(client) = self.clients.get_mut(&ctx.id()) {
            client.handle_event(ctx.endpoint(), now, event);
            let log = self.log.entry(ctx.id()).or_default();
            while let Some(e) = client.poll_event() {
                if let HubEvent::PathChanged { direct: true, .. } = e {
                    self.direct_at.entry(ctx.id()).or_insert(now);
                }
                log.push(e);
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut NodeContext<'_>, _token: u64) {
        if ctx.id() == self.hub_node {
            let now = ctx.now();
            self.hub.handle_timeout(ctx.endpoint(), now);
            if let Some(at) = self.hub.poll_timeout() {
                ctx.set_timer(at, 0);
            }
        }
    }
}

impl World {
    /// A hub on a fresh simulator; no members yet.
    pub fn new(
        seed: u64,
        hub: HubConfig,
        hub_endpoint: Config,
        link: LinkConfig,
    ) -> (Simulator, World) {
        let mut sim = Simulator::new(SimConfig {
            seed,
            default_link: link,
            ..SimConfig::default()
        })
        .expect("link");
        let hub_node = sim.add_node(hub_endpoint).expect("hub");
        let hub = Hub::new(hub, sim.endpoint(hub_node).config()).expect("hub config");
        let w = World {
            hub_node,
            hub,
            members: Vec::new(),
            clients: BTreeMap::new(),
            log: BTreeMap::new(),
            hub_saw: Vec::new(),
            direct_at: BTreeMap::new(),
        };
        (sim, w)
    }

    /// Adds a member (behind `nat`, if given) reaching others as `policy` says, and starts
    /// its connection to the hub. Returns its index.
    pub fn add_member(
        &mut self,
        sim: &mut Simulator,
        nat: Option<NatId>,
        policy: PathPolicy,
    ) -> usize {
        // A direct-only member needs a static key (the hub vouches for it to its peers).
        let key = (policy == PathPolicy::DirectOnly)
            .then(|| shoal_proto::Keypair::from_secret([self.members.len() as u8 + 1; 32]));
        self.add_member_with_key(sim, nat, policy, key)
    }

    /// Like `add_member`, the member's endpoint proving `key` in its handshakes (to the hub,
    /// which then vouches for it, and on its peer links).
    pub fn add_member_with_key(
        &mut self,
        sim: &mut Simulator,
        nat: Option<NatId>,
        policy: PathPolicy,
        key: Option<shoal_proto::Keypair>,
    ) -> usize {
        let config = Config {
            accept_incoming: policy != PathPolicy::Messages,
            static_keypair: key,
            ..hub::endpoint_config()
        };
        let node = match nat {
            Some(nat) => sim.add_node_behind(config, nat).expect("member"),
            None => sim.add_node(config).expect("member"),
        };
        let conn = sim.connect(node, self.hub_node, &[]).expect("connect");
        let client =
            HubClient::with_paths(conn, sim.endpoint(node).config(), policy).expect("client");
        self.members.push(node);
        self.clients.insert(node, client);
        self.members.len() - 1
    }

    pub fn client(&mut self, i: usize) -> &mut HubClient {
        let node = self.members[i];
        self.clients.get_mut(&node).expect("member")
    }

    /// Runs `f` on member `i`'s client and endpoint.
    pub fn act<R>(
        &mut self,
        sim: &mut Simulator,
        i: usize,
        f: impl FnOnce(&mut HubClient, &mut Endpoint) -> R,
    ) -> R {
        let node = self.members[i];
        let client = self.clients.get_mut(&node).expect("member");
        f(client, sim.endpoint_mut(node))
    }

    pub fn user(&mut self, i: usize) -> u16 {
        self.client(i).user_id().expect("connected")
    }

    /// Member `i`'s events since the last call.
    pub fn take(&mut self, i: usize) -> Vec<HubEvent> {
        std::mem::take(self.log.entry(self.members[i]).or_default())
    }

    pub fn run(&mut self, sim: &mut Simulator, ms: u64) {
        let until = sim.now() + Duration::from_millis(ms);
        sim.run_until_with(until, self);
    }

    /// Runs until every member is connected to the hub, and forgets what happened so far.
    pub fn settle(&mut self, sim: &mut Simulator) {
        self.run(sim, 1000);
        for i in 0..self.members.len() {
            assert!(self.client(i).user_id().is_some(), "member {i} connected");
            self.take(i);
        }
    }
}

pub fn link(loss: f64) -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        loss,
        ..LinkConfig::default()
    }
}

pub fn hub_config() -> HubConfig {
    HubConfig {
        secret_seed: Some(SecretSeed::insecure_from_u64(99)),
        ..HubConfig::default()
    }
}

/// `hub_config` for a hub whose endpoint's queues are small (a full room's member list must
/// fit them, see `HubConfigError::MemberListTooLarge`): rooms of at most 32.
pub fn small_rooms_hub_config() -> HubConfig {
    HubConfig {
        max_members_per_room: 32,
        ..hub_config()
    }
}

/// A hub and `n` members connected to it, relaying message by message.
pub fn world(seed: u64, n: usize, hub: HubConfig, link: LinkConfig) -> (Simulator, World) {
    world_with(seed, n, hub, hub::endpoint_config(), link)
}

pub fn world_with(
    seed: u64,
    n: usize,
    hub: HubConfig,
    hub_endpoint: Config,
    link: LinkConfig,
) -> (Simulator, World) {
    let (mut sim, mut w) = World::new(seed, hub, hub_endpoint, link);
    for _ in 0..n {
        w.add_member(&mut sim, None, PathPolicy::Messages);
    }
    w.settle(&mut sim);
    (sim, w)
}

pub fn joined(events: &[HubEvent]) -> Option<RoomId> {
    events.iter().find_map(|e| match e {
        HubEvent::Joined { room, .. } => Some(*room),
        _ => None,
    })
}

pub fn refusal(events: &[HubEvent]) -> Option<shoal_proto::hub::Refusal> {
    events.iter().find_map(|e| match e {
        HubEvent::Refused { reason, .. } => Some(*reason),
        _ => None,
    })
}

pub fn messages(events: &[HubEvent]) -> Vec<(u16, Target, u8, Bytes)> {
    events
        .iter()
        .filter_map(|e| match e {
            HubEvent::Message {
                from,
                to,
                channel,
                payload,
            } => Some((*from, *to, *channel, payload.clone())),
            _ => None,
        })
        .collect()
}

/// Member `i` creates room `name` as `options` say; the room, once the hub has answered.
pub fn create(
    sim: &mut Simulator,
    w: &mut World,
    i: usize,
    name: &str,
    options: RoomOptions,
) -> RoomId {
    w.act(sim, i, |c, ep| c.create_room(ep, name, &options))
        .expect("create");
    w.run(sim, 200);
    joined(&w.take(i)).expect("created")
}

/// Options of a room whose joiners wait for the owner's approval.
pub fn approval_room() -> RoomOptions {
    RoomOptions {
        approval: true,
        ..RoomOptions::default()
    }
}

/// Member 0 creates `name`, members 1.. join it, one after another.
pub fn room_of_all(sim: &mut Simulator, w: &mut World, name: &str) -> RoomId {
    w.act(sim, 0, |c, ep| {
        c.create_room(ep, name, &RoomOptions::default())
    })
    .expect("create");
    w.run(sim, 300);
    let room = joined(&w.take(0)).expect("created");
    for i in 1..w.members.len() {
        w.act(sim, i, |c, ep| {
            c.join_room(ep, name, b"", format!("m{i}").as_bytes())
        })
        .expect("join");
    }
    w.run(sim, 500);
    room
}

/// A payload naming its channel and number.
pub fn numbered(channel: u8, n: u32, len: usize) -> Vec<u8> {
    let mut p = vec![channel; len.max(5)];
    p[1..5].copy_from_slice(&n.to_be_bytes());
    p
}

pub fn number(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[1], p[2], p[3], p[4]])
}
