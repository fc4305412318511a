//! TLS record-framing check on egress: for flows on configured TLS ports, and for flows whose
//! first payload from this host is a TLS ClientHello (we are the client) or ServerHello (we
//! are the server), it follows the record boundaries per flow and checks every record header
//! this host sends. Bytes that are not a header where one must start (plaintext written onto
//! an encrypted session) become one `TlsEvent`; so does every TLS session's end, classified.
//!
//! How data segments reach the check without every data segment paying: the fast path sends
//! egress plain ACKs here only when `TLS_PORT_FILTER` (one slot per port, an array the verifier
//! inlines: no helper call, no hash) says so for either port: the slot holds
//! `PORT_CONFIGURED` for a configured TLS port, or, at the flow's ephemeral port, the tag of a
//! flow whose SYN (or SYN-ACK) this host sent, beside its first payload's seq (one 8-byte
//! slot: a SYN-ACK pays one slot read and one write). The watch is cleared when that payload
//! is not a hello, and marked started when it is. Only segments of followed flows pay for a
//! flow lookup (a watched flow's first payload, and its end before any, need none), and only
//! those with a record boundary in them for the walk.
//!
//! Per flow (`TLS_FLOWS`, LRU): the seq of the next record header and the bytes of a header
//! split across segments. A segment wholly before that seq (record body, retransmission) costs
//! nothing more; one starting after it (a gap: out of order, or bytes we never saw) loses the
//! boundaries, as does a violation, and the flow resynchronises on a later segment whose first
//! five bytes are a valid record header. The walk over the records of one segment (a GSO
//! super-packet carries up to 64 KiB) runs under `bpf_loop`, so the verifier checks it once.

use core::ptr::NonNull;

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    cty::{c_long, c_void},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_loop, bpf_skb_load_bytes},
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use seqwatch_common::{
    Direction,
    tls::{
        COLLAPSE_WINDOW_NS, CONFIG_DETECT_HELLO, CONFIG_LOG_PREFIX, EVENT_PLAINTEXT,
        EVENT_SESSION_END, PORT_CONFIGURED, PORT_FILTER_SLOTS, PREFIX_BYTES, RESET_AFTER_DATA_NS,
        SessionEnd, TLS_RINGBUF_BYTES, TlsCounter, TlsEvent,
    },
};

use crate::{
    packet::{self, FlowKey, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpPacket, copy_address},
    ringbuf,
};

/// TLS flows tracked at once.
const MAX_FLOWS: u32 = 65_536;
/// Records walked in one segment: a 64 KiB GSO super-packet of empty records (5-byte headers)
/// has 13 108. A segment with more loses the flow's boundaries.
const MAX_RECORDS_PER_SEGMENT: u32 = 16_384;

const HEADER_LEN: u32 = 5;
const CONTENT_CHANGE_CIPHER_SPEC: u32 = 20;
const CONTENT_ALERT: u32 = 21;
const CONTENT_HANDSHAKE: u32 = 22;
const CONTENT_APPLICATION_DATA: u32 = 23;
/// RFC 6520. 25 (tls12_cid) and 26 (ack) exist only in DTLS (RFC 9146, RFC 9147).
const CONTENT_HEARTBEAT: u32 = 24;
/// legacy_record_version: 0x0301 (TLS 1.0, and a TLS 1.3 ClientHello's) to 0x0303 (TLS 1.2
/// and every other TLS 1.3 record, RFC 8446 §5.1). 0x0304 never appears on the record layer.
const VERSION_MIN: u32 = 0x0301;
const VERSION_MAX: u32 = 0x0303;
/// TLS 1.2's TLSCiphertext limit, 2^14 + 2048 (RFC 5246 §6.2.3). TLS 1.3's is 2^14 + 256, but
/// the version is negotiated in extensions this walk does not parse, so the larger one holds.
const MAX_RECORD_LEN: u32 = (1 << 14) + 2048;
/// An alert's plaintext body: level and description.
const PLAIN_ALERT_LEN: u32 = 2;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_SERVER_HELLO: u8 = 2;

/// Flow states.
const SYNCED: u8 = 0;
/// Record boundaries unknown until a segment starts with a valid header.
const LOST: u8 = 1;
/// Its end was counted; later segments of the 4-tuple are ignored until a new handshake.
const ENDED: u8 = 2;

