//! The receive budget: every byte a connection holds on receive — partial chunked messages,
//! whole messages waiting for an earlier one on an ordered channel, partial responses — is
//! charged to the connection and to the endpoint here, and released here.

use crate::config::Config;

/// The endpoint's side of the budget: bytes held by all connections, and how many
/// connections hold any.
#[derive(Debug, Default)]
pub(crate) struct ReceiveBudget {
    total: usize,
    holders: usize,
}

impl ReceiveBudget {
    /// Bytes held across the endpoint.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// How many more bytes a connection holding `held` may hold: within its own budget,
    /// within the endpoint's, and within its fair share of the endpoint's: while `n` other
    /// connections hold memory, no connection grows past the endpoint budget divided by
    /// `n + 2`. So a few peers that hold all they may at once (and never finish) leave room
    /// for a newcomer's messages; a connection alone may use the whole budget. What a
    /// connection holds is never taken back, so peers that fill their shares one after
    /// another can still use it all (see `docs/architecture.md`).
    pub(crate) fn room(&self, held: usize, config: &Config) -> usize {
        let others = self.holders - usize::from(held > 0);
        let share = if others == 0 {
            config.endpoint_reassembly_budget
        } else {
            config.endpoint_reassembly_budget / (others + 2)
        };
        let own = config.reassembly_budget.min(share).saturating_sub(held);
        own.min(config.endpoint_reassembly_budget.saturating_sub(self.total))
    }

    /// Whether a connection holding `held` bytes may hold `extra` more (see [`Self::room`]).
    pub(crate) fn admits(&self, held: usize, extra: usize, config: &Config) -> bool {
        extra == 0 || extra <= self.room(held, config)
    }

    /// Charges `n` bytes to a connection holding `*held`.
    pub(crate) fn charge(&mut self, held: &mut usize, n: usize) {
        if n == 0 {
            return;
        }
        if *held == 0 {
            self.holders += 1;
        }
        *held += n;
        self.total += n;
    }

    /// Releases `n` of a connection's `*held` bytes.
    pub(crate) fn release(&mut self, held: &mut usize, n: usize) {
        let n = n.min(*held);
        if n == 0 {
            return;
        }
        *held -= n;
        self.total -= n;
        if *held == 0 {
            self.holders -= 1;
        }
    }

    /// Moves a connection's holdings from `before` to `after` bytes.
    pub(crate) fn settle(&mut self, held: &mut usize, before: usize, after: usize) {
        if after >= before {
            self.charge(held, after - before);
        } else {
            self.release(held, before - after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_greedy_holders_leave_a_newcomer_its_share() {
        let config = Config {
            reassembly_budget: 4 << 20,
            endpoint_reassembly_budget: 32 << 20,
            ..Config::default()
        };
        let mut b = ReceiveBudget::default();
        let mut greedy = [0usize; 5];
        for held in &mut greedy {
            // Each takes 1 MiB at a time for as long as it is admitted.
            while b.admits(*held, 1 << 20, &config) {
                b.charge(held, 1 << 20);
            }
        }
        let newcomer = 0;
        assert!(
            b.admits(newcomer, 1 << 20, &config),
            "greedy holders took {} of {}: {greedy:?}",
            b.total(),
            config.endpoint_reassembly_budget
        );
    }

    #[test]
    fn with_the_defaults_fifteen_peers_that_never_finish_leave_a_newcomer_room() {
        // What `Config::endpoint_reassembly_budget` documents: peers arriving one after
        // another, each reserving the largest message as often as it is admitted.
        let config = Config::default();
        let largest =
            config.max_message_size.div_ceil(config.chunk_payload()) * config.chunk_payload();
        let mut b = ReceiveBudget::default();
        for _ in 0..15 {
            let mut held = 0;
            while b.admits(held, largest, &config) {
                b.charge(&mut held, largest);
            }
            assert!(held > 0);
        }
        assert!(
            b.admits(0, largest, &config),
            "{} of {} held",
            b.total(),
            config.endpoint_reassembly_budget
        );
    }
}
