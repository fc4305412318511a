//! How the ring buffers wake their readers: in batches. Each reader also drains on a short
//! timer, and a wakeup per record (a context switch on a busy host) costs more CPU than
//! everything else the programs do together.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::generated::bpf_ringbuf_query,
    maps::RingBuf,
};

/// The submit flag for a record of `T` in `ring` (`capacity` bytes).
#[inline(always)]
pub fn batched_wakeup<T>(ring: &RingBuf, capacity: u32) -> u64 {
    wakeup_flag::<T>(ring.query(BPF_RB_AVAIL_DATA.into()), capacity.into())
}

/// The submit flag for a record of `T` in a ring buffer reached through a map of maps (whose
/// size userspace chose): the reference is the kernel's map pointer.
#[inline(always)]
pub fn batched_wakeup_inner<T, R>(ring: &R) -> u64 {
    let ring = core::ptr::from_ref(ring).cast_mut().cast();
    // SAFETY: `ring` is a ring buffer map the verifier has checked.
    let (queued, capacity) = unsafe {
        (
            bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA.into()),
            bpf_ringbuf_query(ring, BPF_RB_RING_SIZE.into()),
        )
    };
    wakeup_flag::<T>(queued, capacity)
}

/// Wake the reader only when this record takes the buffer (`capacity` bytes, `queued` of them
/// waiting) past an eighth full — once per crossing, not once per record above the mark.
#[inline(always)]
fn wakeup_flag<T>(queued: u64, capacity: u64) -> u64 {
    let mark = capacity / 8;
    // A record takes its size plus the ring buffer's 8-byte header, in 8-byte units.
    let footprint = (core::mem::size_of::<T>() as u64 + 8).div_ceil(8) * 8;
    if (mark..mark + footprint).contains(&queued) {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}
