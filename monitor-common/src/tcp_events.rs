//! Kernel TCP signals beside the packets: the record the tracepoint programs send (SYN-ACK
//! retransmits, listeners opened and closed), the reset counters they keep, and their
//! configuration: where, in this kernel's structs, they find what they read.

/// Ring buffer for [`TcpEvent`]s (about 4 600 events).
pub const TCP_EVENTS_RINGBUF_BYTES: u32 = 256 << 10;

/// What the programs need to know, set by userspace in the object's read-only data before
/// loading it. They are BTF tracepoints, called with the kernel's own pointers (the socket,
/// the request socket, the packet); these byte offsets, from the running kernel's BTF, say
/// where in those structs to read, so that no struct layout is compiled in. `netns_inum` 0
/// keeps every program silent. Events of the other namespaces in `FOLLOWED_NETNS`
/// (`--netns all`) are kept too when `follow_others` is 1.
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
    /// `struct sock` → `sk_protocol` (u16).
    pub sock_protocol: u32,
    /// `struct sock` → `__sk_common.skc_family` (u16).
    pub sock_family: u32,
    /// The two ends of a full socket, where the kernel's own tracepoint records read them.
    pub socket: SocketEnds,
    /// `struct request_sock` (a connection a listener is answering) → the local port,
    /// host byte order (`__req_common.skc_num`, u16).
    pub request_port: u32,
    /// `struct request_sock` → the local IPv4 address (`__req_common.skc_rcv_saddr`).
    pub request_v4: u32,
    /// `struct request_sock` → the local IPv6 address (`__req_common.skc_v6_rcv_saddr`).
    pub request_v6: u32,
    /// `struct sock` → `__sk_common.skc_state` (u8).
    pub sock_state: u32,
    /// `struct sk_buff` → `head` (the buffer's start), `network_header` and
    /// `transport_header` (u16 offsets from `head`).
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    /// `SK_RST_REASON_TCP_FLAGS` of the kernel's `enum sk_rst_reason` (a listener's answer to
    /// an ACK that matches nothing of its own); `u32::MAX` when the kernel has no such reason.
    pub reset_reason_tcp_flags: u32,
    /// 1: also keep the events of the namespaces userspace puts in `FOLLOWED_NETNS`.
    pub follow_others: u32,
}

impl TcpEventsConfig {
    /// The object's built-in value: no namespace, so every program stays silent.
    pub const SILENT: TcpEventsConfig = TcpEventsConfig {
        netns_inum: 0,
        sock_net: 0,
        net_inum: 0,
        skb_dev: 0,
        dev_net: 0,
        sock_protocol: 0,
        sock_family: 0,
        socket: SocketEnds {
            local_port: 0,
            remote_port: 0,
            local_v4: 0,
            remote_v4: 0,
            local_v6: 0,
            remote_v6: 0,
        },
        request_port: 0,
        request_v4: 0,
        request_v6: 0,
        sock_state: 0,
        skb_head: 0,
        skb_network_header: 0,
        skb_transport_header: 0,
        reset_reason_tcp_flags: u32::MAX,
        follow_others: 0,
    };
}

/// Offsets in `struct sock` of both ends' ports (u16) and addresses (IPv4, and IPv6 used
/// when the family is `AF_INET6`), all in its `struct sock_common`: the verifier lets a
/// program read only within the type it was handed, so `inet_sock`'s copies (`inet_sport`,
/// `inet_saddr`, which the kernel's own tracepoints read; set together with these) are out
/// of reach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketEnds {
    /// `__sk_common.skc_num`, host byte order.
    pub local_port: u32,
    /// `__sk_common.skc_dport`, network byte order.
    pub remote_port: u32,
    /// `__sk_common.skc_rcv_saddr`.
    pub local_v4: u32,
    /// `__sk_common.skc_daddr`.
    pub remote_v4: u32,
    /// `__sk_common.skc_v6_rcv_saddr`.
    pub local_v6: u32,
    /// `__sk_common.skc_v6_daddr`.
    pub remote_v6: u32,
}

/// One kernel TCP event: a SYN-ACK retransmitted, a listener opened or closed. Resets are
/// counted in the kernel instead ([`ResetsSent`], [`ResetService`]): one arrives with every
/// aborted connection. The address is network byte order, IPv4 in the first four bytes; every
/// other integer is host byte order. "local" is this host's side of the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, the clock of the anomaly events too. Listener
    /// events only (0 otherwise).
    pub ts_ns: u64,
    pub local_addr: [u8; 16],
    pub local_port: u16,
    /// `crate::synack::FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// [`TcpEventKind`] as u8.
    pub kind: u8,
    /// Listener events only (0 otherwise): the current task's process id (tgid) and name;
    /// for a listener closed by a process exit, the process that exited.
    pub pid: u32,
    /// [`OWN_NETNS`], or the inode number of the followed namespace the socket is in.
    pub netns: u32,
    pub comm: [u8; 16],
    pub _pad: u32,
}

/// The `netns` of an event or a count of the monitored (the daemon's own) namespace.
pub const OWN_NETNS: u32 = 0;

/// Other network namespaces whose events the programs keep (`--netns all`): the entries of
/// the hash map `FOLLOWED_NETNS` (key: the namespace's inode number; value: unused, 1), put
/// there and removed by userspace as it follows and forgets namespaces.
pub const FOLLOWED_NETNS_MAX: u32 = 256;

