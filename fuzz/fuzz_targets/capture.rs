//! Arbitrary bytes through the pcap/pcapng reader and the SYN-ACK parser, both as a whole
//! capture file and as a single frame of every supported link type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcap_parser::Linktype;
use seqwatch::analyze::packet::parse_synack;
use seqwatch::analyze::read_frames_into;

const LINKTYPES: [Linktype; 8] = [
    Linktype::NULL,
    Linktype::ETHERNET,
    Linktype::RAW,
    Linktype::LOOP,
    Linktype::LINUX_SLL,
    Linktype::LINUX_SLL2,
    Linktype::IPV4,
    Linktype::IPV6,
];

fuzz_target!(|data: &[u8]| {
    let mut synacks = 0u64;
    let result = read_frames_into(data, |_| synacks += 1);
    if let Ok(frames) = result {
        assert!(synacks <= frames);
    }
    for linktype in LINKTYPES {
        std::hint::black_box(parse_synack(linktype, data));
    }
});