const WALK_OK: u32 = 0;
const WALK_BAD_HEADER: u32 = 1;
/// The segment ends within a record header.
const WALK_SPLIT: u32 = 2;
/// A load failed (never expected: the payload length is checked against the skb's).
const WALK_UNREADABLE: u32 = 3;

/// Index 0: `CONFIG_*` bits, set by userspace.
#[map]
static TLS_CONFIG: Array<u32> = Array::with_max_entries(1, 0);

/// Per port: `PORT_CONFIGURED`; or a watched flow: its tag in the low word (with
/// `WATCH_STARTED` once it began with a hello), the seq of its first payload byte in the high
/// word; or 0.
#[map]
static TLS_PORT_FILTER: Array<u64> = Array::with_max_entries(PORT_FILTER_SLOTS, 0);

#[map]
static TLS_FLOWS: LruHashMap<FlowKey, TlsFlow> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map]
static TLS_EVENTS: RingBuf = RingBuf::with_byte_size(TLS_RINGBUF_BYTES, 0);

#[map]
static TLS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TlsCounter::COUNT, 0);

#[repr(C)]
struct TlsFlow {
    /// When this host last sent an application-data record, and when plaintext (0: never).
    last_data_ns: u64,
    plaintext_ns: u64,
    /// Seq of the first byte of the next record header.
    next_record: u32,
    /// The first `pending_len` bytes of that header, when it was split across segments.
    pending: u32,
    pending_len: u32,
    /// Stream offsets in events count from here.
    base_seq: u32,
    state: u8,
    local_is_server: u8,
    /// 1 when `base_seq` is the flow's first payload byte (0: a resync point).
    from_start: u8,
    /// The last record this host sent was an unencrypted alert.
    last_alert: u8,
    _pad: u32,
}

impl TlsFlow {
    /// A flow whose stream offsets count from `seq`: its first payload byte when synced.
    #[inline(always)]
    fn starting(seq: u32, state: u8, local_is_server: bool) -> Self {
        TlsFlow {
            last_data_ns: 0,
            plaintext_ns: 0,
            next_record: seq,
            pending: 0,
            pending_len: 0,
            base_seq: seq,
            state,
            local_is_server: u8::from(local_is_server),
            from_start: u8::from(state == SYNCED),
            last_alert: 0,
            _pad: 0,
        }
    }
}

/// One TCP segment, oriented (local = this host).
struct Segment<'a> {
    tcp: &'a TcpPacket,
    direction: Direction,
    key: FlowKey,
    tag: u32,
    flags: u8,
    /// Seq of the first payload byte (after a SYN's own sequence number).
    payload_seq: u32,
    /// Frame offset of the payload, and its length.
    payload_start: u32,
    payload_len: u32,
}

/// Whether an egress plain ACK (read in place by the fast path) belongs to a flow this check
/// follows. Called only for plain ACKs that no other detector wanted: two array reads for a
/// segment of no TLS flow, the tag only when a port's slot is in use.
#[inline(always)]
pub fn worth_parsing(ctx: &TcContext, direction: Direction, ports: u32) -> bool {
    if direction != Direction::Egress {
        return false;
    }
    let (local_port, remote_port) = ((ports >> 16) as u16, ports as u16);
    if !slot_in_use(local_port) && !slot_in_use(remote_port) {
        return false;
    }
    match packet::plain_destination(ctx) {
        Some(remote) => filter_matches(
            flow_tag(remote, local_port, remote_port),
            local_port,
            remote_port,
        ),
        None => true,
    }
}

/// Follows one parsed segment: starts flows at this host's SYN or SYN-ACK, checks the record
/// headers in egress payload, and counts session ends (FIN or RST, either direction). Inlined
/// up to the port filter: most parsed segments (every SYN-ACK among them) end there.
#[inline(always)]
pub fn observe(ctx: &TcContext, direction: Direction, tcp: &TcpPacket) {
    let flags = tcp.flags;
    if flags & TCP_SYN != 0 {
        if direction == Direction::Egress && flags & TCP_RST == 0 {
            on_handshake(tcp);
        }
        return;
    }
    if slot_in_use(tcp.sport) || slot_in_use(tcp.dport) {
        observe_segment(ctx, direction, tcp);
    }
}

