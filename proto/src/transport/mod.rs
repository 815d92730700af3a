//! One connection's packets: numbers, acknowledgements, RTT, loss detection, congestion
//! control, pacing, and the paths a connection may use.
//!
//! Messaging above it hands frames down and learns, through [`recovery::AckOutcome`], which
//! of its reliable frames were delivered or lost; the transport never looks inside a frame.

pub(crate) mod congestion;
pub(crate) mod fec;
pub(crate) mod frame_store;
pub(crate) mod pacing;
pub(crate) mod path;
pub(crate) mod received;
pub(crate) mod recovery;
pub(crate) mod rtt;

/// Extends a serial number's low 32 bits to 64: the value nearest to `reference` whose low
/// 32 bits are `wire`. `None` if that would be negative.
pub(crate) fn extend32(wire: u32, reference: u64) -> Option<u64> {
    let delta = wire.wrapping_sub(reference as u32) as i32;
    reference.checked_add_signed(i64::from(delta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend32_survives_wraparound() {
        assert_eq!(extend32(2, 0xffff_fffe), Some(0x1_0000_0002));
        assert_eq!(extend32(0xffff_fffe, 0x1_0000_0002), Some(0xffff_fffe));
        assert_eq!(extend32(u32::MAX, 0), None);
        assert_eq!(extend32(5, 3 << 32 | 10), Some(3 << 32 | 5));
    }
}
