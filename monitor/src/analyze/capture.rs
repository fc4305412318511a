//! Streaming pcap / pcapng reading, yielding link-layer frames with nanosecond timestamps.
//!
//! The framing (record and block lengths) is checked here, one block at a time, and
//! pcap-parser parses each block from a complete copy of it. So memory is one block, at most
//! `MAX_BLOCK` bytes; a pcapng block whose content is damaged but whose length framing holds
//! is skipped, and reading goes on after it; only broken framing stops reading, with the
//! byte offset and the kind of the block where it broke.

use std::fmt;
use std::io::{self, BufReader, Read};

use pcap_parser::pcapng::{
    self, Block, CB_MAGIC, DCB_MAGIC, DSB_MAGIC, EPB_MAGIC, IDB_MAGIC, ISB_MAGIC,
    InterfaceDescriptionBlock, NRB_MAGIC, OptionCode, PIB_MAGIC, SHB_MAGIC, SJE_MAGIC, SPB_MAGIC,
};
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{LegacyPcapBlock, Linktype, PcapError, parse_pcap_header};

/// The largest block or record read into memory. libpcap's largest snapshot length is
/// 256 KiB, so a packet near this size is already damage; a larger pcapng block is skipped
/// without being read, a larger pcap record stops reading (pcap has no framing to resume on).
pub const MAX_BLOCK: u32 = 16 << 20;
/// Skipped blocks described one by one; any further ones are only counted.
pub const SKIPS_DESCRIBED: usize = 10;

/// The byte-order magic of a pcapng section header, as written by the section's writer.
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// The obsolete pcapng Packet Block, still a block a reader may meet.
const OBSOLETE_PB_MAGIC: u32 = 2;
/// Block type, total length, and the total length again at the end.
const PCAPNG_FRAMING: u32 = 12;
const PCAP_FILE_HEADER: usize = 24;
const PCAP_RECORD_HEADER: usize = 16;
/// Kuznetzov's "modified" pcap adds an interface index, protocol and packet type.
const MODIFIED_PCAP_RECORD_HEADER: usize = 24;

/// One captured frame.
pub struct Frame<'a> {
    pub linktype: Linktype,
    pub ts_ns: u64,
    pub data: &'a [u8],
}

/// A capture read to its end: the frames delivered and the damaged blocks left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    pub frames: u64,
    pub skipped: Skipped,
}

/// Damaged blocks left out of a reading whose framing held around them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    pub blocks: u64,
    /// The first `SKIPS_DESCRIBED` of them.
    pub described: Vec<SkippedBlock>,
    /// Packets on an interface whose description block was skipped.
    pub packets: u64,
}

impl Skipped {
    pub fn is_empty(&self) -> bool {
        self.blocks == 0 && self.packets == 0
    }

    fn add(&mut self, block: SkippedBlock) {
        self.blocks += 1;
        if self.described.len() < SKIPS_DESCRIBED {
            self.described.push(block);
        }
    }
}

/// One damaged block that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedBlock {
    pub offset: u64,
    /// Its kind, type number and length, e.g. `name resolution block (type 0x00000004, 64 bytes)`.
    pub block: String,
    pub reason: String,
}

impl fmt::Display for SkippedBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at byte offset {}: {}: {}; skipped",
            self.offset, self.block, self.reason
        )
    }
}