/// A segment of a port whose filter slot is in use.
#[inline(never)]
fn observe_segment(ctx: &TcContext, direction: Direction, tcp: &TcpPacket) {
    let flags = tcp.flags;
    let segment = Segment::new(ctx, tcp, direction);
    let filtered = filter_state(segment.tag, segment.key.local_port, segment.key.remote_port);
    if filtered == Filtered::Out {
        return;
    }
    let awaiting = filtered == Filtered::AwaitingFirstPayload;
    let payload_checked = direction == Direction::Egress && segment.payload_len > 0;
    if payload_checked {
        check_payload(ctx, &segment, awaiting);
    }
    if flags & (TCP_FIN | TCP_RST) != 0 {
        if awaiting && !payload_checked {
            clear_watch(&segment); // no payload, no session: nothing to look up
        } else {
            end_session(ctx, &segment);
        }
    }
}

/// This host's SYN (we are the client) or SYN-ACK (the server): a flow to a configured server
/// port is followed from its first payload byte; any other is watched, with hello detection
/// on, by its tag and first payload seq in the slot of the client's (ephemeral, nearly unique)
/// port. No flow key is built for the latter: every SYN-ACK passes here, and TLS is the
/// exception. Only the server port's slot is read: the client port's is written blind, as a
/// read of it would be a cache miss on most SYN-ACKs of a busy server.
#[inline(always)]
fn on_handshake(tcp: &TcpPacket) {
    let local_is_server = tcp.flags & TCP_ACK != 0;
    let (server_port, client_port) = if local_is_server {
        (tcp.sport, tcp.dport)
    } else {
        (tcp.dport, tcp.sport)
    };
    if port_configured(server_port) {
        start_configured_flow(tcp);
        return;
    }
    if config() & CONFIG_DETECT_HELLO == 0 {
        return;
    }
    if let Some(slot) = TLS_PORT_FILTER.get_ptr_mut(u32::from(client_port)) {
        let tag = flow_tag(tcp.address_word(&tcp.daddr), tcp.sport, tcp.dport);
        // SAFETY: an array slot; a racing flow on the same port can only take the slot over.
        unsafe { *slot = u64::from(first_payload_seq(tcp)) << 32 | u64::from(tag) };
    }
}

/// This host's SYN (we are the client) or SYN-ACK (the server) on a configured TLS port: the
/// flow is followed from its first payload byte.
#[inline(never)]
fn start_configured_flow(tcp: &TcpPacket) {
    let key = FlowKey::oriented(tcp, Direction::Egress);
    let local_is_server = tcp.flags & TCP_ACK != 0;
    let flow = TlsFlow::starting(first_payload_seq(tcp), SYNCED, local_is_server);
    let _ = TLS_FLOWS.insert(&key, &flow, 0);
}

/// The seq of a SYN's (or SYN-ACK's) first payload byte: the SYN takes one sequence number.
#[inline(always)]
fn first_payload_seq(tcp: &TcpPacket) -> u32 {
    tcp.seq.wrapping_add(1)
}

impl<'a> Segment<'a> {
    #[inline(always)]
    fn new(ctx: &TcContext, tcp: &'a TcpPacket, direction: Direction) -> Self {
        let key = FlowKey::oriented(tcp, direction);
        let remote_word = tcp.address_word(&key.remote);
        let flags = tcp.flags;
        let payload_start = tcp.tcp_offset + usize::from(tcp.header_len);
        // A GSO super-packet's IP length covers all of it; BIG TCP's is 0: take the skb's.
        let frame_len = ctx.len() as usize;
        let end = if tcp.ip_end > payload_start {
            tcp.ip_end.min(frame_len)
        } else {
            frame_len
        };
        Segment {
            tcp,
            direction,
            tag: flow_tag(remote_word, key.local_port, key.remote_port),
            key,
            flags,
            payload_seq: tcp.seq.wrapping_add(u32::from(flags & TCP_SYN != 0)),
            payload_start: payload_start as u32,
            payload_len: end.saturating_sub(payload_start) as u32,
        }
    }
}

