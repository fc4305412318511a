//! The tracker's state: a 4-way set-associative table of 256-byte sets. A 4-tuple's seeded
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
//! Two CPUs may write one way at once (two 4-tuples of one set, or both ends of one
//! handshake), and a way is several words. So each way carries a seal: a hash of its key and
//! state, written after them. A way whose seal does not match what it holds (a write torn by
//! another) reads as empty: a torn way can make the tracker miss an anomaly, never report
//! one against another 4-tuple's state.

use aya_ebpf::{macros::map, maps::Array};
use seqwatch_common::handshake::{STATE_SETS, STATE_WAYS, jhash, state_set};

use super::{ESTABLISHED, Handshake, SYN_SEEN};
use crate::packet::FlowKey;

/// Words of a key.
const KEY_WORDS: usize = 10;
const WAYS: usize = STATE_WAYS as usize;

/// One set, 256 bytes: the ways' seals first, so that an insert into a set with a free way,
/// and a lookup that misses, read one cache line; then the ways' keys and states.
#[repr(C)]
struct Set {
    /// Per way: 0 when empty, else `seal(hash of key, state)` (low half), and the protection
    /// clock's tick (`super::clock_tick`) before which no new handshake takes the way, 0 for
    /// none (high half: outside the seal, a torn one only misplaces an eviction).
    seals: [u64; WAYS],
    entries: [Entry; WAYS],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Entry {
    key: FlowKey,
    state: Handshake,
}

/// As u64 words, the way an entry is copied in and out.
const ENTRY_WORDS: usize = core::mem::size_of::<Entry>() / 8;

#[map]
static HANDSHAKE_SLOTS: Array<Set> = Array::with_max_entries(STATE_SETS, 0);

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

/// A way of a key's set, and its state: where the key's state is, or where a new one goes.
/// A plain value rather than an Option (LLVM leaves a None's payload undefined, and the
/// verifier refuses to read an undefined register): see [`Way::held`].
#[derive(Clone, Copy)]
pub struct Way {
    index: u32,
    pub state: Handshake,
}

impl Way {
    const NONE: Way = Way {
        index: STATE_WAYS,
        state: Handshake::NONE,
    };

    /// Whether a lookup found the key.
    #[inline(always)]
    pub fn held(&self) -> bool {
        self.index < STATE_WAYS
    }
}

/// Where a new handshake's state may go (see the module's admission rule); evictions in the
/// order they are preferred.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Admission {
    /// A SYN-cookie handshake's way.
    EvictCookie,
    /// The way of a SYN not answered yet (or dropped by the kernel).
    EvictUnanswered,
    /// A completed handshake's way.
    EvictCompleted,
    /// The way of an open handshake past its protection: the kernel has most likely dropped
    /// its request.
    EvictExpired,
    /// A free way.
    Free,
    /// The set holds the key already.
    Held,
    /// Every way holds a protected handshake.
    Refused,
}

/// The state of `key`, if a way of its set holds it whole.
#[inline(always)]
pub fn get(place: &Place, key: &FlowKey) -> Way {
    let Some(set) = HANDSHAKE_SLOTS.get_ptr(place.set) else {
        return Way::NONE;
    };
    for way in 0..STATE_WAYS {
        let seal = seal_word(set, way) as u32;
        if seal != 0 {
            let entry = read_entry(set, way);
            if holds(&entry, seal, place, key) {
                return Way {
                    index: way,
                    state: entry.state,
                };
            }
        }
    }
    Way::NONE
}

/// Where `key`'s state is or would go: the way that holds it, else a free one, else the way
/// of the entry that matters least (`now` gives the protection clock's tick, read only when
/// every way is protected); nothing is written.
#[inline(always)]
pub fn admit(place: &Place, key: &FlowKey, now: impl FnOnce() -> u32) -> (Admission, Way) {
    let Some(set) = HANDSHAKE_SLOTS.get_ptr(place.set) else {
        return (Admission::Refused, Way::NONE);
    };
    // Candidates, STATE_WAYS for none: a free way, the least valuable unprotected entry
    // (`eviction` says what it is), the protected one whose protection ends first.
    let (mut free, mut victim, mut eviction) = (STATE_WAYS, STATE_WAYS, Admission::Refused);
    let (mut first_to_expire, mut earliest_end) = (STATE_WAYS, u32::MAX);
    for way in 0..STATE_WAYS {
        let seal_word = seal_word(set, way);
        if seal_word as u32 == 0 {
            free = free.min(way);
            continue;
        }
        let entry = read_entry(set, way);
        if holds(&entry, seal_word as u32, place, key) {
            let held = Way {
                index: way,
                state: entry.state,
            };
            return (Admission::Held, held);
        }
        let protected_until = (seal_word >> 32) as u32;
        let kind = match entry.state.state {
            _ if protected_until != 0 => {
                if protected_until < earliest_end {
                    (first_to_expire, earliest_end) = (way, protected_until);
                }
                continue;
            }
            SYN_SEEN => Admission::EvictUnanswered,
            ESTABLISHED => Admission::EvictCompleted,
            _ => Admission::EvictCookie,
        };
        if kind < eviction {
            (victim, eviction) = (way, kind);
        }
    }
    let (admission, index) = if free < STATE_WAYS {
        (Admission::Free, free)
    } else if victim < STATE_WAYS {
        (eviction, victim)
    } else if first_to_expire < STATE_WAYS && now() >= earliest_end {
        (Admission::EvictExpired, first_to_expire)
    } else {
        (Admission::Refused, STATE_WAYS)
    };
    let way = Way {
        index,
        state: Handshake::NONE,
    };
    (admission, way)
}

