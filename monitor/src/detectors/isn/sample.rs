//! One SYN-ACK as the sampler's userspace half sees it: the kernel's record decoded (its TCP
//! options summarized), counted per interface, and written to the sample log.

use std::{collections::HashMap, io::Write as _, net::SocketAddr, sync::Arc};

use etherparse::{TcpOptionElement, TcpOptionsIterator};
use prometheus::{IntCounter, IntCounterVec};
use seqwatch_common::{
    Direction,
    synack::{MAX_TCP_OPTIONS, SynAckRecord},
};
use serde::Serialize;

use crate::{
    kernel::{attacher::InterfaceNames, records::ip_address},
    scorer::{IsnObservation, TcpOptionsSummary},
};

/// One SYN-ACK, decoded. Also the line format of `--sample-log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub direction: &'static str,
    /// The SYN-ACK's sender: the service whose ISN this is.
    pub server: SocketAddr,
    pub client: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub ttl: u8,
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub tsval: Option<u32>,
    pub options_malformed: bool,
}

impl Sample {
    pub fn from_record(record: &SynAckRecord) -> Self {
        let saddr = ip_address(record.family, record.saddr);
        let daddr = ip_address(record.family, record.daddr);
        let options_len = usize::from(record.options_len).min(MAX_TCP_OPTIONS);
        let mut sample = Sample {
            ts_ns: record.ts_ns,
            ifindex: record.ifindex,
            direction: Direction::from_u8(record.direction)
                .unwrap_or(Direction::Egress)
                .as_str(),
            server: SocketAddr::new(saddr, record.sport),
            client: SocketAddr::new(daddr, record.dport),
            seq: record.seq,
            ack: record.ack,
            window: record.window,
            ttl: record.ttl,
            mss: None,
            window_scale: None,
            sack_permitted: false,
            tsval: None,
            options_malformed: false,
        };
        sample.summarize_options(&record.options[..options_len]);
        sample
    }

    /// Keeps the options the scorer uses; a malformed list keeps what came before the fault.
    fn summarize_options(&mut self, options: &[u8]) {
        for option in TcpOptionsIterator::from_slice(options) {
            match option {
                Ok(TcpOptionElement::MaximumSegmentSize(mss)) => self.mss = Some(mss),
                Ok(TcpOptionElement::WindowScale(shift)) => self.window_scale = Some(shift),
                Ok(TcpOptionElement::SelectiveAcknowledgementPermitted) => {
                    self.sack_permitted = true
                }
                Ok(TcpOptionElement::Timestamp(tsval, _)) => self.tsval = Some(tsval),
                Ok(_) => {}
                Err(_) => {
                    self.options_malformed = true;
                    return;
                }
            }
        }
    }

    pub(super) fn observation(&self, syncookies: bool) -> IsnObservation {
        IsnObservation {
            isn: self.seq,
            ts_ns: self.ts_ns,
            server: self.server,
            client: self.client,
            peer_isn: self.ack.wrapping_sub(1),
            options: TcpOptionsSummary {
                mss: self.mss,
                wscale: self.window_scale,
                sack_permitted: self.sack_permitted,
                tsval: self.tsval,
            },
            syncookies,
        }
    }
}

/// Counts samples per interface and direction; interface names come from the attacher.
/// The counter handles are kept (keyed by the kernel's ifindex, never by packet contents), the
/// last one used in front: looking the labels up in the metric family, or even hashing the
/// key, for every sample cost more than the rest of the sample's handling but scoring.
pub struct SampleCounter {
    family: IntCounterVec,
    interfaces: InterfaceNames,
    names: Arc<HashMap<u32, String>>,
    handles: HashMap<HandleKey, IntCounter>,
    last: Option<(HandleKey, IntCounter)>,
}

