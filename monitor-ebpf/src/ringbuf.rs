//! How the ring buffers wake their readers: in batches. Each reader also drains on a short
//! timer, and a wakeup per record (a context switch on a busy host) costs more CPU than
//! everything else the programs do together.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::RingBuf,
};

/// The submit flag for a record of `T` in `ring` (`capacity` bytes): wake the reader only
/// when this record takes the buffer past an eighth full — once per crossing, not once per
/// record above the mark.
#[inline(always)]
pub fn batched_wakeup<T>(ring: &RingBuf, capacity: u32) -> u64 {
    let mark = u64::from(capacity) / 8;
    // A record takes its size plus the ring buffer's 8-byte header, in 8-byte units.
    let footprint = (core::mem::size_of::<T>() as u64 + 8).div_ceil(8) * 8;
    let queued = ring.query(BPF_RB_AVAIL_DATA.into());
    if (mark..mark + footprint).contains(&queued) {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}
