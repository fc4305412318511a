//! The tracker's state: a direct-mapped table, one 64-byte slot per 4-tuple hash, where a new
//! handshake takes its slot from whatever older one held it. An array slot is read and written
//! in place (the verifier inlines the lookup: no helper call), where an LRU hash map takes a
//! bucket lock and an LRU node per insert and gives it back per delete.
//!
//! Two CPUs may write one slot at once (two 4-tuples with the same hash, or both ends of one
//! handshake), and a slot is several words. So each slot carries a seal: a hash of its key and
//! state, written with them. A slot whose seal does not match what it holds (a write torn by
//! another) reads as empty: a torn slot can make the tracker miss an anomaly, never report
//! one against another 4-tuple's state. The slot index comes from a seeded jhash (lookup3),
//! as the kernel's own hash maps do, so that a remote host cannot choose a 4-tuple that
//! evicts a given handshake.

use aya_ebpf::{macros::map, maps::Array};
use seqwatch_common::handshake::{STATE_SLOTS, jhash};

use super::Handshake;
use crate::packet::FlowKey;

/// Words of a key.
const KEY_WORDS: usize = 10;

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    key: FlowKey,
    state: Handshake,
    /// 0: empty; otherwise `seal(hash of key, state)`.
    seal: u32,
    _pad: u32,
}

/// As u64 words, the way the slot is copied in and out.
const SLOT_WORDS: usize = core::mem::size_of::<Slot>() / 8;

#[map]
static HANDSHAKE_SLOTS: Array<Slot> = Array::with_max_entries(STATE_SLOTS, 0);

/// Where a 4-tuple's state lives: its slot and its key's hash (which the seal covers).
pub struct Place {
    index: u32,
    hash: u32,
}

impl Place {
    #[inline(always)]
    pub fn of(key: &FlowKey, seed: u32) -> Self {
        let hash = jhash(&key_words(key), seed);
        Place {
            index: hash & (STATE_SLOTS - 1),
            hash,
        }
    }
}

/// The state of `key`, if its slot holds it whole.
#[inline(always)]
pub fn get(place: &Place, key: &FlowKey) -> Option<Handshake> {
    let slot = read(place)?;
    holds(&slot, place, key).then_some(slot.state)
}

/// Keeps `state` for `key`, in place of whatever the slot held.
#[inline(always)]
pub fn put(place: &Place, key: &FlowKey, state: &Handshake) {
    write(
        place,
        &Slot {
            key: *key,
            state: *state,
            seal: seal(place.hash, state),
            _pad: 0,
        },
    );
}

/// Keeps `state` for `key` unless the slot already holds `key`: then returns what it holds.
#[inline(always)]
pub fn put_new(place: &Place, key: &FlowKey, state: &Handshake) -> Option<Handshake> {
    if let Some(held) = get(place, key) {
        return Some(held);
    }
    put(place, key, state);
    None
}

/// Empties the slot if it holds `key`.
#[inline(always)]
pub fn remove(place: &Place, key: &FlowKey) {
    let Some(slot) = HANDSHAKE_SLOTS.get_ptr_mut(place.index) else {
        return;
    };
    // SAFETY: an array slot, valid for the program run; racing writers are what the seal is
    // for, and emptying one another's slot only loses state.
    unsafe {
        if same_key(&(*slot).key, key) {
            core::ptr::write_volatile(&raw mut (*slot).seal, 0);
        }
    }
}

#[inline(always)]
fn holds(slot: &Slot, place: &Place, key: &FlowKey) -> bool {
    slot.seal != 0 && same_key(&slot.key, key) && slot.seal == seal(place.hash, &slot.state)
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    key_words(a) == key_words(b)
}

/// A copy of the slot, read once, word by word (volatile: the copy is what is checked and
/// then used, so it must not be read again from a slot another CPU may be writing).
#[inline(always)]
fn read(place: &Place) -> Option<Slot> {
    let slot = HANDSHAKE_SLOTS.get_ptr(place.index)?.cast::<u64>();
    let mut words = [0u64; SLOT_WORDS];
    for (i, word) in words.iter_mut().enumerate() {
        // SAFETY: a word of an array slot, valid for the program run.
        *word = unsafe { core::ptr::read_volatile(slot.add(i)) };
    }
    // SAFETY: Slot is plain words (repr(C), no padding beyond `_pad`), any bits valid.
    Some(unsafe { core::mem::transmute::<[u64; SLOT_WORDS], Slot>(words) })
}

/// Writes the slot word by word, the seal (in the last word) last.
#[inline(always)]
fn write(place: &Place, slot: &Slot) {
    let Some(to) = HANDSHAKE_SLOTS.get_ptr_mut(place.index) else {
        return;
    };
    let to = to.cast::<u64>();
    // SAFETY: as in `read`.
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
