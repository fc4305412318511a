//! Kernel TCP signals beside the packets: BTF tracepoints for SYN-ACK retransmits, resets
//! sent and received, and listeners opened and closed. BTF tracepoints get the kernel's own
//! arguments (the socket, the packet, the new state) with no record filled in for them, which
//! on `inet_sock_set_state` — several times per connection — is most of a classic
//! tracepoint's cost. The structs behind those pointers are read with plain loads at offsets
//! userspace took from the kernel's BTF and wrote into this object's read-only data before
//! loading it: the verifier sees them as constants, checks each load against the kernel's
//! type at that offset, and lets it read 0 instead of faulting — a few instructions where a
//! `bpf_probe_read_kernel` call would cost tens of nanoseconds. Tracepoints fire for every
//! network namespace, so each program first checks that the socket (or, for a reset sent
//! without one, the incoming packet's device) belongs to the monitored namespace: by its
//! inode number the first time; by the `struct net` address that matched then, afterwards.
//! With `--netns all`, an event of another namespace is kept if userspace follows it
//! (`FOLLOWED_NETNS`, by inode number: read for those events only, so the monitored
//! namespace's cost is unchanged) and carries that namespace's inode number; its listeners
//! per port are kept in `NETNS_LISTENING`, its resets sent in `NETNS_RESETS_SENT`.
//! Resets, which come with every aborted connection, are counted in per-CPU maps: sent ones
//! by reason, received ones by service (the local listener's, or the remote server's;
//! `LISTENING_PORTS` tells which, kept here from the listener events). Retransmits and
//! listener events are each one `TcpEvent` in a ring buffer; a full buffer drops and counts,
//! never blocks. Completed handshakes are only counted, per local port (`listener_counts`).
//! A listener's reset for an ACK's flags (no handshake of its own, or a wrong ack) hands the
//! segment, read from its headers, to the handshake tracker, which counts the blind guesses
//! it could not judge itself (`handshake::rejected_ack`).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_get_current_comm,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::BtfTracePointContext,
};
use seqwatch_common::{
    synack::{FAMILY_IPV4, FAMILY_IPV6},
    tcp_events::{
        AF_INET6, FOLLOWED_NETNS_MAX, IPPROTO_TCP, LISTENING_PORTS, NETNS_LISTENING_PORTS,
        NetnsPort, OWN_NETNS, RESET_SERVICES, ResetService, ResetsSent, TCP_CLOSE, TCP_ESTABLISHED,
        TCP_EVENTS_RINGBUF_BYTES, TCP_LISTEN, TCP_SYN_RECV, TcpEvent, TcpEventCounter,
        TcpEventKind, TcpEventsConfig,
    },
};

use crate::{
    handshake, listener_counts,
    packet::{FlowKey, TCP_ACK, TCP_RST, TCP_SYN},
    ringbuf,
};

/// The size of `TcpEvent::comm`, as the kernel's helper takes it.
const TASK_COMM_LEN: u32 = 16;

/// Set by userspace at load time (`EbpfLoader::set_global`); all zeros (silent) otherwise.
#[unsafe(no_mangle)]
static TCP_EVENTS_CONFIG: TcpEventsConfig = TcpEventsConfig::SILENT;

/// The monitored namespace's `struct net` address, once a socket has led to it.
#[map]
static MONITORED_NET: Array<u64> = Array::with_max_entries(1, 0);

/// A field of `TCP_EVENTS_CONFIG`, read as the program runs: a plain read would be folded
/// into the zeros the object was built with.
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: a static's field, read in place.
        unsafe { core::ptr::read_volatile(&raw const TCP_EVENTS_CONFIG.$($field).+) }
    };
}

#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(TCP_EVENTS_RINGBUF_BYTES, 0);

#[map]
static TCP_EVENT_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(TcpEventCounter::COUNT, 0);

#[map]
static RESETS_SENT: PerCpuArray<ResetsSent> = PerCpuArray::with_max_entries(1, 0);

#[map]
static RESETS_RECEIVED: PerCpuHashMap<ResetService, u64> =
    PerCpuHashMap::with_max_entries(RESET_SERVICES, 0);

/// Listeners per local port (see `seqwatch_common::tcp_events::LISTENING_PORTS`).
#[map]
static LISTENING: Array<u32> = Array::with_max_entries(LISTENING_PORTS, 0);

/// The other namespaces followed, by inode number (`--netns all`; userspace keeps it).
#[map]
static FOLLOWED_NETNS: HashMap<u32, u32> = HashMap::with_max_entries(FOLLOWED_NETNS_MAX, 0);

