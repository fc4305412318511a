//! The tracker's state: a 4-way set-associative table of 64-byte slots. A 4-tuple's seeded
//! jhash (lookup3, as the kernel's own hash maps use, so that a remote host cannot choose
//! 4-tuples that land in a given set) picks one set; its state is in one of the set's ways.
//! An array element is read and written in place (the verifier inlines the lookup: no helper
//! call), where an LRU hash map takes a bucket lock and an LRU node per insert.
//!
//! Admission: a new handshake takes a free way; else the way whose state matters least — a
//! handshake answered with a SYN cookie (the kernel keeps nothing for it), then a SYN not yet
//! answered, then a completed handshake, then an open one whose protection has run out — and
//! otherwise none: it is refused, and counted. An open handshake whose SYN-ACK a listener sent
//! for a request it keeps is protected for as long as the kernel may keep that request, so
//! that no flood of new SYNs, whatever its rate, takes its state; every eviction is counted by
//! what it took.
//!
//! Two CPUs may write one slot at once (two 4-tuples of one set, or both ends of one
//! handshake), and a slot is several words. So each slot carries a seal: a hash of its key and
//! state, written with them. A slot whose seal does not match what it holds (a write torn by
//! another) reads as empty: a torn slot can make the tracker miss an anomaly, never report
//! one against another 4-tuple's state.

use aya_ebpf::{macros::map, maps::Array};
use seqwatch_common::handshake::{STATE_SETS, STATE_WAYS, jhash, state_set};

use super::{ESTABLISHED, Handshake, SYN_SEEN};
use crate::packet::FlowKey;

/// Words of a key.
const KEY_WORDS: usize = 10;
const WAYS: usize = STATE_WAYS as usize;

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    key: FlowKey,
    state: Handshake,
    /// 0: empty; otherwise `seal(hash of key, state)`.
    seal: u32,
    /// The protection clock's tick (`super::clock_tick`) before which no new handshake takes
    /// this slot; 0: unprotected. Outside the seal: a torn one only misplaces an eviction.
    protected_until: u32,
}

/// As u64 words, the way the slot is copied in and out.
const SLOT_WORDS: usize = core::mem::size_of::<Slot>() / 8;
/// The u64 word that holds the seal (low half) and the protection (high half).
const SEAL_WORD: usize = SLOT_WORDS - 1;

#[map]
static HANDSHAKE_SLOTS: Array<[Slot; WAYS]> = Array::with_max_entries(STATE_SETS, 0);

/// Where a 4-tuple's state lives: its set and its key's hash (which the seal covers).
pub struct Place {
    set: u32,
    hash: u32,
}

impl Place {
    #[inline(always)]
    pub fn of(key: &FlowKey, seed: u32) -> Self {
        let hash = jhash(&key_words(key), seed);
        Place {
            set: state_set(hash),
            hash,
        }
    }
}

/// A key's state and the way of its set that holds it.
#[derive(Clone, Copy)]
pub struct Held {
    way: u32,
    pub state: Handshake,
}

/// What a new handshake's state took the place of.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Eviction {
    /// SYN-ACK sent as a SYN cookie: no request in the kernel, and a cookie's check is the
    /// kernel's.
    Cookie = 0,
    /// A SYN not answered yet (or dropped by the kernel).
    Unanswered = 1,
    /// A completed handshake, kept to spot SYNs on it.
    Completed = 2,
    /// An open handshake past its protection: the kernel has most likely dropped its request.
    Expired = 3,
}

/// The outcome of [`insert`].
pub enum Insert {
    /// The set already holds the key: nothing was written.
    Held(Held),
    /// Written, in a free way or in place of an older entry (its key is returned, so that
    /// what else refers to it can be cleared).
    Placed(Held, Option<(Eviction, FlowKey)>),
    /// Every way holds a protected handshake: nothing was written.
    Refused,
}

/// The state of `key`, if a way of its set holds it whole.
#[inline(always)]
pub fn get(place: &Place, key: &FlowKey) -> Option<Held> {
    let set = HANDSHAKE_SLOTS.get_ptr(place.set)?;
    for way in 0..STATE_WAYS {
        // SAFETY: a way of an array element, valid for the program run.
        let slot = unsafe { set.cast::<Slot>().add(way as usize) };
        if let Some(slot) = read_occupied(slot)
            && holds(&slot, place, key)
        {
            return Some(Held {
                way,
                state: slot.state,
            });
        }
    }
    None
}

/// Keeps `state` for `key` in the way that held it.
#[inline(always)]
pub fn put(place: &Place, held: &Held, key: &FlowKey, state: &Handshake, protected_until: u32) {
    write(place, held.way, &sealed(place, key, state, protected_until));
}

