//! Errors the application can get back from the endpoint's methods.

use core::fmt;

/// Why a message, request or response could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No connection has this handle (it closed, or never existed).
    UnknownConnection,
    /// The channel id is not configured.
    UnknownChannel(u8),
    /// The message is larger than `Config::max_message_size`.
    MessageTooLarge {
        /// The message's size.
        size: usize,
        /// The most that may be sent: this side's `max_message_size`, or less when the
        /// peer's reassembly budget (from the handshake) could not hold the message.
        max: usize,
    },
    /// The channel's send queue holds `max_queued_bytes` already; wait for it to drain
    /// (e.g. until `Endpoint::queue_room` grows) and try again.
    QueueFull {
        /// The channel.
        channel: u8,
        /// Bytes waiting in it (0: the message is larger than the whole queue and never
        /// fits).
        queued_bytes: usize,
    },
    /// `Config::max_pending_requests` requests await responses already. (Or, on a channel
    /// that carried 65,536 messages within twice `Config::request_timeout`, an answer to a
    /// request its next message would be mistaken for may still come: send on, or wait.)
    TooManyRequests {
        /// The configured maximum.
        max: usize,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::UnknownConnection => f.write_str("no such connection (it may have closed)"),
            SendError::UnknownChannel(c) => {
                write!(f, "channel {c} is not configured; configure it in Config::channels")
            }
            SendError::MessageTooLarge { size, max } => write!(
                f,
                "message of {size} bytes exceeds {max}, the most this side's max_message_size or the peer's reassembly budget allows; split it (or raise the one that binds)"
            ),
            SendError::QueueFull {
                channel,
                queued_bytes: 0,
            } => write!(
                f,
                "the message is larger than channel {channel}'s whole send queue: it never \
                 fits; raise its max_queued_bytes or split the message"
            ),
            SendError::QueueFull {
                channel,
                queued_bytes,
            } => write!(
                f,
                "send queue of channel {channel} is full ({queued_bytes} bytes waiting); \
                 retry when it drains or raise max_queued_bytes"
            ),
            SendError::TooManyRequests { max } => write!(
                f,
                "{max} requests already await responses; wait for some or raise max_pending_requests"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SendError {}

/// Why a connection attempt could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The endpoint has `max_connections` connections already.
    TooManyConnections,
    /// The application data exceeds `Config::max_connect_data`.
    DataTooLarge {
        /// The data's size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A connection to (or from) this address exists already.
    AlreadyConnected,
    /// A server key or connect token needs `Protection::Encrypted`, which this endpoint's
    /// config turns off.
    ProtectionRequired,
    /// The connect token and data together do not fit one handshake datagram of `mtu`
    /// bytes.
    HandshakeTooLarge {
        /// The `Connect` packet's size.
        size: usize,
        /// The configured mtu.
        mtu: usize,
    },
    /// The driver's socket cannot reach this address's family (IPv6 from an IPv4 socket,
    /// IPv4 from an IPv6 socket that is not dual-stack): nothing could ever be sent to it.
    /// Reported by the drivers.
    AddressFamily {
        /// The address asked for.
        remote: core::net::SocketAddr,
        /// The socket's own address.
        local: core::net::SocketAddr,
    },
    /// The address given as text did not resolve to any address (a typo, an unknown host,
    /// no port). Reported by the drivers.
    Unresolved,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::TooManyConnections => {
                f.write_str("too many connections; close one or raise max_connections")
            }
            ConnectError::DataTooLarge { size, max } => write!(
                f,
                "connect data of {size} bytes exceeds max_connect_data {max}"
            ),
            ConnectError::AlreadyConnected => {
                f.write_str("a connection to this address exists already")
            }
            ConnectError::ProtectionRequired => f.write_str(
                "a server key or connect token needs Protection::Encrypted; \
                 this endpoint is configured with Protection::None",
            ),
            ConnectError::HandshakeTooLarge { size, mtu } => write!(
                f,
                "the handshake with this token and data is {size} bytes, over the mtu of {mtu}; \
                 send less connect data"
            ),
            ConnectError::AddressFamily { remote, local } => write!(
                f,
                "cannot reach {remote} from a socket bound to {local}; bind to an address of \
                 {remote}'s family (or, for IPv4, to a dual-stack [::])"
            ),
            ConnectError::Unresolved => f.write_str(
                "the address did not resolve (write it as \"host:port\" or \"1.2.3.4:5000\")",
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConnectError {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn a_message_larger_than_the_whole_queue_is_told_apart_from_a_full_queue() {
        let never = SendError::QueueFull {
            channel: 2,
            queued_bytes: 0,
        };
        assert!(never.to_string().contains("never fits"), "{never}");
        let busy = SendError::QueueFull {
            channel: 2,
            queued_bytes: 5,
        };
        assert!(busy.to_string().contains("retry when it drains"), "{busy}");
    }
}