/// The key a way holds (what an eviction is about to overwrite).
#[inline(always)]
pub fn key_at(place: &Place, way: &Way) -> FlowKey {
    match HANDSHAKE_SLOTS.get_ptr(place.set) {
        Some(set) => read_entry(set, way.index).key,
        None => FlowKey {
            local: [0; 2],
            remote: [0; 2],
            local_port: 0,
            remote_port: 0,
            family: 0,
        },
    }
}

/// Writes `key` and its `state` into a way.
#[inline(always)]
pub fn write(place: &Place, way: &Way, key: &FlowKey, state: &Handshake, protected_until: u32) {
    let Some(set) = HANDSHAKE_SLOTS.get_ptr_mut(place.set) else {
        return;
    };
    let index = index(way.index);
    let entry = Entry {
        key: *key,
        state: *state,
    };
    // SAFETY: Entry is plain words (repr(C), no padding).
    let words = unsafe { core::mem::transmute::<Entry, [u64; ENTRY_WORDS]>(entry) };
    // SAFETY: words of an array element, valid for the program run.
    let to = unsafe { (&raw mut (*set).entries[index]).cast::<u64>() };
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(to.add(i), word) };
    }
    seal_way(set, index, place, state, protected_until);
}

/// Keeps a new `state` for the key in the way that held it: the state's words and the seal
/// (a way another CPU gave a new key meanwhile then reads as torn: empty).
#[inline(always)]
pub fn put(place: &Place, way: &Way, state: &Handshake, protected_until: u32) {
    let Some(set) = HANDSHAKE_SLOTS.get_ptr_mut(place.set) else {
        return;
    };
    let index = index(way.index);
    // SAFETY: a way of an array element, valid for the program run.
    let to = unsafe { (&raw mut (*set).entries[index].state).cast::<u64>() };
    // SAFETY: Handshake is 16 bytes of integers without padding.
    let words = unsafe { core::mem::transmute::<Handshake, [u64; 2]>(*state) };
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(to.add(i), word) };
    }
    seal_way(set, index, place, state, protected_until);
}

/// Empties the way if it still holds `key`.
#[inline(always)]
pub fn remove(place: &Place, way: &Way, key: &FlowKey) {
    let Some(set) = HANDSHAKE_SLOTS.get_ptr_mut(place.set) else {
        return;
    };
    let index = index(way.index);
    // SAFETY: an array element, valid for the program run; racing writers are what the seal
    // is for, and emptying one another's way only loses state.
    unsafe {
        if same_key(&(*set).entries[index].key, key) {
            core::ptr::write_volatile(&raw mut (*set).seals[index], 0);
        }
    }
}

#[inline(always)]
fn holds(entry: &Entry, seal: u32, place: &Place, key: &FlowKey) -> bool {
    same_key(&entry.key, key) && seal == self::seal(place.hash, &entry.state)
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    key_words(a) == key_words(b)
}

/// A way's seal (low half; 0: empty) and protection (high half), read once.
#[inline(always)]
fn seal_word(set: *const Set, way: u32) -> u64 {
    // SAFETY: a word of an array element, valid for the program run.
    unsafe { core::ptr::read_volatile(&raw const (*set).seals[index(way)]) }
}

/// A way's entry, read once, word by word (volatile: the copy is what is checked and then
/// used, so it must not be read again from a way another CPU may be writing).
#[inline(always)]
fn read_entry(set: *const Set, way: u32) -> Entry {
    // SAFETY: words of an array element, valid for the program run.
    let from = unsafe { (&raw const (*set).entries[index(way)]).cast::<u64>() };
    let mut words = [0u64; ENTRY_WORDS];
    for (i, word) in words.iter_mut().enumerate() {
        // SAFETY: as above.
        *word = unsafe { core::ptr::read_volatile(from.add(i)) };
    }
    // SAFETY: Entry is plain words (repr(C), no padding), any bits valid.
    unsafe { core::mem::transmute::<[u64; ENTRY_WORDS], Entry>(words) }
}

/// Writes a way's seal word, after its entry.
#[inline(always)]
fn seal_way(set: *mut Set, index: usize, place: &Place, state: &Handshake, protected_until: u32) {
    let seal_word = (u64::from(protected_until) << 32) | u64::from(seal(place.hash, state));
    // SAFETY: a word of an array element, valid for the program run.
    unsafe { core::ptr::write_volatile(&raw mut (*set).seals[index & (WAYS - 1)], seal_word) };
}

/// A way's index into a set's arrays, with no bounds check left to fail (a panic path
/// would leave the verifier a function that does not end in an exit).
#[inline(always)]
fn index(way: u32) -> usize {
    way as usize & (WAYS - 1)
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
