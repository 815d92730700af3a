//! What rides in frames: channels with their four delivery kinds, chunking and bounded
//! reassembly, and the budget every byte held on receive is charged to.

pub(crate) mod budget;
pub(crate) mod channel;
pub(crate) mod chunk;