/// Why reading stopped early, and where: one line, never the bytes themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureError {
    /// Byte offset of the block that could not be read.
    pub offset: u64,
    /// The block's kind and what is wrong with it.
    pub reason: String,
    /// Damaged blocks skipped before this one.
    pub skipped: Skipped,
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte offset {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for CaptureError {}

/// Calls `on_frame` for every packet in a pcap or pcapng stream. On a truncated or corrupt
/// file the frames before the bad block have been delivered.
pub fn read_frames<R: Read>(
    input: R,
    mut on_frame: impl FnMut(Frame<'_>),
) -> Result<Capture, CaptureError> {
    let mut reader = Reader {
        source: Source {
            input: BufReader::new(input),
            offset: 0,
            ahead: Vec::new(),
        },
        block: Vec::new(),
        capture: Capture::default(),
    };
    let result = reader.read(&mut on_frame);
    let capture = reader.capture;
    match result {
        Ok(()) => Ok(capture),
        Err(Stop { offset, reason }) => Err(CaptureError {
            offset,
            reason,
            skipped: capture.skipped,
        }),
    }
}

/// Reading stops: at which byte, and why.
struct Stop {
    offset: u64,
    reason: String,
}

/// Timestamp decoding of one pcapng interface.
struct Interface {
    linktype: Linktype,
    units_per_second: u64,
    offset_seconds: i64,
}

struct Reader<R> {
    source: Source<R>,
    /// The block being read, reused: it grows to the largest block read.
    block: Vec<u8>,
    capture: Capture,
}

impl<R: Read> Reader<R> {
    fn read(&mut self, on_frame: &mut impl FnMut(Frame<'_>)) -> Result<(), Stop> {
        let stop_at_start = |reason: &str| Stop {
            offset: 0,
            reason: reason.to_owned(),
        };
        let mut magic = [0u8; 4];
        match self.source.read_full(&mut magic).map_err(read_error(0))? {
            0 => return Err(stop_at_start("empty file")),
            4 => self.source.unread(&magic),
            _ => return Err(stop_at_start("file too short for a capture header")),
        }
        if u32::from_le_bytes(magic) == SHB_MAGIC {
            self.read_pcapng(on_frame)
        } else {
            self.read_pcap(on_frame)
        }
    }

    fn read_pcap(&mut self, on_frame: &mut impl FnMut(Frame<'_>)) -> Result<(), Stop> {
        let mut file_header = [0u8; PCAP_FILE_HEADER];
        let length = self
            .source
            .read_full(&mut file_header)
            .map_err(read_error(0))?;
        let Ok((_, header)) = parse_pcap_header(&file_header[..length]) else {
            let reason = match length {
                PCAP_FILE_HEADER => "not a pcap or pcapng file",
                _ => "file too short for a capture header",
            };
            return Err(Stop {
                offset: 0,
                reason: reason.to_owned(),
            });
        };
        let units_per_second: u64 = if header.is_nanosecond_precision() {
            1_000_000_000
        } else {
            1_000_000
        };
        let (record_header, parse): (usize, ParseRecord) = if header.is_modified_format() {
            (
                MODIFIED_PCAP_RECORD_HEADER,
                pcap_parser::parse_pcap_frame_modified,
            )
        } else if header.is_bigendian() {
            (PCAP_RECORD_HEADER, pcap_parser::parse_pcap_frame_be)
        } else {
            (PCAP_RECORD_HEADER, pcap_parser::parse_pcap_frame)
        };
        let big_endian = header.is_bigendian() && !header.is_modified_format();
        loop {
            let offset = self.source.offset;
            let stop = |reason: String| Stop { offset, reason };
            self.block.clear();
            match self.source.read_into(&mut self.block, record_header) {
                Ok(0) => return Ok(()),
                Ok(n) if n < record_header => {
                    return Err(stop(format!(
                        "packet record: truncated: the file ends {n} bytes into its header"
                    )));
                }
                Ok(_) => {}
                Err(error) => return Err(read_error(offset)(error)),
            }
            let caplen = read_u32(&self.block[8..12], big_endian);
            if caplen > MAX_BLOCK {
                return Err(stop(format!(
                    "packet record: captured length {caplen} is over the {MAX_BLOCK}-byte limit \
                     (a damaged record header; pcap has no framing to resume after it)"
                )));
            }
            let read = self
                .source
                .read_into(&mut self.block, caplen as usize)
                .map_err(read_error(offset))?;
            if read < caplen as usize {
                return Err(stop(format!(
                    "packet record of {caplen} bytes: truncated: the file ends {read} bytes into it"
                )));
            }
            // A record complete in memory cannot fail to parse; if it ever did, say so.
            let Ok((_, packet)) = parse(&self.block) else {
                return Err(stop("packet record: malformed".to_owned()));
            };
            let ts_ns = u64::from(packet.ts_sec) * 1_000_000_000
                + u64::from(packet.ts_usec) * (1_000_000_000 / units_per_second);
            self.capture.frames += 1;
            on_frame(Frame {
                linktype: header.network,
                ts_ns,
                data: packet.data,
            });
        }
    }

    fn read_pcapng(&mut self, on_frame: &mut impl FnMut(Frame<'_>)) -> Result<(), Stop> {
        let mut section = Section::default();
        loop {
            let offset = self.source.offset;
            let stop = |reason: String| Stop { offset, reason };
            self.block.clear();
            let header = self
                .source
                .read_into(&mut self.block, 8)
                .map_err(read_error(offset))?;
            match header {
                0 => return Ok(()),
                8 => {}
                n => {
                    return Err(stop(format!(
                        "truncated: the file ends {n} bytes into a block header"
                    )));
                }
            }
            let block_type = read_u32(&self.block[..4], section.big_endian);
            if block_type == SHB_MAGIC {
                // A new section: its own byte order, and no interfaces yet.
                let read = self
                    .source
                    .read_into(&mut self.block, 4)
                    .map_err(read_error(offset))?;
                let big_endian = (read == 4)
                    .then(|| byte_order(&self.block[8..12]))
                    .flatten()
                    .ok_or_else(|| stop("section header block: no byte-order magic".to_owned()))?;
                section = Section {
                    big_endian,
                    interfaces: Vec::new(),
                    last_ts_ns: section.last_ts_ns,
                };
            }
            let length = read_u32(&self.block[4..8], section.big_endian);
            let kind = describe(block_type, length);
            if length < PCAPNG_FRAMING || !length.is_multiple_of(4) {
                return Err(stop(format!(
                    "{kind}: not a block length (12 or more, a multiple of 4)"
                )));
            }
            if length > MAX_BLOCK {
                section.skipping(block_type);
                self.skip_oversized(offset, &kind, length, section.big_endian)?;
                continue;
            }
            let wanted = length as usize - self.block.len();
            let read = self
                .source
                .read_into(&mut self.block, wanted)
                .map_err(read_error(offset))?;
            if read < wanted {
                let into = self.block.len();
                return Err(stop(format!(
                    "{kind}: truncated: the file ends {into} bytes into it"
                )));
            }
            let trailer = read_u32(&self.block[self.block.len() - 4..], section.big_endian);
            let parsed = if section.big_endian {
                pcapng::parse_block_be(&self.block)
            } else {
                pcapng::parse_block_le(&self.block)
            };
            let damage = match parsed {
                _ if trailer != length => {
                    format!("its trailing length {trailer} differs from its leading length")
                }
                Ok((_, block)) => match section.take(block, &mut self.capture.skipped, on_frame) {
                    Ok(delivered) => {
                        self.capture.frames += delivered;
                        continue;
                    }
                    Err(reason) => reason,
                },
                Err(pcap_parser::nom::Err::Incomplete(_)) => {
                    "its content runs past its end".to_owned()
                }
                Err(_) => "its content is malformed".to_owned(),
            };
            section.skipping(block_type);
            self.skip_damaged(offset, kind, damage, trailer == length, section.big_endian)?;
        }
    }

    /// A block too large to read: skipped unread, if its framing holds.
    fn skip_oversized(
        &mut self,
        offset: u64,
        kind: &str,
        length: u32,
        big_endian: bool,
    ) -> Result<(), Stop> {
        let stop = |reason: String| Stop { offset, reason };
        let content = u64::from(length) - 4 - self.block.len() as u64;
        let skipped = self.source.skip(content).map_err(read_error(offset))?;
        let mut trailer = [0u8; 4];
        let read = self
            .source
            .read_full(&mut trailer)
            .map_err(read_error(offset))?;
        if skipped < content || read < 4 {
            let into = self.block.len() as u64 + skipped + read as u64;
            return Err(stop(format!(
                "{kind}: truncated: the file ends {into} bytes into it"
            )));
        }
        let trailer = read_u32(&trailer, big_endian);
        let (reason, framed) = if trailer == length {
            (
                format!("over the {MAX_BLOCK}-byte limit of one block, not read"),
                true,
            )
        } else {
            (
                format!("its trailing length {trailer} differs from its leading length"),
                false,
            )
        };
        self.skip_damaged(offset, kind.to_owned(), reason, framed, big_endian)
    }

    /// Skips a damaged block that has been read, when its framing holds: its trailing length
    /// agrees, or else a plausible block (or the end of the file) follows where its leading
    /// length says it ends. Otherwise the framing is lost, and reading stops there.
    fn skip_damaged(
        &mut self,
        offset: u64,
        block: String,
        reason: String,
        framed: bool,
        big_endian: bool,
    ) -> Result<(), Stop> {
        if framed || self.block_follows(big_endian).map_err(read_error(offset))? {
            self.capture.skipped.add(SkippedBlock {
                offset,
                block,
                reason,
            });
            return Ok(());
        }
        Err(Stop {
            offset,
            reason: format!("{block}: {reason}, and no block starts where it should end"),
        })
    }

    /// Whether the next bytes start a plausible block, or there are none.
    fn block_follows(&mut self, big_endian: bool) -> io::Result<bool> {
        let mut next = [0u8; 12];
        let read = self.source.read_full(&mut next)?;
        self.source.unread(&next[..read]);
        if read == 0 {
            return Ok(true);
        }
        if read < 8 {
            return Ok(false);
        }
        let block_type = read_u32(&next[..4], big_endian);
        if block_type == SHB_MAGIC {
            return Ok(read == 12 && byte_order(&next[8..12]).is_some());
        }
        let length = read_u32(&next[4..8], big_endian);
        let known = matches!(
            block_type,
            IDB_MAGIC
                | OBSOLETE_PB_MAGIC
                | SPB_MAGIC
                | NRB_MAGIC
                | ISB_MAGIC
                | EPB_MAGIC
                | SJE_MAGIC
                | DSB_MAGIC
                | CB_MAGIC
                | DCB_MAGIC
                | PIB_MAGIC
        );
        Ok(known && length >= PCAPNG_FRAMING && length.is_multiple_of(4))
    }
}

/// pcap-parser's parser of one pcap record, in the file's flavour.
type ParseRecord =
    fn(&[u8]) -> pcap_parser::nom::IResult<&[u8], LegacyPcapBlock<'_>, PcapError<&[u8]>>;

/// The state of the current pcapng section.
#[derive(Default)]
struct Section {
    big_endian: bool,
    /// In declaration order; `None` for a description block that was skipped.
    interfaces: Vec<Option<Interface>>,
    /// Simple packet blocks carry no timestamp: the last one seen stands for theirs.
    last_ts_ns: u64,
}

impl Section {
    /// Interface numbers count description blocks, skipped ones too.
    fn skipping(&mut self, block_type: u32) {
        if block_type == IDB_MAGIC {
            self.interfaces.push(None);
        }
    }

    /// Takes one parsed block: returns how many frames it delivered, or why it is damaged.
    fn take(
        &mut self,
        block: Block<'_>,
        skipped: &mut Skipped,
        on_frame: &mut impl FnMut(Frame<'_>),
    ) -> Result<u64, String> {
        let (interface, ts_ns, data) = match &block {
            Block::InterfaceDescription(idb) => {
                let interface = interface(idb, self.big_endian)?;
                self.interfaces.push(Some(interface));
                return Ok(0);
            }
            Block::EnhancedPacket(epb) => {
                let interface = self.interfaces.get(epb.if_id as usize).ok_or_else(|| {
                    format!(
                        "its packet is on interface {}, which no description declared",
                        epb.if_id
                    )
                })?;
                let units = u64::from(epb.ts_high) << 32 | u64::from(epb.ts_low);
                let ts_ns = interface.as_ref().map(|i| interface_ns(i, units));
                (interface.as_ref(), ts_ns, epb.packet_data())
            }
            Block::SimplePacket(spb) => {
                let interface = self
                    .interfaces
                    .first()
                    .ok_or("a simple packet before any interface description")?;
                (interface.as_ref(), None, spb.packet_data())
            }
            _ => return Ok(0),
        };
        let Some(interface) = interface else {
            skipped.packets += 1;
            return Ok(0);
        };
        if let Some(ts_ns) = ts_ns {
            self.last_ts_ns = ts_ns;
        }
        on_frame(Frame {
            linktype: interface.linktype,
            ts_ns: self.last_ts_ns,
            data,
        });
        Ok(1)
    }
}

/// An interface's link type and clock, from its description's options (pcapng §4.2): the
/// options are in the section's byte order, and the first of each counts.
fn interface(idb: &InterfaceDescriptionBlock<'_>, big_endian: bool) -> Result<Interface, String> {
    let mut tsresol = None;
    let mut tsoffset = None;
    for option in &idb.options {
        let value = option
            .as_bytes()
            .map_err(|_| "an option runs past its value")?;
        match option.code {
            OptionCode::EndOfOpt => break,
            OptionCode::IfTsresol if tsresol.is_none() => match value {
                [resolution] => tsresol = Some(*resolution),
                _ => return Err(format!("if_tsresol is {} bytes, not 1", value.len())),
            },
            OptionCode::IfTsoffset if tsoffset.is_none() => {
                let bytes: [u8; 8] = value
                    .try_into()
                    .map_err(|_| format!("if_tsoffset is {} bytes, not 8", value.len()))?;
                tsoffset = Some(if big_endian {
                    i64::from_be_bytes(bytes)
                } else {
                    i64::from_le_bytes(bytes)
                });
            }
            _ => {}
        }
    }
    // Without if_tsresol, microseconds.
    let tsresol = tsresol.unwrap_or(6);
    let units_per_second = units_per_second(tsresol).ok_or_else(|| {
        format!("if_tsresol {tsresol:#04x} is finer than 10^19 or 2^63 units per second")
    })?;
    Ok(Interface {
        linktype: idb.linktype,
        units_per_second,
        offset_seconds: tsoffset.unwrap_or(0),
    })
}

/// `if_tsresol`: the high bit clear, a negative power of 10 of a second; set, of 2.
fn units_per_second(tsresol: u8) -> Option<u64> {
    let exponent = u32::from(tsresol & 0x7f);
    if tsresol & 0x80 == 0 {
        10u64.checked_pow(exponent)
    } else {
        1u64.checked_shl(exponent)
    }
}

fn interface_ns(interface: &Interface, units: u64) -> u64 {
    let ns = u128::from(units) * 1_000_000_000 / u128::from(interface.units_per_second);
    let offset_ns = i128::from(interface.offset_seconds) * 1_000_000_000;
    (ns as i128 + offset_ns).clamp(0, i128::from(u64::MAX)) as u64
}

/// The byte order a section header's magic says: `Some(true)` for big-endian.
fn byte_order(magic: &[u8]) -> Option<bool> {
    let magic: [u8; 4] = magic.try_into().ok()?;
    match (u32::from_le_bytes(magic), u32::from_be_bytes(magic)) {
        (BYTE_ORDER_MAGIC, _) => Some(false),
        (_, BYTE_ORDER_MAGIC) => Some(true),
        _ => None,
    }
}

fn read_u32(bytes: &[u8], big_endian: bool) -> u32 {
    let bytes: [u8; 4] = bytes[..4].try_into().expect("four bytes");
    if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    }
}

/// `enhanced packet block (type 0x00000006, 84 bytes)`.
fn describe(block_type: u32, length: u32) -> String {
    let name = match block_type {
        SHB_MAGIC => "section header block",
        IDB_MAGIC => "interface description block",
        OBSOLETE_PB_MAGIC => "packet block (obsolete)",
        SPB_MAGIC => "simple packet block",
        NRB_MAGIC => "name resolution block",
        ISB_MAGIC => "interface statistics block",
        EPB_MAGIC => "enhanced packet block",
        SJE_MAGIC => "systemd journal export block",
        DSB_MAGIC => "decryption secrets block",
        CB_MAGIC | DCB_MAGIC => "custom block",
        PIB_MAGIC => "process information block",
        _ => "block",
    };
    format!("{name} (type {block_type:#010x}, {length} bytes)")
}

fn read_error(offset: u64) -> impl Fn(io::Error) -> Stop {
    move |error| Stop {
        offset,
        reason: format!("read error: {error}"),
    }
}

/// The input, with the offset of the next byte, and bytes read ahead put back.
struct Source<R> {
    input: BufReader<R>,
    offset: u64,
    ahead: Vec<u8>,
}

impl<R: Read> Source<R> {
    /// Fills `buf`, or as much of it as the input has left.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = self.ahead.len().min(buf.len());
        buf[..filled].copy_from_slice(&self.ahead[..filled]);
        self.ahead.drain(..filled);
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.offset += filled as u64;
        Ok(filled)
    }

    /// Appends `count` bytes to `buf`, or as many as the input has left.
    fn read_into(&mut self, buf: &mut Vec<u8>, count: usize) -> io::Result<usize> {
        let start = buf.len();
        buf.resize(start + count, 0);
        let read = self.read_full(&mut buf[start..])?;
        buf.truncate(start + read);
        Ok(read)
    }

    /// Passes over `count` bytes without keeping them; returns how many there were.
    fn skip(&mut self, count: u64) -> io::Result<u64> {
        let from_ahead = self.ahead.len().min(count.try_into().unwrap_or(usize::MAX));
        self.ahead.drain(..from_ahead);
        let rest = count - from_ahead as u64;
        let skipped =
            from_ahead as u64 + io::copy(&mut (&mut self.input).take(rest), &mut io::sink())?;
        self.offset += skipped;
        Ok(skipped)
    }

    /// Puts bytes just read back, to be read again.
    fn unread(&mut self, bytes: &[u8]) {
        self.ahead.splice(0..0, bytes.iter().copied());
        self.offset -= bytes.len() as u64;
    }
}
