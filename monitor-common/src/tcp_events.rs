//! Kernel TCP signals beside the packets: the record the tracepoint programs send (SYN-ACK
//! retransmits, resets sent and received, listeners opened and closed), their configuration,
//! and the tracepoint record layouts they read — which userspace checks against the running
//! kernel's `format` files before attaching anything.

/// Ring buffer for [`TcpEvent`]s (about 3 600 events).
pub const TCP_EVENTS_RINGBUF_BYTES: u32 = 256 << 10;

/// What the programs need to know, written by userspace before attaching. The offsets come
/// from the kernel's BTF, so that the programs read a socket's network namespace without
/// compiled-in struct layouts. `netns_inum` 0 keeps every program silent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEventsConfig {
    /// Inode number of the monitored network namespace (`stat -L /proc/self/ns/net`).
    pub netns_inum: u32,
    /// `struct sock` → `struct net *` (`__sk_common.skc_net.net`).
    pub sock_net: u32,
    /// `struct net` → `ns.inum`.
    pub net_inum: u32,
    /// `struct sk_buff` → `struct net_device *` (`dev`).
    pub skb_dev: u32,
    /// `struct net_device` → `struct net *` (`nd_net.net`).
    pub dev_net: u32,
}

/// One kernel TCP event. Addresses are network byte order, IPv4 in the first four bytes;
/// every other integer is host byte order. "local" is this host's side of the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, the clock of the anomaly events too.
    pub ts_ns: u64,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// `crate::synack::FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// [`TcpEventKind`] as u8.
    pub kind: u8,
    pub _pad: [u8; 2],
    /// [`TcpEventKind::ResetSent`]: the kernel's `enum sk_rst_reason`; 0 otherwise.
    pub reason: u32,
    /// The current task's process id (tgid) and name: for a listener closed by a process
    /// exit, the process that exited.
    pub pid: u32,
    pub comm: [u8; 16],
}

/// What a [`TcpEvent`] reports. The numbers are the wire values.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpEventKind {
    /// `tcp:tcp_retransmit_synack`: a listener repeated its SYN-ACK (no third ACK came).
    SynAckRetransmit = 0,
    /// `tcp:tcp_send_reset`: this host sent a RST.
    ResetSent = 1,
    /// `tcp:tcp_receive_reset`: a socket of this host was reset by its peer.
    ResetReceived = 2,
    /// `sock:inet_sock_set_state` TCP_CLOSE → TCP_LISTEN.
    ListenerOpened = 3,
    /// `sock:inet_sock_set_state` TCP_LISTEN → TCP_CLOSE (closed, or its process exited).
    ListenerClosed = 4,
}

impl TcpEventKind {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(TcpEventKind::SynAckRetransmit),
            1 => Some(TcpEventKind::ResetSent),
            2 => Some(TcpEventKind::ResetReceived),
            3 => Some(TcpEventKind::ListenerOpened),
            4 => Some(TcpEventKind::ListenerClosed),
            _ => None,
        }
    }
}

/// Indices of the per-CPU counter array `TCP_EVENT_COUNTERS`; userspace sums the CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEventCounter {
    /// Events lost on a full ring buffer.
    EventsDropped = 0,
    /// Events skipped because the socket's network namespace could not be read.
    NetnsUnreadable,
}

impl TcpEventCounter {
    pub const COUNT: u32 = TcpEventCounter::NetnsUnreadable as u32 + 1;
}

/// `IPPROTO_TCP`, `AF_INET`, `AF_INET6` and the socket states the programs compare against.
pub const IPPROTO_TCP: u16 = 6;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_LISTEN: i32 = 10;

/// One field of a tracepoint record, as its `format` file states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
}

const fn field(name: &'static str, offset: usize, size: usize) -> Field {
    Field { name, offset, size }
}

/// The record layouts the programs read (Linux 6.10+, where `tcp_send_reset` has `reason`).
pub mod layout {
    use super::{Field, field};

    /// The address fields `tcp_retransmit_synack`, `tcp_receive_reset` and
    /// `inet_sock_set_state` share, at their own offsets. Ports are host byte order.
    #[derive(Clone, Copy, Debug)]
    pub struct Addresses {
        pub sport: Field,
        pub dport: Field,
        pub family: Field,
        pub saddr: Field,
        pub daddr: Field,
        pub saddr_v6: Field,
        pub daddr_v6: Field,
    }

    impl Addresses {
        const fn at(sport: usize, saddr: usize) -> Addresses {
            Addresses {
                sport: field("sport", sport, 2),
                dport: field("dport", sport + 2, 2),
                family: field("family", sport + 4, 2),
                saddr: field("saddr", saddr, 4),
                daddr: field("daddr", saddr + 4, 4),
                saddr_v6: field("saddr_v6", saddr + 8, 16),
                daddr_v6: field("daddr_v6", saddr + 24, 16),
            }
        }

        pub const fn fields(&self) -> [Field; 7] {
            [
                self.sport,
                self.dport,
                self.family,
                self.saddr,
                self.daddr,
                self.saddr_v6,
                self.daddr_v6,
            ]
        }
    }

    /// `tcp:tcp_retransmit_synack`: `skaddr` is the listener.
    pub mod retransmit_synack {
        use super::*;
        pub const SKADDR: Field = field("skaddr", 8, 8);
        pub const ADDRESSES: Addresses = Addresses::at(24, 30);
    }

    /// `tcp:tcp_receive_reset`.
    pub mod receive_reset {
        use super::*;
        pub const SKADDR: Field = field("skaddr", 8, 8);
        pub const ADDRESSES: Addresses = Addresses::at(16, 22);
    }

    /// `sock:inet_sock_set_state`.
    pub mod inet_sock_set_state {
        use super::*;
        pub const SKADDR: Field = field("skaddr", 8, 8);
        pub const OLDSTATE: Field = field("oldstate", 16, 4);
        pub const NEWSTATE: Field = field("newstate", 20, 4);
        pub const PROTOCOL: Field = field("protocol", 30, 2);
        pub const ADDRESSES: Addresses = Addresses::at(24, 32);
    }

    /// `tcp:tcp_send_reset`: `skaddr` may be NULL (no socket: the netns comes from the
    /// incoming `skbaddr`'s device). `saddr`/`daddr` are a `sockaddr_in` or `sockaddr_in6`,
    /// `saddr` this host's side.
    pub mod send_reset {
        use super::*;
        pub const SKBADDR: Field = field("skbaddr", 8, 8);
        pub const SKADDR: Field = field("skaddr", 16, 8);
        pub const REASON: Field = field("reason", 28, 4);
        pub const SADDR: Field = field("saddr", 32, 28);
        pub const DADDR: Field = field("daddr", 60, 28);
        pub const FIELDS: [Field; 5] = [SKBADDR, SKADDR, REASON, SADDR, DADDR];
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern valid, no padding.
    unsafe impl aya::Pod for super::TcpEventsConfig {}
    // SAFETY: plain old data, every bit pattern valid, no padding the kernel leaves unset.
    unsafe impl aya::Pod for super::TcpEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<TcpEvent>(), 72);
        assert_eq!(core::mem::align_of::<TcpEvent>(), 8);
        assert_eq!(core::mem::size_of::<TcpEventsConfig>(), 20);
    }

    #[test]
    fn kinds_round_trip() {
        for value in 0..=4 {
            assert_eq!(TcpEventKind::from_u8(value).map(|k| k as u8), Some(value));
        }
        assert_eq!(TcpEventKind::from_u8(5), None);
    }
}
