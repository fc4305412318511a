//! The kernel side, seen from userspace: the embedded object loaded and its programs attached
//! (classifiers to interfaces, tracepoints to the kernel) and taken back, the interfaces to
//! watch, the capabilities and kernel features needed, the kernel's BTF, the other network
//! namespaces the programs follow, and the shared ways
//! of reading what the programs leave: per-CPU counters, records, ring buffers read by one
//! task shape ([`reader::Reader`]).

pub mod attacher;
pub mod btf;
pub mod caps;
pub mod clsact;
pub mod counters;
pub mod interfaces;
pub mod loader;
pub mod namespaces;
pub mod packets;
pub mod reader;
pub mod records;

pub use loader::{AttachMode, LoadedObject, SYN_RECORDER, object, synack_program};
