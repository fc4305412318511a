//! Kernel TCP signals beside the packets: BTF tracepoints for SYN-ACK retransmits, resets
//! sent and received, and listeners opened and closed. BTF tracepoints get the kernel's own
//! arguments (the socket, the packet, the new state) with no record filled in for them, which
//! on `inet_sock_set_state` — several times per connection — is most of a classic
//! tracepoint's cost. The structs behind those pointers are read at offsets userspace took
//! from the kernel's BTF. Tracepoints fire for every network namespace, so each program first
//! checks that the socket (or, for a reset sent without one, the incoming packet's device)
//! belongs to the monitored namespace: by its inode number the first time; by the
//! `struct net` address that matched then, afterwards. Resets, which come with every aborted
//! connection, are counted in per-CPU maps: sent ones by reason, received ones by service
//! (the local listener's, or the remote server's; `LISTENING_PORTS` tells which, kept here
//! from the listener events). Retransmits and listener events are each one `TcpEvent` in a
//! ring buffer; a full buffer drops and counts, never blocks. Completed handshakes are only
//! counted, per local port (`listener_counts`).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_get_current_comm,
    },
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::BtfTracePointContext,
};
use seqwatch_common::{
    synack::{FAMILY_IPV4, FAMILY_IPV6},
    tcp_events::{
        AF_INET6, IPPROTO_TCP, LISTENING_PORTS, RESET_SERVICES, ResetService, ResetsSent,
        TCP_CLOSE, TCP_ESTABLISHED, TCP_EVENTS_RINGBUF_BYTES, TCP_LISTEN, TCP_SYN_RECV, TcpEvent,
        TcpEventCounter, TcpEventKind, TcpEventsConfig,
    },
};

use crate::{listener_counts, ringbuf};

/// The size of `TcpEvent::comm`, as the kernel's helper takes it.
const TASK_COMM_LEN: u32 = 16;

#[map]
static TCP_EVENTS_CONFIG: Array<TcpEventsConfig> = Array::with_max_entries(1, 0);

#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(TCP_EVENTS_RINGBUF_BYTES, 0);

#[map]
static TCP_EVENT_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(TcpEventCounter::COUNT, 0);

/// The monitored namespace's `struct net` address, once a socket has led to it: later
/// checks compare the address and skip reading the inode number.
#[map]
static MONITORED_NET: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static RESETS_SENT: PerCpuArray<ResetsSent> = PerCpuArray::with_max_entries(1, 0);

#[map]
static RESETS_RECEIVED: PerCpuHashMap<ResetService, u64> =
    PerCpuHashMap::with_max_entries(RESET_SERVICES, 0);

/// Listeners per local port (see `seqwatch_common::tcp_events::LISTENING_PORTS`).
#[map]
static LISTENING: Array<u32> = Array::with_max_entries(LISTENING_PORTS, 0);

/// `tcp_retransmit_synack(const struct sock *listener, const struct request_sock *req)`:
/// reported under the listener's family and the request's local address and port.
pub fn retransmit_synack(ctx: &BtfTracePointContext) {
    let (listener, request): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    let Some(config) = config() else {
        return;
    };
    if monitored(sock_netns(listener, config)) {
        let family = read::<u16>(listener, config.sock_family);
        let port = read::<u16>(request, config.request_port);
        let address = address(request, family, config.request_v4, config.request_v6);
        emit(TcpEventKind::SynAckRetransmit, port, address);
    }
}

/// `tcp_receive_reset(struct sock *sk)`: counted under the service: the local address if a
/// listener has the local port, else the remote one.
pub fn receive_reset(ctx: &BtfTracePointContext) {
    let sk: u64 = ctx.arg(0);
    let Some(config) = config() else {
        return;
    };
    if !monitored(sock_netns(sk, config)) {
        return;
    }
    let ends = &config.socket;
    let family = read::<u16>(sk, config.sock_family);
    let local = service(sk, family, ends.local_port, ends.local_v4, ends.local_v6);
    let server = if listening(local.port) {
        local
    } else {
        service(sk, family, ends.remote_port, ends.remote_v4, ends.remote_v6)
    };
    count_reset_received(&server);
}

/// One end of a socket as a service.
#[inline(always)]
fn service(sk: u64, family: u16, port: u32, v4: u32, v6: u32) -> ResetService {
    let (family, addr) = address(sk, family, v4, v6);
    ResetService {
        addr,
        port: u16::from_be(read::<u16>(sk, port)),
        family,
        _pad: 0,
    }
}

/// An address (IPv4 in the first word) and its wire family: the IPv6 form for an `AF_INET6`
/// socket, as the kernel's own tracepoint records have it.
#[inline(always)]
fn address(base: u64, family: u16, v4: u32, v6: u32) -> (u8, [u32; 4]) {
    if family == AF_INET6 {
        (FAMILY_IPV6, read::<[u32; 4]>(base, v6))
    } else {
        (FAMILY_IPV4, [read::<u32>(base, v4), 0, 0, 0])
    }
}