/// Checks the record headers in one egress segment's payload. A flow awaiting its first
/// payload has no entry yet (an entry of an earlier connection on the same 4-tuple is
/// replaced), so it is not looked up.
#[inline(never)]
fn check_payload(ctx: &TcContext, segment: &Segment, awaiting_first_payload: bool) {
    let existing = if awaiting_first_payload {
        None
    } else {
        TLS_FLOWS.get_ptr_mut(&segment.key)
    };
    let flow = match existing {
        Some(flow) => flow,
        None => match start_flow(ctx, segment) {
            Some(flow) => flow.as_ptr(),
            None => return,
        },
    };
    // SAFETY: the entry stays valid for this program run (RCU); a concurrent update of the
    // same flow on another CPU can at worst lose one state change.
    let flow = unsafe { &mut *flow };
    if flow.state == SYNCED && starts_after_next_header(flow, segment) {
        // A gap: the bytes holding the next boundary were not seen (out of order, or lost
        // to us). This segment may still start with a header.
        lose(flow);
    }
    if flow.state == LOST && starts_with_header(ctx, segment) {
        count(TlsCounter::Resynced);
        flow.state = SYNCED;
        flow.next_record = segment.payload_seq;
        flow.pending_len = 0;
        flow.base_seq = segment.payload_seq;
        flow.from_start = 0;
    }
    // One call site: the verifier checks the walk once per path that reaches it.
    if flow.state == SYNCED {
        walk_segment(ctx, segment, flow);
    }
}

/// A flow met first in a data segment (NonNull: an `Option<*mut>` would be returned in two
/// registers, which a BPF call does not have): mid-stream on a configured port (boundaries unknown
/// until a resync), or the awaited first payload of a watched flow, if it is a hello.
#[inline(never)]
fn start_flow(ctx: &TcContext, segment: &Segment) -> Option<NonNull<TlsFlow>> {
    let key = &segment.key;
    let mut flow = TlsFlow::starting(segment.payload_seq, LOST, port_configured(key.local_port));
    if !port_configured(key.local_port) && !port_configured(key.remote_port) {
        let local_is_server = watched_slot(segment.tag, key.remote_port);
        let slot = if local_is_server {
            key.remote_port
        } else {
            key.local_port
        };
        let first = TLS_PORT_FILTER
            .get(u32::from(slot))
            .is_some_and(|watch| (*watch >> 32) as u32 == segment.payload_seq);
        let hello = if local_is_server {
            HANDSHAKE_SERVER_HELLO
        } else {
            HANDSHAKE_CLIENT_HELLO
        };
        if !first || !starts_with_hello(ctx, segment, hello) {
            clear_watch(segment);
            return None;
        }
        flow = TlsFlow::starting(segment.payload_seq, SYNCED, local_is_server);
        TLS_FLOWS.insert(key, &flow, 0).ok()?;
        mark_started(slot);
    } else {
        count(TlsCounter::TrackingLost);
        TLS_FLOWS.insert(key, &flow, 0).ok()?;
    }
    TLS_FLOWS.get_ptr_mut(key).and_then(NonNull::new)
}

/// Walks the record headers from the next expected boundary to the end of the segment.
#[inline(never)]
fn walk_segment(ctx: &TcContext, segment: &Segment, flow: &mut TlsFlow) {
    let expected = flow.next_record.wrapping_add(flow.pending_len);
    let ahead = expected.wrapping_sub(segment.payload_seq);
    if ahead >= segment.payload_len {
        return; // record body, or a retransmission of bytes already checked
    }
    let mut walk = RecordWalk {
        skb: ctx.as_ptr().cast(),
        payload_start: segment.payload_start,
        payload_len: segment.payload_len,
        at: ahead,
        have: flow.pending_len,
        pending: u64::from(flow.pending),
        verdict: WALK_OK,
        header_at: 0,
        last_type: 0,
        last_len: 0,
        records: 0,
        app_data: 0,
    };
    if walk.have > 0 {
        finish_split_header(&mut walk);
    }
    if walk.verdict == WALK_OK && walk.have == 0 {
        run_walk(&mut walk);
        if walk.verdict == WALK_SPLIT {
            start_split_header(&mut walk);
        }
    }
    if walk.records > 0 {
        count_by(TlsCounter::RecordsChecked, u64::from(walk.records));
        flow.last_alert =
            u8::from(walk.last_type == CONTENT_ALERT && walk.last_len == PLAIN_ALERT_LEN);
    }
    if walk.app_data != 0 {
        // SAFETY: a helper without arguments.
        flow.last_data_ns = unsafe { bpf_ktime_get_ns() };
    }
    if walk.verdict == WALK_OK && walk.at >= walk.payload_len {
        flow.next_record = segment
            .payload_seq
            .wrapping_add(walk.at)
            .wrapping_sub(walk.have);
        flow.pending = walk.pending as u32;
        flow.pending_len = walk.have;
    } else if walk.verdict == WALK_BAD_HEADER {
        let bad_seq = segment.payload_seq.wrapping_add(walk.header_at);
        // SAFETY: as above.
        flow.plaintext_ns = unsafe { bpf_ktime_get_ns() };
        lose(flow);
        let details = Report {
            seq: bad_seq,
            stream_offset: bad_seq.wrapping_sub(flow.base_seq),
            header_at: walk.header_at,
            kind: EVENT_PLAINTEXT,
            end: 0,
            local_is_server: flow.local_is_server,
            from_start: flow.from_start,
        };
        report(ctx, segment, &details);
    } else {
        lose(flow); // more records than one walk takes, or unreadable bytes
    }
}

