//! Arbitrary bytes through the pcap/pcapng reader and the SYN-ACK parser, both as a whole
//! capture file and as a single frame of every supported link type. Damage is reported in
//! short single lines, never with the input's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcap_parser::Linktype;
use seqwatch::analyze::capture::{SKIPS_DESCRIBED, Skipped};
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
    let skipped = match read_frames_into(data, |_| synacks += 1) {
        Ok(capture) => {
            assert!(synacks <= capture.frames);
            capture.skipped
        }
        Err(error) => {
            assert_short_line(&error.to_string());
            error.skipped
        }
    };
    check_skipped(&skipped);
    for linktype in LINKTYPES {
        std::hint::black_box(parse_synack(linktype, data));
    }
});

fn check_skipped(skipped: &Skipped) {
    assert!(skipped.described.len() <= SKIPS_DESCRIBED);
    assert!(skipped.described.len() as u64 <= skipped.blocks);
    for block in &skipped.described {
        assert_short_line(&block.to_string());
    }
}

fn assert_short_line(message: &str) {
    assert!(!message.contains('\n') && message.len() < 300, "{message}");
}
