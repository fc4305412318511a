#![no_std]
// The library target exists so that `seqwatch` can name this crate as a build-dependency
// (aya-build then builds the binary target for bpfel-unknown-none).
