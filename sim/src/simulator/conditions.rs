//! Links and the conditions that change them over time: overrides, link failures,
//! partitions, NAT rebinding.

use core::net::SocketAddr;

use shoal_proto::Instant;

use super::agenda::What;
use super::{NodeId, PartitionId, RebindError, Simulator, BASE_PORT};
use crate::link::{LinkConfig, LinkConfigError};

/// A scheduled change of network conditions.
#[derive(Clone, Debug)]
pub(super) enum Change {
    Partition {
        id: usize,
        active: bool,
    },
    LinkUp {
        from: u32,
        to: u32,
        up: bool,
    },
    Link {
        from: u32,
        to: u32,
        config: Option<LinkConfig>,
    },
    DefaultLink(LinkConfig),
    Rebind {
        node: u32,
        addr: Option<SocketAddr>,
    },
}

pub(super) struct Partition {
    pub(super) a: Vec<u64>,
    pub(super) b: Vec<u64>,
}

fn bit(set: &[u64], i: u32) -> bool {
    set.get(i as usize / 64)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

impl Partition {
    pub(super) fn separates(&self, x: u32, y: u32) -> bool {
        (bit(&self.a, x) && bit(&self.b, y)) || (bit(&self.b, x) && bit(&self.a, y))
    }
}

impl Simulator {
    // ------------------------------------------------------------------ links and conditions

    /// The link used by pairs without an override.
    pub fn default_link(&self) -> &LinkConfig {
        &self.default_link
    }

    /// Replaces the default link.
    pub fn set_default_link(&mut self, link: LinkConfig) -> Result<(), LinkConfigError> {
        link.validate()?;
        self.default_link = link;
        Ok(())
    }

    /// The link from `from` to `to` (one direction).
    pub fn link(&self, from: NodeId, to: NodeId) -> &LinkConfig {
        self.links
            .get(&(from.0, to.0))
            .unwrap_or(&self.default_link)
    }

    /// Overrides the link from `from` to `to` (one direction: asymmetric links are two calls).
    pub fn set_link(
        &mut self,
        from: NodeId,
        to: NodeId,
        link: LinkConfig,
    ) -> Result<(), LinkConfigError> {
        link.validate()?;
        self.links.insert((from.0, to.0), link);
        Ok(())
    }

    /// Overrides both directions between `a` and `b` with the same link.
    pub fn set_link_symmetric(
        &mut self,
        a: NodeId,
        b: NodeId,
        link: LinkConfig,
    ) -> Result<(), LinkConfigError> {
        self.set_link(a, b, link)?;
        self.set_link(b, a, link)
    }

    /// Removes the override from `from` to `to`; the default link applies again.
    pub fn clear_link(&mut self, from: NodeId, to: NodeId) {
        self.links.remove(&(from.0, to.0));
    }

    /// Takes the link from `from` to `to` down (everything sent on it is dropped) or up.
    pub fn set_link_up(&mut self, from: NodeId, to: NodeId, up: bool) {
        if up {
            self.links_down.remove(&(from.0, to.0));
        } else {
            self.links_down.insert((from.0, to.0));
        }
    }

    /// Whether the link from `from` to `to` is up.
    pub fn is_link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.links_down.contains(&(from.0, to.0))
    }

    /// Schedules the link from `from` to `to` to go down at `at`.
    pub fn schedule_link_down(&mut self, at: Instant, from: NodeId, to: NodeId) {
        self.schedule(
            at,
            Change::LinkUp {
                from: from.0,
                to: to.0,
                up: false,
            },
        );
    }

    /// Schedules the link from `from` to `to` to come back up at `at`.
    pub fn schedule_link_up(&mut self, at: Instant, from: NodeId, to: NodeId) {
        self.schedule(
            at,
            Change::LinkUp {
                from: from.0,
                to: to.0,
                up: true,
            },
        );
    }

    /// Schedules an override of the link from `from` to `to` (`None` removes it) at `at`.
    pub fn schedule_link(
        &mut self,
        at: Instant,
        from: NodeId,
        to: NodeId,
        link: Option<LinkConfig>,
    ) -> Result<(), LinkConfigError> {
        if let Some(l) = &link {
            l.validate()?;
        }
        self.schedule(
            at,
            Change::Link {
                from: from.0,
                to: to.0,
                config: link,
            },
        );
        Ok(())
    }

    /// Schedules a new default link at `at`.
    pub fn schedule_default_link(
        &mut self,
        at: Instant,
        link: LinkConfig,
    ) -> Result<(), LinkConfigError> {
        link.validate()?;
        self.schedule(at, Change::DefaultLink(link));
        Ok(())
    }

    /// Cuts every datagram between a node of `a` and a node of `b` (both directions) from
    /// `start` until `end`. Datagrams already in flight when it starts still arrive. Nodes in
    /// both sets are cut from the other set's nodes only.
    pub fn schedule_partition(
        &mut self,
        start: Instant,
        end: Instant,
        a: &[NodeId],
        b: &[NodeId],
    ) -> PartitionId {
        let set = |nodes: &[NodeId]| {
            let mut bits = vec![0u64; self.nodes.len().div_ceil(64)];
            for n in nodes {
                if let Some(w) = bits.get_mut(n.index() / 64) {
                    *w |= 1 << (n.0 % 64);
                }
            }
            bits
        };
        let id = self.partitions.len();
        self.partitions.push(Partition {
            a: set(a),
            b: set(b),
        });
        self.schedule(start, Change::Partition { id, active: true });
        if end > start {
            self.schedule(end, Change::Partition { id, active: false });
        }
        PartitionId(id)
    }

    /// Whether a partition is cutting `from` off from `to` now.
    pub fn is_partitioned(&self, from: NodeId, to: NodeId) -> bool {
        self.active_partitions
            .iter()
            .any(|&p| self.partitions[p].separates(from.0, to.0))
    }

    /// Moves `node` to a new address now (on its own network: a node behind a NAT gets a new
    /// private address), as a NAT rebinding does: others see its datagrams
    /// come from the new address, and datagrams sent to the old one are dropped
    /// ([`DropCause::Unroutable`](crate::DropCause::Unroutable)). `None` picks the next port
    /// on the same IP address. Returns the new address.
    pub fn rebind(
        &mut self,
        node: NodeId,
        addr: Option<SocketAddr>,
    ) -> Result<SocketAddr, RebindError> {
        let index = node.0;
        let old = self.addresses[node.index()];
        let new = match addr {
            Some(a) => a,
            None => {
                let n = &mut self.nodes[node.index()];
                n.rebinds = n.rebinds.wrapping_add(1);
                let port = BASE_PORT.wrapping_add(n.rebinds).max(1024);
                SocketAddr::new(old.ip(), port)
            }
        };
        if new == old {
            return Ok(new);
        }
        let realm = self.nodes[node.index()].nat;
        if self.owners_mut(realm).contains_key(&new) || self.nats.has_nat_at(realm, new.ip()) {
            return Err(RebindError::AddressInUse(new));
        }
        let owners = self.owners_mut(realm);
        owners.remove(&old);
        owners.insert(new, index);
        self.addresses[node.index()] = new;
        self.at_first_address[node.index()] = false;
        Ok(new)
    }

    /// Schedules a [`rebind`](Self::rebind) at `at`. If the address is taken by then, the
    /// node keeps its address.
    pub fn schedule_rebind(&mut self, at: Instant, node: NodeId, addr: Option<SocketAddr>) {
        self.schedule(at, Change::Rebind { node: node.0, addr });
    }

    pub(super) fn schedule(&mut self, at: Instant, change: Change) {
        let index = self.changes.len() as u32;
        self.changes.push(Some(change));
        self.agenda.push(at.max(self.now), What::Change(index));
    }

    pub(super) fn apply(&mut self, change: Change) {
        match change {
            Change::Partition { id, active } => {
                self.active_partitions.retain(|&p| p != id);
                if active {
                    self.active_partitions.push(id);
                }
            }
            Change::LinkUp { from, to, up } => self.set_link_up(NodeId(from), NodeId(to), up),
            Change::Link { from, to, config } => match config {
                Some(c) => {
                    self.links.insert((from, to), c);
                }
                None => {
                    self.links.remove(&(from, to));
                }
            },
            Change::DefaultLink(link) => self.default_link = link,
            Change::Rebind { node, addr } => {
                // A taken address leaves the node where it is (documented).
                let _ = self.rebind(NodeId(node), addr);
            }
        }
    }
}