/// Interface index and direction.
type HandleKey = (u32, &'static str);

impl SampleCounter {
    pub fn new(family: IntCounterVec, interfaces: InterfaceNames) -> Self {
        SampleCounter {
            family,
            names: interfaces.current(),
            interfaces,
            handles: HashMap::new(),
            last: None,
        }
    }

    /// Takes the interfaces' names of the moment (once per read of the rings): the handles
    /// are made again if any changed, and the series of an interface gone (or renamed) are
    /// removed, as a container host's veths come and go with their random names.
    pub fn update_names(&mut self) {
        let names = self.interfaces.current();
        if Arc::ptr_eq(&names, &self.names) {
            return;
        }
        for (index, name) in self.names.iter() {
            if names.get(index) != Some(name) {
                for direction in Direction::ALL {
                    let _ = self
                        .family
                        .remove_label_values(&[name.as_str(), direction.as_str()]);
                }
            }
        }
        self.names = names;
        self.handles.clear();
        self.last = None;
    }

    pub fn count(&mut self, sample: &Sample) {
        let key = (sample.ifindex, sample.direction);
        match &self.last {
            Some((last, counter)) if *last == key => counter.inc(),
            _ => {
                let (names, family) = (&self.names, &self.family);
                let counter = self.handles.entry(key).or_insert_with(|| {
                    let interface = names.get(&key.0).map_or("unknown", String::as_str);
                    family.with_label_values(&[interface, key.1])
                });
                counter.inc();
                self.last = Some((key, counter.clone()));
            }
        }
    }
}

/// Writes every sample as one JSON line (for tests, and for offline analysis).
pub struct SampleLog(std::io::BufWriter<std::fs::File>);

impl SampleLog {
    pub fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .map_err(|err| anyhow::anyhow!("cannot create sample log {}: {err}", path.display()))?;
        Ok(SampleLog(std::io::BufWriter::new(file)))
    }

    pub fn write(&mut self, sample: &Sample) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.0, sample)?;
        self.0.write_all(b"\n")?;
        Ok(())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.0.flush()?)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use prometheus::{Opts, core::Collector as _};
    use seqwatch_common::synack::{FAMILY_IPV4, FAMILY_IPV6};

    use super::*;

    /// A record from 192.0.2.1:`sport` to 198.51.100.2:40000 (also used by the service table's
    /// tests).
    pub(in crate::detectors::isn) fn record(
        family: u8,
        sport: u16,
        options: &[u8],
    ) -> SynAckRecord {
        let mut record = SynAckRecord {
            ts_ns: 5,
            saddr: [0; 16],
            daddr: [0; 16],
            ifindex: 3,
            seq: 0xdead_beef,
            ack: 1_001,
            sport,
            dport: 40_000,
            window: 65_535,
            family,
            direction: Direction::Ingress as u8,
            ttl: 64,
            options_len: options.len() as u8,
            options: [0; MAX_TCP_OPTIONS],
            _pad: [0; 2],
        };
        record.options[..options.len()].copy_from_slice(options);
        record.saddr[..4].copy_from_slice(&[192, 0, 2, 1]);
        record.daddr[..4].copy_from_slice(&[198, 51, 100, 2]);
        record
    }

    #[test]
    fn decodes_an_ipv4_record_and_its_options() {
        let options = [
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let sample = Sample::from_record(&record(FAMILY_IPV4, 443, &options));
        assert_eq!(sample.server, "192.0.2.1:443".parse().unwrap());
        assert_eq!(sample.client, "198.51.100.2:40000".parse().unwrap());
        assert_eq!(sample.direction, "ingress");
        assert_eq!(
            (sample.mss, sample.window_scale, sample.tsval),
            (Some(1460), Some(7), Some(9))
        );
        assert!(sample.sack_permitted && !sample.options_malformed);
        assert_eq!(sample.observation(false).peer_isn, 1_000);
    }

    #[test]
    fn decodes_ipv6_addresses_whole() {
        let mut raw = record(FAMILY_IPV6, 22, &[]);
        raw.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let sample = Sample::from_record(&raw);
        assert_eq!(sample.server, "[::1]:22".parse().unwrap());
        assert_eq!(sample.mss, None);
    }

    /// A length the kernel would never send is clamped, not trusted.
    #[test]
    fn an_overlong_options_length_is_clamped() {
        let mut raw = record(FAMILY_IPV4, 80, &[1; 40]);
        raw.options_len = 255;
        assert!(!Sample::from_record(&raw).options_malformed);
    }

    #[test]
    fn samples_are_counted_under_the_interface_name_of_the_moment_and_forgotten_with_it() {
        let family = IntCounterVec::new(
            Opts::new("samples", "Samples."),
            &["interface", "direction"],
        )
        .unwrap();
        let interfaces = InterfaceNames::default();
        let mut counter = SampleCounter::new(family.clone(), interfaces.clone());
        let sample = Sample::from_record(&record(FAMILY_IPV4, 80, &[]));
        counter.count(&sample);
        interfaces.publish(&HashMap::from([(sample.ifindex, "eth0".to_owned())]));
        counter.update_names();
        counter.count(&sample);
        counter.count(&sample);
        interfaces.publish(&HashMap::new());
        counter.update_names();
        counter.count(&sample);
        let series: Vec<(String, u64)> = family.collect()[0]
            .get_metric()
            .iter()
            .map(|metric| {
                let interface = metric.get_label()[1].value().to_owned();
                (interface, metric.get_counter().value() as u64)
            })
            .collect();
        // eth0's series went with it: a vanished interface leaves none behind.
        assert_eq!(series, [("unknown".to_owned(), 2)]);
    }
}