/// Keeps `state` for `key` unless its set holds `key` already or has no room (see the
/// module's admission rule). `now` gives the protection clock's tick; it is read only when
/// every way is protected.
#[inline(always)]
pub fn insert(
    place: &Place,
    key: &FlowKey,
    state: &Handshake,
    protected_until: u32,
    now: impl FnOnce() -> u32,
) -> Insert {
    let Some(set) = HANDSHAKE_SLOTS.get_ptr(place.set) else {
        return Insert::Refused;
    };
    // The way to take: a free one, else the least valuable unprotected entry, else the
    // protected entry whose protection ends first (if it has). STATE_WAYS for none (not
    // Options: LLVM leaves a None's payload undefined, and the verifier refuses to read an
    // undefined register).
    let (mut free, mut victim, mut first_to_expire) = (STATE_WAYS, STATE_WAYS, STATE_WAYS);
    let mut victim_eviction = Eviction::Expired;
    let mut earliest_end = u32::MAX;
    for way in 0..STATE_WAYS {
        // SAFETY: as in `get`.
        let slot = unsafe { set.cast::<Slot>().add(way as usize) };
        let Some(held) = read_occupied(slot) else {
            free = free.min(way);
            continue;
        };
        if holds(&held, place, key) {
            return Insert::Held(Held {
                way,
                state: held.state,
            });
        }
        if held.protected_until != 0 {
            if held.protected_until < earliest_end {
                (earliest_end, first_to_expire) = (held.protected_until, way);
            }
            continue;
        }
        let eviction = match held.state.state {
            SYN_SEEN => Eviction::Unanswered,
            ESTABLISHED => Eviction::Completed,
            _ => Eviction::Cookie,
        };
        if eviction < victim_eviction {
            (victim_eviction, victim) = (eviction, way);
        }
    }
    let (way, eviction) = if free < STATE_WAYS {
        (free, None)
    } else if victim < STATE_WAYS {
        (victim, Some(victim_eviction))
    } else if first_to_expire < STATE_WAYS && now() >= earliest_end {
        (first_to_expire, Some(Eviction::Expired))
    } else {
        return Insert::Refused;
    };
    let evicted = eviction.map(|eviction| {
        // SAFETY: as in `get`: the key of what is about to be overwritten.
        let key = unsafe { (*set.cast::<Slot>().add(way as usize)).key };
        (eviction, key)
    });
    write(place, way, &sealed(place, key, state, protected_until));
    let placed = Held { way, state: *state };
    Insert::Placed(placed, evicted)
}

/// Empties the way if it still holds `key`.
#[inline(always)]
pub fn remove(place: &Place, held: &Held, key: &FlowKey) {
    let Some(set) = HANDSHAKE_SLOTS.get_ptr_mut(place.set) else {
        return;
    };
    // SAFETY: a way of an array element, valid for the program run; racing writers are what
    // the seal is for, and emptying one another's slot only loses state.
    unsafe {
        let slot = set.cast::<Slot>().add(held.way as usize);
        if same_key(&(*slot).key, key) {
            core::ptr::write_volatile(&raw mut (*slot).seal, 0);
        }
    }
}

#[inline(always)]
fn sealed(place: &Place, key: &FlowKey, state: &Handshake, protected_until: u32) -> Slot {
    Slot {
        key: *key,
        state: *state,
        seal: seal(place.hash, state),
        protected_until,
    }
}

#[inline(always)]
fn holds(slot: &Slot, place: &Place, key: &FlowKey) -> bool {
    same_key(&slot.key, key) && slot.seal == seal(place.hash, &slot.state)
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    key_words(a) == key_words(b)
}

/// A copy of the slot, read once, word by word (volatile: the copy is what is checked and
/// then used, so it must not be read again from a slot another CPU may be writing); `None`,
/// after one word, for an empty slot.
#[inline(always)]
fn read_occupied(slot: *const Slot) -> Option<Slot> {
    let slot = slot.cast::<u64>();
    let mut words = [0u64; SLOT_WORDS];
    // SAFETY: a word of an array slot, valid for the program run.
    words[SEAL_WORD] = unsafe { core::ptr::read_volatile(slot.add(SEAL_WORD)) };
    if words[SEAL_WORD] as u32 == 0 {
        return None;
    }
    for (i, word) in words.iter_mut().take(SEAL_WORD).enumerate() {
        // SAFETY: as above.
        *word = unsafe { core::ptr::read_volatile(slot.add(i)) };
    }
    // SAFETY: Slot is plain words (repr(C), no padding), any bits valid.
    Some(unsafe { core::mem::transmute::<[u64; SLOT_WORDS], Slot>(words) })
}

/// Writes the slot word by word, the seal (in the last word) last.
#[inline(always)]
fn write(place: &Place, way: u32, slot: &Slot) {
    let Some(set) = HANDSHAKE_SLOTS.get_ptr_mut(place.set) else {
        return;
    };
    // SAFETY: a way of an array element, valid for the program run.
    let to = unsafe { set.cast::<Slot>().add(way as usize).cast::<u64>() };
    // SAFETY: as in `read_occupied`.
    let words = unsafe { core::mem::transmute::<Slot, [u64; SLOT_WORDS]>(*slot) };
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: a word of an array slot, valid for the program run.
        unsafe { core::ptr::write_volatile(to.add(i), word) };
    }
}

#[inline(always)]
fn key_words(key: &FlowKey) -> [u32; KEY_WORDS] {
    // SAFETY: FlowKey is 40 bytes of word-sized fields without padding.
    unsafe { core::mem::transmute::<FlowKey, [u32; KEY_WORDS]>(*key) }
}

/// A non-zero hash of the key's hash and the state: what a whole slot holds. Not for
/// adversaries (a remote host cannot time a torn write), only to tell a mix of two writes
/// from either: two multiply-xorshift rounds, each injective in its word.
#[inline(always)]
fn seal(key_hash: u32, state: &Handshake) -> u32 {
    // SAFETY: Handshake is 16 bytes of integers without padding.
    let [low, high] = unsafe { core::mem::transmute::<Handshake, [u64; 2]>(*state) };
    let mut h = (u64::from(key_hash) ^ low).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    h = (h ^ high).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 32;
    h as u32 | 1
}
