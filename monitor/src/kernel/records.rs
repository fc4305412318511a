//! The kernel programs' records, as userspace reads them: plain old data copied out of a ring
//! buffer item, and addresses in the kernel's form (network byte order, IPv4 in the first four
//! bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use seqwatch_common::synack::FAMILY_IPV4;

/// Decodes one ring-buffer item; `None` for a short item (never expected from our programs).
pub fn decode<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: T is plain old data (every bit pattern valid) and the length was checked.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// An address in the kernel's form, of family `FAMILY_IPV4` or `FAMILY_IPV6`.
pub fn ip_address(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

pub fn socket_address(family: u8, bytes: [u8; 16], port: u16) -> SocketAddr {
    SocketAddr::new(ip_address(family, bytes), port)
}

/// The bytes of an address the kernel stored as four words in memory order.
pub fn word_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut bytes = [0; 16];
    for (chunk, word) in bytes.as_chunks_mut::<4>().0.iter_mut().zip(words) {
        *chunk = word.to_ne_bytes();
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_address_words_keep_their_byte_order() {
        let words = [u32::from_ne_bytes([10, 199, 0, 1]), 0, 0, 0];
        assert_eq!(
            socket_address(FAMILY_IPV4, word_bytes(words), 8080),
            "10.199.0.1:8080".parse::<SocketAddr>().unwrap()
        );
    }
}
