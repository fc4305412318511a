//! Kernel TCP signals beside the packets: classic tracepoints for SYN-ACK retransmits, resets
//! sent and received, and listeners opened and closed. Tracepoints fire for every network
//! namespace, so each program first checks that the socket (or, for a reset sent without
//! one, the incoming packet's device) belongs to the monitored namespace, by its inode
//! number, read through offsets userspace took from the kernel's BTF. Every event that passes
//! is one `TcpEvent` in its own ring buffer; a full buffer drops and counts, never blocks.
//! Completed handshakes are only counted, per local port (`listener_counts`).
//!
//! The record offsets are `seqwatch_common::tcp_events::layout`'s, which userspace checks
//! against the running kernel's `format` files before attaching a program.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf,
    },
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use seqwatch_common::{
    synack::{FAMILY_IPV4, FAMILY_IPV6},
    tcp_events::{
        AF_INET, AF_INET6, Field, IPPROTO_TCP, TCP_CLOSE, TCP_ESTABLISHED,
        TCP_EVENTS_RINGBUF_BYTES, TCP_LISTEN, TCP_SYN_RECV, TcpEvent, TcpEventCounter,
        TcpEventKind, TcpEventsConfig,
        layout::{Addresses, inet_sock_set_state, receive_reset, retransmit_synack, send_reset},
    },
};

use crate::{listener_counts, ringbuf};

#[map]
static TCP_EVENTS_CONFIG: Array<TcpEventsConfig> = Array::with_max_entries(1, 0);

#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(TCP_EVENTS_RINGBUF_BYTES, 0);

#[map]
static TCP_EVENT_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(TcpEventCounter::COUNT, 0);

/// Where an event's addresses come from.
enum Source {
    /// The shared address fields: source = local.
    Addresses(&'static Addresses),
    /// `tcp_send_reset`'s two sockaddrs: `saddr` = local.
    SockAddrs,
}

pub fn retransmit_synack(ctx: &TracePointContext) {
    let sk = field::<u64>(ctx, retransmit_synack::SKADDR);
    if monitored(sock_netns(sk)) {
        emit(
            ctx,
            TcpEventKind::SynAckRetransmit,
            Source::Addresses(&retransmit_synack::ADDRESSES),
            0,
        );
    }
}

pub fn receive_reset(ctx: &TracePointContext) {
    let sk = field::<u64>(ctx, receive_reset::SKADDR);
    if monitored(sock_netns(sk)) {
        emit(
            ctx,
            TcpEventKind::ResetReceived,
            Source::Addresses(&receive_reset::ADDRESSES),
            0,
        );
    }
}

pub fn send_reset(ctx: &TracePointContext) {
    let sk = field::<u64>(ctx, send_reset::SKADDR);
    // Without a socket (a segment to a closed port) the reset answers the incoming packet,
    // whose device says which namespace it arrived in.
    let netns = if sk != 0 {
        sock_netns(sk)
    } else {
        skb_netns(field::<u64>(ctx, send_reset::SKBADDR))
    };
    if monitored(netns) {
        let reason = field::<u32>(ctx, send_reset::REASON);
        emit(ctx, TcpEventKind::ResetSent, Source::SockAddrs, reason);
    }
}

/// Runs on every socket state change on the host: leaves after three loads unless a TCP
/// listener opens or closes, or a handshake completes.
pub fn inet_sock_set_state(ctx: &TracePointContext) {
    if field::<u16>(ctx, inet_sock_set_state::PROTOCOL) != IPPROTO_TCP {
        return;
    }
    let old = field::<i32>(ctx, inet_sock_set_state::OLDSTATE);
    let new = field::<i32>(ctx, inet_sock_set_state::NEWSTATE);
    let kind = match (old, new) {
        (TCP_CLOSE, TCP_LISTEN) => TcpEventKind::ListenerOpened,
        (TCP_LISTEN, TCP_CLOSE) => TcpEventKind::ListenerClosed,
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            handshake_completed(ctx);
            return;
        }
        _ => return,
    };
    let sk = field::<u64>(ctx, inet_sock_set_state::SKADDR);
    if monitored(sock_netns(sk)) {
        emit(
            ctx,
            kind,
            Source::Addresses(&inet_sock_set_state::ADDRESSES),
            0,
        );
    }
}

/// A passive open's child socket (or a simultaneous open) completed its handshake: counted
/// per local port in the kernel, not sent as an event.
#[inline(always)]
fn handshake_completed(ctx: &TracePointContext) {
    let sk = field::<u64>(ctx, inet_sock_set_state::SKADDR);
    if monitored(sock_netns(sk)) {
        let port = field::<u16>(ctx, inet_sock_set_state::ADDRESSES.sport);
        listener_counts::count_completed(port);
    }
}