/// Listeners per local port of the followed namespaces.
#[map]
static NETNS_LISTENING: HashMap<NetnsPort, u32> =
    HashMap::with_max_entries(NETNS_LISTENING_PORTS, 0);

/// Resets each followed namespace sent, by inode number.
#[map]
static NETNS_RESETS_SENT: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(FOLLOWED_NETNS_MAX, 0);

/// `tcp_retransmit_synack(const struct sock *listener, const struct request_sock *req)`:
/// reported under the listener's family and the request's local address and port.
pub fn retransmit_synack(ctx: &BtfTracePointContext) {
    let (listener, request): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    if let Some(netns) = monitored(sock_netns(listener)) {
        let family = load::<u16>(listener, config!(sock_family));
        let port = load::<u16>(request, config!(request_port));
        let address = address(request, family, config!(request_v4), config!(request_v6));
        emit(TcpEventKind::SynAckRetransmit, port, address, netns);
    }
}

/// `tcp_receive_reset(struct sock *sk)`: counted under the service: the local address if a
/// listener has the local port, else the remote one.
pub fn receive_reset(ctx: &BtfTracePointContext) {
    let sk: u64 = ctx.arg(0);
    let Some(netns) = monitored(sock_netns(sk)) else {
        return;
    };
    let family = load::<u16>(sk, config!(sock_family));
    let local = service(
        sk,
        family,
        load::<u16>(sk, config!(socket.local_port)),
        (config!(socket.local_v4), config!(socket.local_v6)),
        netns,
    );
    let server = if listening_in(netns, local.port) {
        local
    } else {
        service(
            sk,
            family,
            u16::from_be(load::<u16>(sk, config!(socket.remote_port))),
            (config!(socket.remote_v4), config!(socket.remote_v6)),
            netns,
        )
    };
    count_reset_received(&server);
}

/// One end of a socket (the offsets of its IPv4 and IPv6 address) as a service.
#[inline(always)]
fn service(sk: u64, family: u16, port: u16, (v4, v6): (u32, u32), netns: u32) -> ResetService {
    let (family, addr) = address(sk, family, v4, v6);
    ResetService {
        addr,
        port,
        family,
        _pad: 0,
        netns,
    }
}

/// An address (IPv4 in the first word) and its wire family: the IPv6 form for an `AF_INET6`
/// socket, as the kernel's own tracepoint records have it.
#[inline(always)]
fn address(base: u64, family: u16, v4: u32, v6: u32) -> (u8, [u32; 4]) {
    if family == AF_INET6 {
        let word = |i: u32| load::<u32>(base, v6 + 4 * i);
        (FAMILY_IPV6, [word(0), word(1), word(2), word(3)])
    } else {
        (FAMILY_IPV4, [load::<u32>(base, v4), 0, 0, 0])
    }
}