/// A local port of a followed namespace: the key of the hash map `NETNS_LISTENING` (value:
/// its listeners, u32), the other namespaces' `LISTENING_PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsPort {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Ports with listeners in the followed namespaces together (64 per namespace on average); a
/// listener opened beyond it is counted by [`TcpEventCounter::NetnsPortsUnkept`], and resets
/// to its port are counted as the namespace's outgoing ones.
pub const NETNS_LISTENING_PORTS: u32 = 16_384;

/// What a [`TcpEvent`] reports. The numbers are the wire values.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpEventKind {
    /// `tcp:tcp_retransmit_synack`: a listener repeated its SYN-ACK (no third ACK came).
    SynAckRetransmit = 0,
    /// `sock:inet_sock_set_state` TCP_CLOSE → TCP_LISTEN.
    ListenerOpened = 3,
    /// `sock:inet_sock_set_state` TCP_LISTEN → TCP_CLOSE (closed, or its process exited).
    ListenerClosed = 4,
}

impl TcpEventKind {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(TcpEventKind::SynAckRetransmit),
            3 => Some(TcpEventKind::ListenerOpened),
            4 => Some(TcpEventKind::ListenerClosed),
            _ => None,
        }
    }
}

/// Counter slots of [`ResetsSent`]: `tcp_send_reset`'s reasons below the last slot each have
/// their own; the last collects every larger one (the kernel's `enum sk_rst_reason` has about
/// 30 values).
pub const RESET_REASON_SLOTS: usize = 64;

/// Resets this namespace sent, by the kernel's reason: the one entry of the per-CPU array
/// `RESETS_SENT`, so that userspace reads every reason in one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetsSent {
    pub by_reason: [u64; RESET_REASON_SLOTS],
}

impl ResetsSent {
    /// The slot that counts `reason`.
    pub const fn slot(reason: u32) -> usize {
        if reason < RESET_REASON_SLOTS as u32 - 1 {
            reason as usize
        } else {
            RESET_REASON_SLOTS - 1
        }
    }
}

/// The service a received reset is counted under: the local listener's address and port if
/// a listener of this namespace has the socket's local port, else the remote server's. The
/// key of the per-CPU hash map `RESETS_RECEIVED` (value: resets, u64).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResetService {
    /// Network byte order, IPv4 in the first four bytes (read as 32-bit words).
    pub addr: [u32; 4],
    pub port: u16,
    /// `crate::synack::FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    pub _pad: u8,
    /// [`OWN_NETNS`], or the followed namespace's inode number.
    pub netns: u32,
}

/// Services `RESETS_RECEIVED` keeps apart; the resets of any beyond are counted by
/// [`TcpEventCounter::ResetsReceivedUnkeyed`] (and reported as service "other").
pub const RESET_SERVICES: u32 = 4096;

/// Listeners of the monitored namespace per local port: the per-port entries of the array
/// `LISTENING_PORTS` (u32 each), seeded by userspace from /proc/net/tcp{,6} and kept up to
/// date by `inet_sock_set_state`.
pub const LISTENING_PORTS: u32 = 1 << 16;

/// Indices of the per-CPU counter array `TCP_EVENT_COUNTERS`; userspace sums the CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEventCounter {
    /// Events lost on a full ring buffer.
    EventsDropped = 0,
    /// Events skipped because the socket's network namespace could not be read.
    NetnsUnreadable,
    /// Resets received for a service `RESETS_RECEIVED` had no room for.
    ResetsReceivedUnkeyed,
    /// Listeners opened in followed namespaces on a port `NETNS_LISTENING` had no room for.
    NetnsPortsUnkept,
    /// Resets sent in a followed namespace `NETNS_RESETS_SENT` had no room for.
    NetnsResetsSentUnkeyed,
}

impl TcpEventCounter {
    pub const COUNT: u32 = TcpEventCounter::NetnsResetsSentUnkeyed as u32 + 1;
}

/// `IPPROTO_TCP`, `AF_INET6` and the socket states the programs compare against.
pub const IPPROTO_TCP: u16 = 6;
pub const AF_INET6: u16 = 10;
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_LISTEN: i32 = 10;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern valid, no padding.
    unsafe impl aya::Pod for super::TcpEventsConfig {}
    // SAFETY: plain old data, every bit pattern valid, no padding the kernel leaves unset.
    unsafe impl aya::Pod for super::TcpEvent {}
    // SAFETY: plain old data, every bit pattern valid, no padding.
    unsafe impl aya::Pod for super::ResetsSent {}
    // SAFETY: plain old data, every bit pattern valid, the padding byte written as 0.
    unsafe impl aya::Pod for super::ResetService {}
    // SAFETY: plain old data, every bit pattern valid, the padding written as 0.
    unsafe impl aya::Pod for super::NetnsPort {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<TcpEvent>(), 56);
        assert_eq!(core::mem::align_of::<TcpEvent>(), 8);
        assert_eq!(core::mem::size_of::<ResetService>(), 24);
        assert_eq!(core::mem::size_of::<NetnsPort>(), 8);
        assert_eq!(core::mem::size_of::<TcpEventsConfig>(), 88);
    }

    #[test]
    fn kinds_round_trip() {
        for value in [0, 3, 4] {
            assert_eq!(TcpEventKind::from_u8(value).map(|k| k as u8), Some(value));
        }
        for value in [1, 2, 5] {
            assert_eq!(TcpEventKind::from_u8(value), None);
        }
    }

    #[test]
    fn reasons_past_the_last_slot_share_it() {
        assert_eq!(ResetsSent::slot(0), 0);
        assert_eq!(ResetsSent::slot(62), 62);
        assert_eq!(ResetsSent::slot(63), RESET_REASON_SLOTS - 1);
        assert_eq!(ResetsSent::slot(u32::MAX), RESET_REASON_SLOTS - 1);
    }
}