/// Reads a naturally aligned integer field of the tracepoint record in place (the verifier
/// checks the access against the record's size).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, field: Field) -> T {
    // SAFETY: the context is the tracepoint's record, and userspace attached this program only
    // after checking that `field` lies within it at this offset and size.
    unsafe {
        ctx.as_ptr()
            .cast::<u8>()
            .add(field.offset)
            .cast::<T>()
            .read()
    }
}

/// Copies a byte-array field of the record. The verifier allows only direct loads at fixed
/// context offsets, which a byte-copy loop is not, so the helper copies.
#[inline(always)]
fn copy_field(ctx: &TracePointContext, field: Field, destination: &mut [u8]) {
    // SAFETY: as in `field`; the helper fails instead of faulting, leaving zeros.
    let src = unsafe { ctx.as_ptr().cast::<u8>().add(field.offset) };
    let _ = unsafe { bpf_probe_read_kernel_buf(src, destination) };
}

fn config() -> Option<&'static TcpEventsConfig> {
    TCP_EVENTS_CONFIG.get(0).filter(|c| c.netns_inum != 0)
}

/// The network namespace inode of a socket; `None` if it cannot be read.
#[inline(always)]
fn sock_netns(sk: u64) -> Option<u32> {
    let config = config()?;
    let net = read_kernel::<u64>(sk, config.sock_net)?;
    read_kernel::<u32>(net, config.net_inum)
}

/// The network namespace inode of the device a packet arrived on.
#[inline(always)]
fn skb_netns(skb: u64) -> Option<u32> {
    let config = config()?;
    let dev = read_kernel::<u64>(skb, config.skb_dev)?;
    let net = read_kernel::<u64>(dev, config.dev_net)?;
    read_kernel::<u32>(net, config.net_inum)
}

#[inline(always)]
fn read_kernel<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// Whether an event's namespace is the monitored one; an unreadable one is counted.
#[inline(always)]
fn monitored(netns: Option<u32>) -> bool {
    let Some(config) = config() else {
        return false;
    };
    match netns {
        Some(inum) => inum == config.netns_inum,
        None => {
            count(TcpEventCounter::NetnsUnreadable);
            false
        }
    }
}

#[inline(always)]
fn emit(ctx: &TracePointContext, kind: TcpEventKind, source: Source, reason: u32) {
    let Some(mut entry) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
        count(TcpEventCounter::EventsDropped);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, writable TcpEvent; every field is written in
    // place before submit.
    unsafe {
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).kind = kind as u8;
        (*event)._pad = [0; 2];
        (*event).reason = reason;
        (*event).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*event).local_addr = [0; 16];
        (*event).remote_addr = [0; 16];
        match source {
            Source::Addresses(fields) => fill_from_addresses(ctx, &mut *event, fields),
            Source::SockAddrs => fill_from_sockaddrs(ctx, &mut *event),
        }
    }
    entry.submit(ringbuf::batched_wakeup::<TcpEvent>(
        &TCP_EVENTS,
        TCP_EVENTS_RINGBUF_BYTES,
    ));
}

#[inline(always)]
fn fill_from_addresses(ctx: &TracePointContext, event: &mut TcpEvent, fields: &Addresses) {
    event.local_port = field::<u16>(ctx, fields.sport);
    event.remote_port = field::<u16>(ctx, fields.dport);
    if field::<u16>(ctx, fields.family) == AF_INET6 {
        event.family = FAMILY_IPV6;
        copy_field(ctx, fields.saddr_v6, &mut event.local_addr);
        copy_field(ctx, fields.daddr_v6, &mut event.remote_addr);
    } else {
        event.family = FAMILY_IPV4;
        copy_field(ctx, fields.saddr, &mut event.local_addr[..4]);
        copy_field(ctx, fields.daddr, &mut event.remote_addr[..4]);
    }
}

/// `sockaddr_in`: family, port (network order), address at 4; `sockaddr_in6`: address at 8.
#[inline(always)]
fn fill_from_sockaddrs(ctx: &TracePointContext, event: &mut TcpEvent) {
    let (mut local, mut remote) = ([0u8; 28], [0u8; 28]);
    copy_field(ctx, send_reset::SADDR, &mut local);
    copy_field(ctx, send_reset::DADDR, &mut remote);
    event.local_port = u16::from_be_bytes([local[2], local[3]]);
    event.remote_port = u16::from_be_bytes([remote[2], remote[3]]);
    if u16::from_ne_bytes([local[0], local[1]]) == AF_INET {
        event.family = FAMILY_IPV4;
        event.local_addr[..4].copy_from_slice(&local[4..8]);
        event.remote_addr[..4].copy_from_slice(&remote[4..8]);
    } else {
        event.family = FAMILY_IPV6;
        event.local_addr.copy_from_slice(&local[8..24]);
        event.remote_addr.copy_from_slice(&remote[8..24]);
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