/// `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason)`.
pub fn send_reset(ctx: &BtfTracePointContext) {
    let (sk, skb, reason): (u64, u64, u32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    // Without a socket (a segment to a closed port) the reset answers the incoming packet,
    // whose device says which namespace it arrived in.
    // Both may be NULL (the verifier has the null checks come before any arithmetic).
    let netns = if sk != 0 {
        sock_netns(sk)
    } else if skb != 0 {
        skb_netns(skb)
    } else {
        Netns::Unreadable
    };
    let Some(netns) = monitored(netns) else {
        return;
    };
    if netns != OWN_NETNS {
        if !count_per_key(&NETNS_RESETS_SENT, &netns) {
            count(TcpEventCounter::NetnsResetsSentUnkeyed);
        }
        return;
    }
    let slot = ResetsSent::slot(reason);
    if let Some(counts) = RESETS_SENT.get_ptr_mut(0) {
        // SAFETY: this CPU's copy of the entry, valid for the program run.
        let counts = unsafe { &mut *counts };
        if let Some(count) = counts.by_reason.get_mut(slot) {
            *count += 1;
        }
    }
    if reason == config!(reset_reason_tcp_flags) && sk != 0 && skb != 0 {
        rejected_by_listener(sk, skb);
    }
}

/// A reset for its flags from a listener answers a segment that matched no connection nor
/// handshake of the listener's, or acked the wrong ISN: the handshake tracker counts the
/// ACK-bearing ones it could not judge as blind guesses.
#[inline(always)]
fn rejected_by_listener(sk: u64, skb: u64) {
    if load::<u8>(sk, config!(sock_state)) != TCP_LISTEN as u8 {
        return;
    }
    match incoming_segment(skb) {
        Some((key, flags)) if flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK => {
            handshake::rejected_ack(&key, flags);
        }
        Some(_) => {}
        None => handshake::unreadable_rejected_ack(),
    }
}

/// The 4-tuple (oriented as the tracker keys it: local = the listener's end) and the TCP
/// flags of the segment a reset answers, from its headers. `skb->head` is a plain pointer to
/// the verifier, so the headers are copied out with the helper.
#[inline(always)]
fn incoming_segment(skb: u64) -> Option<(FlowKey, u8)> {
    let head = load::<u64>(skb, config!(skb_head));
    let network = u64::from(load::<u16>(skb, config!(skb_network_header)));
    let transport = u64::from(load::<u16>(skb, config!(skb_transport_header)));
    // SAFETY: the helper checks the address; 40 bytes are linear in a TCP segment whichever
    // the IP version (an IPv4 header and 20 bytes of TCP header at least).
    let ip = unsafe { bpf_probe_read_kernel((head + network) as *const [u64; 5]) }.ok()?;
    // SAFETY: as above: ports, seq, ack, offset and flags.
    let tcp = unsafe { bpf_probe_read_kernel((head + transport) as *const [u32; 4]) }.ok()?;
    // Addresses as the tracker keeps them: as on the wire, IPv4 in the first four bytes.
    let (family, remote, local) = match ip[0] as u8 >> 4 {
        4 => (FAMILY_IPV4, [ip[1] >> 32, 0], [ip[2] & 0xffff_ffff, 0]),
        6 => (FAMILY_IPV6, [ip[1], ip[2]], [ip[3], ip[4]]),
        _ => return None,
    };
    let [ports, _, _, offset_and_flags] = tcp;
    let key = FlowKey {
        local,
        remote,
        local_port: u16::from_be((ports >> 16) as u16),
        remote_port: u16::from_be(ports as u16),
        family: u32::from(family),
    };
    Some((key, (offset_and_flags >> 8) as u8))
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`: runs on every
/// socket state change on the host, and leaves on the two states alone unless a listener
/// opens or closes or a handshake completes.
pub fn inet_sock_set_state(ctx: &BtfTracePointContext) {
    let (old, new): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    match (old, new) {
        (TCP_SYN_RECV, TCP_ESTABLISHED) => handshake_completed(ctx.arg(0)),
        (TCP_CLOSE, TCP_LISTEN) => listener_changed(ctx.arg(0), TcpEventKind::ListenerOpened, 1),
        (TCP_LISTEN, TCP_CLOSE) => {
            listener_changed(ctx.arg(0), TcpEventKind::ListenerClosed, u32::MAX);
        }
        _ => {}
    }
}

/// A passive open's child socket (or a simultaneous open) completed its handshake: counted
/// per local port in the kernel, not sent as an event; the monitored namespace's only.
#[inline(always)]
fn handshake_completed(sk: u64) {
    if monitored_tcp(sk) == Some(OWN_NETNS) {
        listener_counts::count_completed(load::<u16>(sk, config!(socket.local_port)));
    }
}

/// A listener opened (`delta` 1) or closed (u32::MAX, minus one).
#[inline(always)]
fn listener_changed(sk: u64, kind: TcpEventKind, delta: u32) {
    if let Some(netns) = monitored_tcp(sk) {
        let port = load::<u16>(sk, config!(socket.local_port));
        if netns == OWN_NETNS {
            add_listeners(port, delta);
        } else {
            add_netns_listeners(netns, port, delta);
        }
        let family = load::<u16>(sk, config!(sock_family));
        let address = address(
            sk,
            family,
            config!(socket.local_v4),
            config!(socket.local_v6),
        );
        emit(kind, port, address, netns);
    }
}

/// The namespace of a TCP socket kept (`inet_sock_set_state` also fires for SCTP's).
#[inline(always)]
fn monitored_tcp(sk: u64) -> Option<u32> {
    if load::<u16>(sk, config!(sock_protocol)) != IPPROTO_TCP {
        return None;
    }
    monitored(sock_netns(sk))
}

/// Whether a listener of the monitored namespace has the local port (host order).
#[inline(always)]
pub fn listening(port: u16) -> bool {
    LISTENING.get(u32::from(port)).is_some_and(|&n| n > 0)
}

/// Whether a listener of the namespace `netns` (a kept one) has the local port.
#[inline(always)]
fn listening_in(netns: u32, port: u16) -> bool {
    if netns == OWN_NETNS {
        return listening(port);
    }
    // SAFETY: a hash map value, read at once.
    unsafe { NETNS_LISTENING.get(&netns_port(netns, port)) }.is_some_and(|&n| n > 0)
}

#[inline(always)]
fn netns_port(netns: u32, port: u16) -> NetnsPort {
    NetnsPort {
        netns,
        port,
        _pad: 0,
    }
}

/// [`add_listeners`] for a followed namespace's port; a port the map has no room for is
/// counted.
#[inline(always)]
fn add_netns_listeners(netns: u32, port: u16, delta: u32) {
    let key = netns_port(netns, port);
    if let Some(count) = NETNS_LISTENING.get_ptr_mut(&key) {
        add_atomically(count, delta);
        return;
    }
    if delta != 1 {
        return; // a close of a listener userspace's seed missed
    }
    match NETNS_LISTENING.insert(&key, &1, BPF_NOEXIST.into()) {
        Ok(()) => {}
        // Another CPU made the entry between the lookup and the insert.
        Err(err) if err == -EEXIST => {
            if let Some(count) = NETNS_LISTENING.get_ptr_mut(&key) {
                add_atomically(count, delta);
            }
        }
        Err(_) => count(TcpEventCounter::NetnsPortsUnkept),
    }
}

/// Adds `delta` (1, or u32::MAX for minus one) to the port's listeners, atomically: two
/// listeners of one port (SO_REUSEPORT) may open at once on two CPUs. A close of a listener
/// userspace's seed missed leaves 0 alone.
#[inline(always)]
fn add_listeners(port: u16, delta: u32) {
    if let Some(count) = LISTENING.get_ptr_mut(u32::from(port)) {
        add_atomically(count, delta);
    }
}

/// Adds `delta` to a map's count, atomically, unless it would take 0 below zero.
#[inline(always)]
fn add_atomically(count: *mut u32, delta: u32) {
    // SAFETY: a map entry, valid for the program run; the add is one atomic instruction.
    unsafe {
        if delta == 1 || *count > 0 {
            core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
                count, delta,
            );
        }
    }
}

/// One more reset for `service` on this CPU.
#[inline(always)]
fn count_reset_received(service: &ResetService) {
    if !count_per_key(&RESETS_RECEIVED, service) {
        count(TcpEventCounter::ResetsReceivedUnkeyed);
    }
}

/// One more event for `key` in a per-CPU hash map of counts, on this CPU; a new key's entry
/// holds this CPU's first. False when the map has no room for a new key.
#[inline(always)]
pub fn count_per_key<K>(map: &PerCpuHashMap<K, u64>, key: &K) -> bool {
    if let Some(count) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of the entry, valid for the program run.
        unsafe { *count += 1 };
        return true;
    }
    match map.insert(key, &1, BPF_NOEXIST.into()) {
        Ok(()) => true,
        // Another CPU made the entry between the lookup and the insert.
        Err(err) if err == -EEXIST => {
            if let Some(count) = map.get_ptr_mut(key) {
                // SAFETY: as above.
                unsafe { *count += 1 };
            }
            true
        }
        Err(_) => false,
    }
}

const EEXIST: i32 = 17;

/// Whether a namespace is the monitored one or a followed one, and whether it could be read
/// at all.
enum Netns {
    Monitored,
    /// A followed namespace, by inode number.
    Followed(u32),
    Other,
    Unreadable,
}

/// The network namespace of a socket.
#[inline(always)]
fn sock_netns(sk: u64) -> Netns {
    net_is_monitored(load::<u64>(sk, config!(sock_net)))
}

/// The network namespace of the device a packet arrived on.
#[inline(always)]
fn skb_netns(skb: u64) -> Netns {
    let dev = load::<u64>(skb, config!(skb_dev));
    net_is_monitored(load::<u64>(dev, config!(dev_net)))
}

/// Compares a `struct net` address with the monitored one's once known; until then, reads
/// its inode number and remembers the address that matches. The inode number is in a part
/// of `struct net` nothing else reads per packet: a cache miss, on every event of the host,
/// that the address comparison avoids. (The daemon lives in the monitored namespace, so that
/// `struct net` is not freed, nor its address reused, while these programs run.)
#[inline(always)]
fn net_is_monitored(net: u64) -> Netns {
    let monitored = config!(netns_inum);
    if monitored == 0 {
        return Netns::Other; // not configured: silent
    }
    let (true, Some(known)) = (net != 0, MONITORED_NET.get_ptr_mut(0)) else {
        return Netns::Unreadable;
    };
    // SAFETY: an array entry, valid for the program run; every CPU writes the same value.
    let known = unsafe { &mut *known };
    if *known != 0 {
        return if net == *known {
            Netns::Monitored
        } else if config!(follow_others) != 0 {
            followed(load::<u32>(net, config!(net_inum)))
        } else {
            Netns::Other
        };
    }
    let inum = load::<u32>(net, config!(net_inum));
    if inum == monitored {
        *known = net;
        Netns::Monitored
    } else {
        followed(inum)
    }
}

/// Another namespace, by inode number: followed if userspace put it in `FOLLOWED_NETNS`.
/// The inode number, not the `struct net` address, is the key: a followed namespace is freed
/// and its address reused as userspace forgets it, while its inode number, unique while it
/// lives, names it in the events too.
#[inline(always)]
fn followed(inum: u32) -> Netns {
    // SAFETY: a hash map value, not kept.
    if config!(follow_others) != 0 && unsafe { FOLLOWED_NETNS.get(&inum) }.is_some() {
        Netns::Followed(inum)
    } else {
        Netns::Other
    }
}

/// A field of a kernel struct reached from a tracepoint's arguments: a plain load, which the
/// verifier checks against the kernel's type at that (constant) offset and turns into one
/// that reads 0 instead of faulting, on a NULL or stale pointer too.
#[inline(always)]
fn load<T>(base: u64, offset: u32) -> T {
    // SAFETY: see above: the kernel's exception table, not this code, makes it safe.
    unsafe { core::ptr::read_volatile((base + u64::from(offset)) as *const T) }
}

/// The `netns` an event is kept under ([`OWN_NETNS`] or a followed namespace's inode
/// number), `None` if it is not kept; an unreadable namespace is counted.
#[inline(always)]
fn monitored(netns: Netns) -> Option<u32> {
    match netns {
        Netns::Monitored => Some(OWN_NETNS),
        Netns::Followed(inum) => Some(inum),
        Netns::Other => None,
        Netns::Unreadable => {
            count(TcpEventCounter::NetnsUnreadable);
            None
        }
    }
}

/// Sends one event: the local side's address and port; the time and the current process
/// for listener events only (the daemon uses them to judge a listener's close).
#[inline(always)]
fn emit(kind: TcpEventKind, port: u16, (family, local): (u8, [u32; 4]), netns: u32) {
    let Some(mut entry) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
        count(TcpEventCounter::EventsDropped);
        return;
    };
    let event = entry.as_mut_ptr();
    let listener = !matches!(kind, TcpEventKind::SynAckRetransmit);
    // SAFETY: `event` points to a reserved, writable TcpEvent; every field is written in
    // place before submit. The byte arrays are written as words, volatile: LLVM would turn
    // stores to them (and zeros next to each other) into calls to a byte loop.
    unsafe {
        (*event).kind = kind as u8;
        (*event).family = family;
        (*event).local_port = port;
        (*event).netns = netns;
        (*event)._pad = 0;
        store_words(&raw mut (*event).local_addr, local);
        let comm = &raw mut (*event).comm;
        if listener {
            (*event).ts_ns = bpf_ktime_get_ns();
            (*event).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            // The helper zeroes the buffer if it fails.
            bpf_get_current_comm(comm.cast(), TASK_COMM_LEN);
        } else {
            core::ptr::write_volatile(&raw mut (*event).ts_ns, 0);
            core::ptr::write_volatile(&raw mut (*event).pid, 0);
            store_words(comm, [0; 4]);
        }
    }
    entry.submit(ringbuf::batched_wakeup::<TcpEvent>(
        &TCP_EVENTS,
        TCP_EVENTS_RINGBUF_BYTES,
    ));
}

/// Writes a 16-byte array field (4-aligned in `TcpEvent`) as four words.
#[inline(always)]
unsafe fn store_words(to: *mut [u8; 16], words: [u32; 4]) {
    let to = to.cast::<u32>();
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: the caller's field holds four aligned words.
        unsafe { to.add(i).write_volatile(word) };
    }
}

/// Adds one to a per-CPU counter. (A tracepoint program interrupted on its CPU by another one
/// can lose an increment: acceptable for these rare counters, cheaper than an atomic.)
#[inline(always)]
fn count(counter: TcpEventCounter) {
    if let Some(slot) = TCP_EVENT_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot.
        unsafe { *slot += 1 };
    }
}