/// Whether the segment begins past the next byte the walk needs.
#[inline(always)]
fn starts_after_next_header(flow: &TlsFlow, segment: &Segment) -> bool {
    let expected = flow.next_record.wrapping_add(flow.pending_len);
    (expected.wrapping_sub(segment.payload_seq) as i32) < 0
}

#[inline(always)]
fn lose(flow: &mut TlsFlow) {
    count(TlsCounter::TrackingLost);
    flow.state = LOST;
    flow.pending_len = 0;
}

/// State of one record walk, shared with `record_step` through `bpf_loop`.
#[repr(C)]
struct RecordWalk {
    skb: *mut __sk_buff,
    /// The bytes of a header split across segments gathered so far (`have` of them),
    /// big-endian in the low bytes. Handled outside the loop, so that its body stays small:
    /// the verifier re-checks a bpf_loop callback until its states converge.
    pending: u64,
    have: u32,
    payload_start: u32,
    payload_len: u32,
    /// Payload offset of the next byte to read.
    at: u32,
    verdict: u32,
    /// Payload offset (wrapping: may lie in the previous segment) of the last header read.
    header_at: u32,
    last_type: u32,
    last_len: u32,
    records: u32,
    app_data: u32,
}

#[inline(never)]
fn run_walk(walk: &mut RecordWalk) {
    // SAFETY: the callback matches bpf_loop's signature and only touches `walk`, which
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_RECORDS_PER_SEGMENT,
            record_step as *mut c_void,
            (walk as *mut RecordWalk).cast(),
            0,
        );
    }
}

/// One record header: 0 to go on, 1 to stop (end of segment, a split header, a bad header).
extern "C" fn record_step(_index: u64, walk: *mut c_void) -> c_long {
    // SAFETY: bpf_loop hands back the pointer run_walk gave it.
    let walk = unsafe { &mut *walk.cast::<RecordWalk>() };
    if walk.at >= walk.payload_len {
        return 1;
    }
    if walk.payload_len - walk.at < HEADER_LEN {
        walk.verdict = WALK_SPLIT;
        return 1;
    }
    walk.header_at = walk.at;
    let Some(header) = load_header(walk.skb, walk.payload_start + walk.at) else {
        walk.verdict = WALK_UNREADABLE;
        return 1;
    };
    walk.at += HEADER_LEN;
    if apply_header(walk, header) { 0 } else { 1 }
}

/// Checks one header and steps over its record; false when it is not a valid header.
#[inline(always)]
fn apply_header(walk: &mut RecordWalk, header: u64) -> bool {
    let content_type = (header >> 32) as u32 & 0xff;
    let version = (header >> 16) as u32 & 0xffff;
    let length = header as u32 & 0xffff;
    if !valid_header(content_type, version, length) {
        walk.verdict = WALK_BAD_HEADER;
        return false;
    }
    walk.records += 1;
    walk.last_type = content_type;
    walk.last_len = length;
    if content_type == CONTENT_APPLICATION_DATA {
        walk.app_data = 1;
    }
    walk.at += length;
    true
}

/// The segment ends within a header: keep its first bytes (one to four) for the next one.
#[inline(never)]
fn start_split_header(walk: &mut RecordWalk) {
    walk.verdict = WALK_OK;
    walk.header_at = walk.at;
    walk.pending = 0;
    let count = walk.payload_len - walk.at;
    if !gather(walk, count) {
        walk.verdict = WALK_UNREADABLE;
    }
}