/// `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason)`.
pub fn send_reset(ctx: &BtfTracePointContext) {
    let (sk, skb, reason): (u64, u64, u32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let Some(config) = config() else {
        return;
    };
    // Without a socket (a segment to a closed port) the reset answers the incoming packet,
    // whose device says which namespace it arrived in.
    let netns = if sk != 0 {
        sock_netns(sk, config)
    } else {
        skb_netns(skb, config)
    };
    if !monitored(netns) {
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
}

/// What a socket state change means here.
enum Transition {
    /// A listener opened (+1) or closed (u32::MAX, minus one).
    Listener(TcpEventKind, u32),
    /// A passive open's child socket (or a simultaneous open) completed its handshake.
    Completed,
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`: runs on every
/// socket state change on the host, and leaves on the two states alone unless a listener
/// opens or closes or a handshake completes.
pub fn inet_sock_set_state(ctx: &BtfTracePointContext) {
    let (old, new): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    let transition = match (old, new) {
        (TCP_CLOSE, TCP_LISTEN) => Transition::Listener(TcpEventKind::ListenerOpened, 1),
        (TCP_LISTEN, TCP_CLOSE) => Transition::Listener(TcpEventKind::ListenerClosed, u32::MAX),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => Transition::Completed,
        _ => return,
    };
    let sk: u64 = ctx.arg(0);
    let Some(config) = config() else {
        return;
    };
    if read::<u16>(sk, config.sock_protocol) != IPPROTO_TCP || !monitored(sock_netns(sk, config)) {
        return;
    }
    let ends = &config.socket;
    let port = u16::from_be(read::<u16>(sk, ends.local_port));
    match transition {
        // Counted per local port in the kernel, not sent as an event.
        Transition::Completed => listener_counts::count_completed(port),
        Transition::Listener(kind, delta) => {
            add_listeners(port, delta);
            let family = read::<u16>(sk, config.sock_family);
            emit(
                kind,
                port,
                address(sk, family, ends.local_v4, ends.local_v6),
            );
        }
    }
}

#[inline(always)]
fn listening(port: u16) -> bool {
    LISTENING.get(u32::from(port)).is_some_and(|&n| n > 0)
}

/// Adds `delta` (1, or u32::MAX for minus one) to the port's listeners, atomically: two
/// listeners of one port (SO_REUSEPORT) may open at once on two CPUs. A close of a listener
/// userspace's seed missed leaves 0 alone.
#[inline(always)]
fn add_listeners(port: u16, delta: u32) {
    let Some(count) = LISTENING.get_ptr_mut(u32::from(port)) else {
        return;
    };
    // SAFETY: an array entry, valid for the program run; the add is one atomic instruction.
    unsafe {
        if delta == 1 || *count > 0 {
            core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
                count, delta,
            );
        }
    }
}

/// One more reset for `service` on this CPU; a new service's entry holds this CPU's first.
#[inline(always)]
fn count_reset_received(service: &ResetService) {
    if let Some(count) = RESETS_RECEIVED.get_ptr_mut(service) {
        // SAFETY: this CPU's copy of the entry, valid for the program run.
        unsafe { *count += 1 };
        return;
    }
    match RESETS_RECEIVED.insert(service, &1, BPF_NOEXIST.into()) {
        Ok(()) => {}
        // Another CPU made the entry between the lookup and the insert.
        Err(err) if err == -EEXIST => {
            if let Some(count) = RESETS_RECEIVED.get_ptr_mut(service) {
                // SAFETY: as above.
                unsafe { *count += 1 };
            }
        }
        Err(_) => count(TcpEventCounter::ResetsReceivedUnkeyed),
    }
}

const EEXIST: i32 = 17;

fn config() -> Option<&'static TcpEventsConfig> {
    TCP_EVENTS_CONFIG.get(0).filter(|c| c.netns_inum != 0)
}

/// Whether a namespace is the monitored one, and whether it could be read at all.
enum Netns {
    Monitored,
    Other,
    Unreadable,
}

/// The network namespace of a socket.
#[inline(always)]
fn sock_netns(sk: u64, config: &TcpEventsConfig) -> Netns {
    net_is_monitored(read_kernel::<u64>(sk, config.sock_net), config)
}

/// The network namespace of the device a packet arrived on.
#[inline(always)]
fn skb_netns(skb: u64, config: &TcpEventsConfig) -> Netns {
    let dev = read_kernel::<u64>(skb, config.skb_dev);
    net_is_monitored(
        dev.and_then(|dev| read_kernel::<u64>(dev, config.dev_net)),
        config,
    )
}

/// Compares a `struct net` address with the monitored one's once known; until then, reads
/// its inode number and remembers the address that matches. (The daemon lives in the
/// monitored namespace, so that `struct net` is not freed, nor its address reused, while
/// these programs run.)
#[inline(always)]
fn net_is_monitored(net: Option<u64>, config: &TcpEventsConfig) -> Netns {
    let (Some(net), Some(known)) = (net, MONITORED_NET.get_ptr_mut(0)) else {
        return Netns::Unreadable;
    };
    // SAFETY: an array entry, valid for the program run; every CPU writes the same value.
    let known = unsafe { &mut *known };
    if *known != 0 {
        return if net == *known {
            Netns::Monitored
        } else {
            Netns::Other
        };
    }
    match read_kernel::<u32>(net, config.net_inum) {
        Some(inum) if inum == config.netns_inum => {
            *known = net;
            Netns::Monitored
        }
        Some(_) => Netns::Other,
        None => Netns::Unreadable,
    }
}

#[inline(always)]
fn read_kernel<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// A field of a socket the namespace check has already read through: zero in the unlikely
/// case it cannot be read (the helper zeroes what it fails to read).
#[inline(always)]
fn read<T: Default>(base: u64, offset: u32) -> T {
    read_kernel(base, offset).unwrap_or_default()
}

/// Whether an event's namespace is the monitored one; an unreadable one is counted.
#[inline(always)]
fn monitored(netns: Netns) -> bool {
    match netns {
        Netns::Monitored => true,
        Netns::Other => false,
        Netns::Unreadable => {
            count(TcpEventCounter::NetnsUnreadable);
            false
        }
    }
}

/// Sends one event: the local side's address and port; the time and the current process
/// for listener events only (the daemon uses them to judge a listener's close).
#[inline(always)]
fn emit(kind: TcpEventKind, port: u16, (family, local): (u8, [u32; 4])) {
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
