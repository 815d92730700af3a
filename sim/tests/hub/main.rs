//! The hub in the simulator: one hub node, members as `HubClient`s on their own endpoints.

mod attacks;
mod paths;
mod rooms;
mod world;
