//! Streaming pcap / pcapng reading over `pcap-parser`, yielding link-layer frames with
//! nanosecond timestamps, and stopping with the byte offset of the first bad block.

use std::fmt;
use std::io::Read;

use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{Linktype, PcapBlockOwned, PcapError, create_reader};

const INITIAL_BUFFER: usize = 1 << 20;
/// Largest block we accept; pcapng allows 4 GiB but no real capture gets near this.
const MAX_BUFFER: usize = 256 << 20;

/// One captured frame.
pub struct Frame<'a> {
    pub linktype: Linktype,
    pub ts_ns: u64,
    pub data: &'a [u8],
}

/// Why reading stopped early, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureError {
    /// Byte offset of the block that could not be read.
    pub offset: u64,
    pub reason: String,
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte offset {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for CaptureError {}

/// Timestamp decoding of one pcapng interface.
struct Interface {
    linktype: Linktype,
    units_per_second: u64,
    offset_seconds: i64,
}

/// Calls `on_frame` for every packet in a pcap or pcapng stream and returns how many there
/// were. On a truncated or corrupt file the frames before the bad block have been delivered.
pub fn read_frames<R: Read + Send>(
    input: R,
    mut on_frame: impl FnMut(Frame<'_>),
) -> Result<u64, CaptureError> {
    let mut reader = create_reader(INITIAL_BUFFER, input).map_err(|e| CaptureError {
        offset: 0,
        reason: match e {
            PcapError::Eof => "empty file".to_owned(),
            PcapError::HeaderNotRecognized => "not a pcap or pcapng file".to_owned(),
            PcapError::Incomplete(_) => "file too short for a capture header".to_owned(),
            other => format!("unreadable capture header: {other}"),
        },
    })?;
    let mut capacity = INITIAL_BUFFER;
    let mut legacy: Option<(Linktype, u64)> = None;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut last_ts_ns = 0;
    let mut frames = 0;
    loop {
        let offset = reader.consumed() as u64;
        let fail = |reason: String| CaptureError { offset, reason };
        match reader.next() {
            Ok((length, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(header) => {
                        let units = if header.is_nanosecond_precision() {
                            1_000_000_000
                        } else {
                            1_000_000
                        };
                        legacy = Some((header.network, units));
                    }
                    PcapBlockOwned::Legacy(packet) => {
                        let (linktype, units) =
                            legacy.ok_or_else(|| fail("packet before the file header".into()))?;
                        last_ts_ns = u64::from(packet.ts_sec) * 1_000_000_000
                            + u64::from(packet.ts_usec) * (1_000_000_000 / units);
                        frames += 1;
                        on_frame(Frame {
                            linktype,
                            ts_ns: last_ts_ns,
                            data: packet.data,
                        });
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        let units_per_second = idb.ts_resolution().ok_or_else(|| {
                            fail(format!("unsupported if_tsresol {:#x}", idb.if_tsresol))
                        })?;
                        interfaces.push(Interface {
                            linktype: idb.linktype,
                            units_per_second,
                            offset_seconds: idb.ts_offset(),
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let interface = interfaces.get(epb.if_id as usize).ok_or_else(|| {
                            fail(format!("packet on undeclared interface {}", epb.if_id))
                        })?;
                        let units = u64::from(epb.ts_high) << 32 | u64::from(epb.ts_low);
                        last_ts_ns = interface_ns(interface, units);
                        frames += 1;
                        on_frame(Frame {
                            linktype: interface.linktype,
                            ts_ns: last_ts_ns,
                            data: epb.packet_data(),
                        });
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        let interface = interfaces
                            .first()
                            .ok_or_else(|| fail("simple packet before any interface".into()))?;
                        frames += 1;
                        // Simple packet blocks carry no timestamp: keep the last one seen.
                        on_frame(Frame {
                            linktype: interface.linktype,
                            ts_ns: last_ts_ns,
                            data: spb.packet_data(),
                        });
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(length);
            }
            Err(PcapError::Eof) => return Ok(frames),
            Err(PcapError::Incomplete(_)) => reader
                .refill()
                .map_err(|e| fail(format!("read error: {e}")))?,
            Err(PcapError::BufferTooSmall) if capacity < MAX_BUFFER => {
                capacity *= 2;
                reader.grow(capacity);
                reader
                    .refill()
                    .map_err(|e| fail(format!("read error: {e}")))?;
            }
            Err(PcapError::BufferTooSmall) => {
                return Err(fail(format!("block larger than {MAX_BUFFER} bytes")));
            }
            Err(PcapError::UnexpectedEof) => {
                return Err(fail("truncated: the file ends inside this block".into()));
            }
            Err(PcapError::ReadError) => return Err(fail("read error".into())),
            Err(e) => return Err(fail(format!("corrupt block ({e})"))),
        }
    }
}

fn interface_ns(interface: &Interface, units: u64) -> u64 {
    let ns = u128::from(units) * 1_000_000_000 / u128::from(interface.units_per_second);
    let offset_ns = i128::from(interface.offset_seconds) * 1_000_000_000;
    (ns as i128 + offset_ns).clamp(0, i128::from(u64::MAX)) as u64
}