/// Completes a header the previous segment began, from this segment's first bytes.
#[inline(never)]
fn finish_split_header(walk: &mut RecordWalk) {
    walk.header_at = walk.at.wrapping_sub(walk.have);
    let need = HEADER_LEN.saturating_sub(walk.have);
    let count = need.min(walk.payload_len - walk.at);
    if !gather(walk, count) {
        walk.verdict = WALK_UNREADABLE;
        return;
    }
    if walk.have < HEADER_LEN {
        return; // split again: still waiting for its last bytes
    }
    let header = walk.pending;
    walk.pending = 0;
    walk.have = 0;
    apply_header(walk, header);
}

/// Appends up to four payload bytes at `at` to the header being gathered.
#[inline(always)]
fn gather(walk: &mut RecordWalk, count: u32) -> bool {
    for i in 0..4 {
        if i >= count {
            break;
        }
        let mut byte = 0u8;
        // SAFETY: one byte into a local; the helper checks the packet bounds.
        let loaded = unsafe {
            bpf_skb_load_bytes(
                walk.skb.cast(),
                walk.payload_start + walk.at,
                (&raw mut byte).cast(),
                1,
            )
        };
        if loaded != 0 {
            return false;
        }
        walk.pending = walk.pending << 8 | u64::from(byte);
        walk.have += 1;
        walk.at += 1;
    }
    true
}

/// The five header bytes at `offset`, big-endian in the low 40 bits.
#[inline(always)]
fn load_header(skb: *mut __sk_buff, offset: u32) -> Option<u64> {
    let mut bytes = 0u64;
    // SAFETY: five bytes into an eight-byte local; the helper checks the packet bounds.
    let loaded =
        unsafe { bpf_skb_load_bytes(skb.cast(), offset, (&raw mut bytes).cast(), HEADER_LEN) };
    (loaded == 0).then(|| u64::from_be(bytes) >> 24)
}

/// Content type 20–24, legacy_record_version 0x0301–0x0303, a length within TLS 1.2's limit,
/// and not empty unless application data (RFC 8446 §5.1, RFC 5246 §6.2.1).
#[inline(always)]
fn valid_header(content_type: u32, version: u32, length: u32) -> bool {
    (CONTENT_CHANGE_CIPHER_SPEC..=CONTENT_HEARTBEAT).contains(&content_type)
        && (VERSION_MIN..=VERSION_MAX).contains(&version)
        && length <= MAX_RECORD_LEN
        && (length > 0 || content_type == CONTENT_APPLICATION_DATA)
}

/// Whether the segment's first five bytes are a valid record header: a resynchronisation
/// point (a false one needs about 2^-30 luck per segment start).
#[inline(always)]
fn starts_with_header(ctx: &TcContext, segment: &Segment) -> bool {
    if segment.payload_len < HEADER_LEN {
        return false;
    }
    load_header(ctx.as_ptr().cast(), segment.payload_start).is_some_and(|header| {
        valid_header(
            (header >> 32) as u32 & 0xff,
            (header >> 16) as u32 & 0xffff,
            header as u32 & 0xffff,
        )
    })
}

/// Whether the payload starts with a handshake record holding a hello of this type.
#[inline(always)]
fn starts_with_hello(ctx: &TcContext, segment: &Segment, hello: u8) -> bool {
    if segment.payload_len < HEADER_LEN + 1 || !starts_with_header(ctx, segment) {
        return false;
    }
    let mut bytes = [0u8; 2];
    // SAFETY: two bytes into a local; the helper checks the packet bounds.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            segment.payload_start,
            bytes.as_mut_ptr().cast(),
            1,
        ) == 0
            && bpf_skb_load_bytes(
                ctx.as_ptr().cast(),
                segment.payload_start + HEADER_LEN,
                bytes.as_mut_ptr().add(1).cast(),
                1,
            ) == 0
    };
    loaded && bytes[0] == CONTENT_HANDSHAKE as u8 && bytes[1] == hello
}

/// Counts a session's end once and remembers that it ended.
#[inline(never)]
fn end_session(ctx: &TcContext, segment: &Segment) {
    clear_watch(segment);
    let Some(flow) = TLS_FLOWS.get_ptr_mut(&segment.key) else {
        return;
    };
    // SAFETY: as in check_payload.
    let flow = unsafe { &mut *flow };
    if flow.state == ENDED {
        return;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let recent = |at: u64, window: u64| at != 0 && now.wrapping_sub(at) < window;
    let end = if recent(flow.plaintext_ns, COLLAPSE_WINDOW_NS) {
        SessionEnd::PlaintextThenCollapse
    } else if flow.last_alert != 0 {
        SessionEnd::Alert
    } else if segment.flags & TCP_RST != 0 && recent(flow.last_data_ns, RESET_AFTER_DATA_NS) {
        SessionEnd::ResetAfterData
    } else if segment.flags & TCP_RST != 0 {
        SessionEnd::Reset
    } else {
        SessionEnd::Fin
    };
    flow.state = ENDED;
    let details = Report {
        seq: segment.tcp.seq,
        stream_offset: 0,
        header_at: u32::MAX,
        kind: EVENT_SESSION_END,
        end: end as u8,
        local_is_server: flow.local_is_server,
        from_start: flow.from_start,
    };
    report(ctx, segment, &details);
}

/// Forgets a watched flow's tag, so that its later segments leave on the fast path.
#[inline(always)]
fn clear_watch(segment: &Segment) {
    for port in [segment.key.local_port, segment.key.remote_port] {
        if let Some(slot) = TLS_PORT_FILTER.get_ptr_mut(u32::from(port)) {
            // SAFETY: an array slot; only this flow's own watch is cleared.
            unsafe {
                if is_watch_of(*slot, segment.tag) {
                    *slot = 0;
                }
            }
        }
    }
}

/// What an event says beyond the segment it came from.
struct Report {
    seq: u32,
    stream_offset: u32,
    /// Payload offset of the offending bytes (plaintext events).
    header_at: u32,
    kind: u8,
    end: u8,
    local_is_server: u8,
    from_start: u8,
}

/// One event into the ring buffer, every field written in place. Takes its details in one
/// struct: LLVM would otherwise split small argument structs into more than the five
/// registers a BPF call has.
#[inline(never)]
fn report(ctx: &TcContext, segment: &Segment, report: &Report) {
    let Some(mut entry) = TLS_EVENTS.reserve::<TlsEvent>(0) else {
        count(TlsCounter::EventsDropped);
        return;
    };
    let tcp = segment.tcp;
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, writable TlsEvent; the context of a TC program
    // is a valid __sk_buff.
    unsafe {
        (*event).ts_ns = bpf_ktime_get_ns();
        copy_address(&raw mut (*event).saddr, &tcp.saddr);
        copy_address(&raw mut (*event).daddr, &tcp.daddr);
        // Volatile: LLVM would merge two plain stores into a call to a byte loop.
        let prefix = (&raw mut (*event).prefix).cast::<u64>();
        prefix.write_volatile(0);
        prefix.add(1).write_volatile(0);
        (*event).ifindex = (*ctx.as_ptr().cast::<__sk_buff>()).ifindex;
        (*event).seq = report.seq;
        (*event).stream_offset = report.stream_offset;
        (*event).sport = tcp.sport;
        (*event).dport = tcp.dport;
        (*event).family = tcp.family;
        (*event).direction = segment.direction as u8;
        (*event).kind = report.kind;
        (*event).end = report.end;
        (*event).local_is_server = report.local_is_server;
        (*event).from_start = report.from_start;
        (*event).prefix_len = 0;
        (*event)._pad = 0;
        if report.kind == EVENT_PLAINTEXT
            && config() & CONFIG_LOG_PREFIX != 0
            && report.header_at < segment.payload_len
        {
            let available = segment.payload_len - report.header_at;
            (*event).prefix_len = copy_prefix(
                ctx,
                segment.payload_start + report.header_at,
                available.min(PREFIX_BYTES as u32),
                event,
            );
        }
    }
    entry.submit(ringbuf::batched_wakeup::<TlsEvent>(
        &TLS_EVENTS,
        TLS_RINGBUF_BYTES,
    ));
}

/// Copies `len` (0..=16) payload bytes into the event's prefix in at most five loads of
/// constant size (the helper wants a constant length); returns how many were copied.
#[inline(always)]
fn copy_prefix(ctx: &TcContext, offset: u32, len: u32, event: *mut TlsEvent) -> u8 {
    // SAFETY: `event` is reserved and writable; the sizes taken add up to `len` ≤ 16, so
    // every load stays within the prefix; the helper checks the packet bounds.
    unsafe {
        let prefix = (&raw mut (*event).prefix).cast::<u8>();
        let skb = ctx.as_ptr().cast();
        if len >= 16 {
            let loaded = bpf_skb_load_bytes(skb, offset, prefix.cast(), 16) == 0;
            return if loaded { 16 } else { 0 };
        }
        let mut copied = 0u32;
        macro_rules! take {
            ($size:literal) => {
                if len & $size != 0 {
                    let dst = prefix.add((copied & (16 - $size)) as usize);
                    if bpf_skb_load_bytes(skb, offset + copied, dst.cast(), $size) != 0 {
                        return copied as u8;
                    }
                    copied += $size;
                }
            };
        }
        take!(8);
        take!(4);
        take!(2);
        take!(1);
        copied as u8
    }
}

/// Set in a watch slot's tag once the watched flow's first payload was a hello: the flow then
/// has an entry in `TLS_FLOWS`. Until then it has none, and its segments need no lookup.
const WATCH_STARTED: u32 = 1;

/// A tag of (remote address low word, ports) with bit 1 set, so never `PORT_CONFIGURED`, and
/// bit 0 (`WATCH_STARTED`) clear.
#[inline(always)]
fn flow_tag(remote_word: u32, local_port: u16, remote_port: u16) -> u32 {
    let ports = (u32::from(local_port) << 16) | u32::from(remote_port);
    (packet::tuple_mix(remote_word, ports) & !WATCH_STARTED) | 2
}

/// What the port filter says of a segment's flow.
#[derive(Clone, Copy, PartialEq)]
enum Filtered {
    Out,
    /// On a configured port, or a watched flow that began with a hello.
    Followed,
    /// Watched, its first payload still to come.
    AwaitingFirstPayload,
}

#[inline(always)]
fn filter_state(tag: u32, local_port: u16, remote_port: u16) -> Filtered {
    let mut state = Filtered::Out;
    for port in [local_port, remote_port] {
        if let Some(slot) = TLS_PORT_FILTER.get(u32::from(port)) {
            if *slot == PORT_CONFIGURED || *slot as u32 == tag | WATCH_STARTED {
                return Filtered::Followed;
            }
            if *slot as u32 == tag {
                state = Filtered::AwaitingFirstPayload;
            }
        }
    }
    state
}

/// Whether either port's slot marks a TLS port or holds this flow's tag.
#[inline(always)]
fn filter_matches(tag: u32, local_port: u16, remote_port: u16) -> bool {
    filter_state(tag, local_port, remote_port) != Filtered::Out
}

/// Marks the watch at a port's slot as started: its flow is in `TLS_FLOWS`.
#[inline(always)]
fn mark_started(port: u16) {
    if let Some(slot) = TLS_PORT_FILTER.get_ptr_mut(u32::from(port)) {
        // SAFETY: an array slot, holding this flow's watch (just checked by the caller).
        unsafe { *slot |= u64::from(WATCH_STARTED) };
    }
}

/// Whether the tag sits at the remote port's slot: this host sent the SYN-ACK (the server).
#[inline(always)]
fn watched_slot(tag: u32, remote_port: u16) -> bool {
    TLS_PORT_FILTER
        .get(u32::from(remote_port))
        .is_some_and(|slot| is_watch_of(*slot, tag))
}

/// Whether a slot watches the flow with this tag, started or not (never a configured port's
/// slot: tags have bit 1 set).
#[inline(always)]
fn is_watch_of(slot: u64, tag: u32) -> bool {
    slot as u32 | WATCH_STARTED == tag | WATCH_STARTED
}

/// Whether a port's slot marks a TLS port or holds any flow's tag.
#[inline(always)]
fn slot_in_use(port: u16) -> bool {
    TLS_PORT_FILTER
        .get(u32::from(port))
        .is_some_and(|slot| *slot != 0)
}

#[inline(always)]
fn port_configured(port: u16) -> bool {
    TLS_PORT_FILTER
        .get(u32::from(port))
        .is_some_and(|slot| *slot == PORT_CONFIGURED)
}

#[inline(always)]
fn config() -> u32 {
    TLS_CONFIG.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn count(counter: TlsCounter) {
    count_by(counter, 1);
}

/// Adds to a per-CPU counter.
#[inline(always)]
fn count_by(counter: TlsCounter, amount: u64) {
    if let Some(slot) = TLS_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and TC programs do not nest on one CPU.
        unsafe { *slot += amount };
    }
}
