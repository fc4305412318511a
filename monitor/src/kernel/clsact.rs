//! Netlink attach mode's tc state: a clsact qdisc and direct-action `bpf` filters, which,
//! unlike tcx links, outlive the process that made them. Each daemon owns its filters, so that
//! the next daemon removes what a `kill -9` left, two daemons on one interface never take each
//! other's filter or the qdisc under it, and a filter removed from outside is noticed.
//!
//! - **Seqwatch's filters**: program name one of the object's classifiers, priority (tc's
//!   `pref`) [`PRIORITY`], and a handle laid out as [`FilterHandle`]: the owner's number, a
//!   bit saying whether a seqwatch daemon added the qdisc, and the program's slot.
//! - **Owner numbers** (1 to 65535): a daemon holds its number by binding the abstract unix
//!   socket `@seqwatch/tc-owner/N`. Abstract sockets belong to the network namespace, as the
//!   filters do, whatever pid namespace, user or mount namespace the daemon runs in, and the
//!   kernel lets go of the name when the process dies, however it dies.
//! - **Stale**: a seqwatch filter whose owner's number can be bound (its daemon is gone), or
//!   that carries this daemon's own number without being one of its attachments (a dead
//!   predecessor's: pid 1 in a container gets number 1 each time). Stale filters are deleted,
//!   with their number held so that no daemon can take it meanwhile, before each attach and
//!   whenever a hook is checked. A process that binds a number it does not own can only make a
//!   stale filter look live (it is then left in place), never a live one stale.
//! - **The qdisc**: a daemon deletes the clsact qdisc only when a seqwatch daemon added it
//!   (this one, or one whose filters say so: the bit travels from daemon to daemon) and no
//!   filter at all, seqwatch's or anyone's, is left on it. A qdisc that was there before any
//!   seqwatch daemon is never deleted.

use std::{
    collections::BTreeSet,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr as UnixAddr, UnixDatagram},
    },
};

use anyhow::{Context as _, bail};
use aya::programs::tc::{self, NlOptions, TcError};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_ECHO, NLM_F_REQUEST};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpf, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
};
use netlink_sys::protocols::NETLINK_ROUTE;
use seqwatch_common::Direction;

use crate::host::netlink;

/// The priority of every seqwatch filter: a fixed one, so that its filters are recognised
/// (tc shows it as `pref 1516`). Low, so that they run before filters added with tc's default
/// (49152 and down), as tcx programs run before every filter.
pub const PRIORITY: u16 = 0x5ec;

/// ETH_P_ALL in network byte order: the filters see every protocol (as aya attaches them).
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// Where a seqwatch filter's handle keeps what it says (`0xNNNNQSSS` in hex, as tc shows it):
/// the owner's number in the upper 16 bits, the qdisc bit (0x8000), the slot below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterHandle {
    /// The owning daemon's number, 1 to 65535.
    pub owner: u16,
    /// A seqwatch daemon added the clsact qdisc this filter is on.
    pub seqwatch_qdisc: bool,
    /// The program's place among the object's classifiers, from 1: two programs of one daemon
    /// on one hook need two handles.
    pub slot: u16,
}

const QDISC_BIT: u32 = 0x8000;
const SLOT_MASK: u32 = 0x7fff;

impl FilterHandle {
    pub fn encode(self) -> u32 {
        let qdisc = if self.seqwatch_qdisc { QDISC_BIT } else { 0 };
        (u32::from(self.owner) << 16) | qdisc | (u32::from(self.slot) & SLOT_MASK)
    }

    /// `None` for a handle seqwatch never gives (no owner or no slot).
    pub fn decode(handle: u32) -> Option<FilterHandle> {
        let owner = (handle >> 16) as u16;
        let slot = (handle & SLOT_MASK) as u16;
        (owner != 0 && slot != 0).then_some(FilterHandle {
            owner,
            seqwatch_qdisc: handle & QDISC_BIT != 0,
            slot,
        })
    }
}

/// The abstract socket whose binding holds owner number `number`, or `None` if another
/// process holds it.
fn hold(number: u16) -> anyhow::Result<Option<UnixDatagram>> {
    let name = format!("seqwatch/tc-owner/{number}");
    let address = UnixAddr::from_abstract_name(name.as_bytes())?;
    match UnixDatagram::bind_addr(&address) {
        Ok(socket) => Ok(Some(socket)),
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => Ok(None),
        Err(err) => Err(err).with_context(|| format!("binding the abstract socket @{name}")),
    }
}

/// One filter on a clsact hook, as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// The program name of a `bpf` filter.
    pub program: Option<String>,
}

/// Whose a listed filter is, from this daemon's point of view.
#[derive(Debug, PartialEq, Eq)]
enum Whose {
    /// Not seqwatch's: never touched.
    Foreign,
    /// One of this daemon's attachments.
    Mine,
    /// Carries this daemon's number but is none of its attachments: a dead predecessor's.
    MyNumberStale,
    /// Another daemon's number: stale if that number is free.
    Numbered(u16),
}

/// This daemon's side of netlink attach mode: its owner number, the object's classifiers
/// (which make a filter seqwatch's) and the interfaces whose qdisc a seqwatch daemon added.
pub struct Ownership {
    number: u16,
    /// Binding it holds `number` for as long as this process lives.
    _held: UnixDatagram,
    /// The classifier names of the loaded object, sorted: a program's slot is its place + 1.
    classifiers: Vec<String>,
    /// Interfaces whose clsact qdisc a seqwatch daemon added, as far as this daemon knows.
    seqwatch_qdiscs: BTreeSet<u32>,
}

impl Ownership {
    /// Takes the lowest free owner number in this network namespace.
    pub fn claim(mut classifiers: Vec<String>) -> anyhow::Result<Ownership> {
        classifiers.sort();
        for number in 1..=u16::MAX {
            if let Some(held) = hold(number)? {
                log::info!("netlink attach mode: owner number {number} (handles 0x{number:04x}….)");
                return Ok(Ownership {
                    number,
                    _held: held,
                    classifiers,
                    seqwatch_qdiscs: BTreeSet::new(),
                });
            }
        }
        bail!(
            "every seqwatch owner number (1 to 65535, abstract sockets @seqwatch/tc-owner/N) is \
             held in this network namespace: use --attach-mode tcx, or find the process holding \
             them (ss -xlp | grep seqwatch/tc-owner)"
        )
    }

    fn slot(&self, program: &str) -> anyhow::Result<u16> {
        let place = self
            .classifiers
            .iter()
            .position(|name| name == program)
            .with_context(|| format!("{program} is not a classifier of the eBPF object"))?;
        u16::try_from(place + 1)
            .ok()
            .filter(|slot| u32::from(*slot) <= SLOT_MASK)
            .context("too many classifiers for the filter handle's slot")
    }

    /// Makes ready to attach `program` to `hook` of `ifindex`: adds the clsact qdisc if it is
    /// missing, removes stale seqwatch filters from both hooks, and returns where the filter
    /// goes. `mine` are this daemon's attachments on the interface, (hook, handle).
    pub fn prepare(
        &mut self,
        ifindex: u32,
        hook: Direction,
        program: &str,
        mine: &[(Direction, u32)],
    ) -> anyhow::Result<NlOptions> {
        let slot = self.slot(program)?;
        if add_clsact(ifindex)? {
            self.seqwatch_qdiscs.insert(ifindex);
        } else if !has_clsact(ifindex)? {
            // An `ingress` qdisc takes the same place and would run an egress filter on
            // received packets.
            bail!("the interface has another qdisc where clsact goes (tc qdisc show dev …)");
        }
        for each in Direction::ALL {
            self.remove_stale(ifindex, each, mine)?;
        }
        let handle = FilterHandle {
            owner: self.number,
            seqwatch_qdisc: self.seqwatch_qdiscs.contains(&ifindex),
            slot,
        };
        log::debug!(
            "{program} on ifindex {ifindex} ({}): {handle:?}",
            hook.as_str()
        );
        Ok(NlOptions {
            priority: PRIORITY,
            handle: handle.encode().into(),
            classid: None,
        })
    }

    /// Whether this daemon's filter `handle` for `program` is still on `hook` of `ifindex`;
    /// removes stale seqwatch filters seen on the way. `mine` as for [`Self::prepare`].
    pub fn is_present(
        &mut self,
        ifindex: u32,
        hook: Direction,
        (program, handle): (&str, u32),
        mine: &[(Direction, u32)],
    ) -> anyhow::Result<bool> {
        let left = self.remove_stale(ifindex, hook, mine)?;
        Ok(left.iter().any(|filter| {
            filter.priority == PRIORITY
                && filter.handle == handle
                && filter.program.as_deref() == Some(program)
        }))
    }

    /// After this daemon deleted a filter from `ifindex`: deletes the clsact qdisc if a seqwatch
    /// daemon added it and no filter is left on either hook. `last` says this daemon has no
    /// other attachment there, so it forgets what it knew of the qdisc.
    pub fn release_qdisc(&mut self, ifindex: u32, last: bool) {
        match self.filters_left(ifindex) {
            Ok(left) if left.is_empty() && self.seqwatch_qdiscs.contains(&ifindex) => {
                match delete_clsact(ifindex) {
                    Ok(()) => log::debug!("deleted the clsact qdisc of ifindex {ifindex}"),
                    Err(err) => {
                        log::debug!("deleting the clsact qdisc of ifindex {ifindex}: {err:#}")
                    }
                }
                self.seqwatch_qdiscs.remove(&ifindex);
            }
            Ok(_) => {}
            // A vanished interface took its qdisc with it.
            Err(err) => log::debug!("listing the filters of ifindex {ifindex}: {err:#}"),
        }
        if last {
            self.seqwatch_qdiscs.remove(&ifindex);
        }
    }

    /// Every filter on either hook of `ifindex`.
    fn filters_left(&mut self, ifindex: u32) -> anyhow::Result<Vec<Filter>> {
        let mut left = filters(ifindex, Direction::Egress)?;
        left.extend(filters(ifindex, Direction::Ingress)?);
        self.learn_qdisc(ifindex, &left);
        Ok(left)
    }

    /// Lists `hook`'s filters, deletes the stale seqwatch ones, and returns the rest.
    fn remove_stale(
        &mut self,
        ifindex: u32,
        hook: Direction,
        mine: &[(Direction, u32)],
    ) -> anyhow::Result<Vec<Filter>> {
        let listed = filters(ifindex, hook)?;
        self.learn_qdisc(ifindex, &listed);
        let mut left = Vec::with_capacity(listed.len());
        for filter in listed {
            let stale = match self.whose(&filter, hook, mine) {
                Whose::Foreign | Whose::Mine => false,
                Whose::MyNumberStale => {
                    delete_stale(ifindex, hook, &filter);
                    true
                }
                Whose::Numbered(owner) => match hold(owner)? {
                    // Held until the filter is gone: no new daemon can take the number and
                    // attach under the same handle meanwhile.
                    Some(_held) => {
                        delete_stale(ifindex, hook, &filter);
                        true
                    }
                    None => false,
                },
            };
            if !stale {
                left.push(filter);
            }
        }
        Ok(left)
    }

    /// A seqwatch filter's handle; `None` for anyone else's filter.
    fn seqwatch_handle(&self, filter: &Filter) -> Option<FilterHandle> {
        let program = filter.program.as_ref()?;
        if filter.priority != PRIORITY || !self.classifiers.contains(program) {
            return None;
        }
        FilterHandle::decode(filter.handle)
    }

    fn whose(&self, filter: &Filter, hook: Direction, mine: &[(Direction, u32)]) -> Whose {
        let Some(handle) = self.seqwatch_handle(filter) else {
            return Whose::Foreign;
        };
        if mine.contains(&(hook, filter.handle)) {
            Whose::Mine
        } else if handle.owner == self.number {
            Whose::MyNumberStale
        } else {
            Whose::Numbered(handle.owner)
        }
    }

    /// A seqwatch filter whose handle carries the qdisc bit says a seqwatch daemon added the
    /// qdisc.
    fn learn_qdisc(&mut self, ifindex: u32, filters: &[Filter]) {
        let said = filters.iter().any(|filter| {
            self.seqwatch_handle(filter)
                .is_some_and(|handle| handle.seqwatch_qdisc)
        });
        if said {
            self.seqwatch_qdiscs.insert(ifindex);
        }
    }
}

fn delete_stale(ifindex: u32, hook: Direction, filter: &Filter) {
    let name = filter.program.as_deref().unwrap_or_default();
    match delete_filter(ifindex, hook, filter.priority, filter.handle) {
        Ok(()) => log::info!(
            "removed a stale {name} filter (handle 0x{:x}, its daemon is gone) from ifindex \
             {ifindex} ({})",
            filter.handle,
            hook.as_str()
        ),
        Err(err) => log::warn!(
            "removing a stale {name} filter (handle 0x{:x}) from ifindex {ifindex}: {err:#}",
            filter.handle
        ),
    }
}

/// The clsact parent of a hook (`ffff:fff2` ingress, `ffff:fff3` egress).
fn parent(hook: Direction) -> TcHandle {
    TcHandle {
        major: 0xffff,
        minor: match hook {
            Direction::Ingress => TcHandle::MIN_INGRESS,
            Direction::Egress => TcHandle::MIN_EGRESS,
        },
    }
}

/// Adds a clsact qdisc; `Ok(false)` if one was already there.
fn add_clsact(ifindex: u32) -> anyhow::Result<bool> {
    match tc::qdisc_add_clsact(ifindex) {
        Ok(()) => Ok(true),
        Err(TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(err) => Err(err).context("adding a clsact qdisc failed"),
    }
}

/// Whether the qdisc in the ingress/clsact place of `ifindex` is a clsact one. Asked only
/// before attaching: the kernel answers a qdisc request with a notification (hence
/// NLM_F_ECHO), which `tc monitor` and the like see too.
fn has_clsact(ifindex: u32) -> anyhow::Result<bool> {
    let message = tc_message(ifindex, TcHandle::CLSACT, 0);
    let replies = match exchange(RouteNetlinkMessage::GetQueueDiscipline(message), false) {
        Ok(replies) => replies,
        Err(err)
            if err
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
                == Some(libc::ENOENT) =>
        {
            return Ok(false);
        }
        Err(err) => return Err(err.context("reading the clsact qdisc")),
    };
    Ok(replies.iter().any(|reply| match reply {
        RouteNetlinkMessage::NewQueueDiscipline(qdisc) => qdisc
            .attributes
            .iter()
            .any(|attribute| *attribute == TcAttribute::Kind("clsact".to_owned())),
        _ => false,
    }))
}

/// Every filter on `hook` of `ifindex` (none when there is no clsact qdisc, or no such
/// interface).
pub fn filters(ifindex: u32, hook: Direction) -> anyhow::Result<Vec<Filter>> {
    let mut message = tc_message(ifindex, parent(hook), 0);
    message.header.handle = TcHandle::UNSPEC;
    let replies = exchange(RouteNetlinkMessage::GetTrafficFilter(message), true)?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewTrafficFilter(message) => Some(filter_of(&message)),
            _ => None,
        })
        .collect())
}

fn filter_of(message: &TcMessage) -> Filter {
    let program = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            TcAttribute::Options(options) => options.iter().find_map(|option| match option {
                TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
                _ => None,
            }),
            _ => None,
        });
    Filter {
        priority: (message.header.info >> 16) as u16,
        handle: message.header.handle.into(),
        program,
    }
}

/// Deletes one `bpf` filter. The priority and handle must be non-zero: with either zero the
/// kernel deletes every filter of the priority, or of the hook.
fn delete_filter(ifindex: u32, hook: Direction, priority: u16, handle: u32) -> anyhow::Result<()> {
    if priority == 0 || handle == 0 {
        bail!("refusing to delete filters by wildcard");
    }
    let info = (u32::from(priority) << 16) | u32::from(ETH_P_ALL_BE);
    let mut message = tc_message(ifindex, parent(hook), info);
    message.header.handle = handle.into();
    message
        .attributes
        .push(TcAttribute::Kind(TcFilterBpf::KIND.to_owned()));
    exchange(RouteNetlinkMessage::DelTrafficFilter(message), false)?;
    Ok(())
}

/// Deletes the clsact qdisc of `ifindex` (and with it any filter still on it); the kernel
/// refuses if the qdisc in its place is of another kind.
fn delete_clsact(ifindex: u32) -> anyhow::Result<()> {
    let mut message = tc_message(ifindex, TcHandle::CLSACT, 0);
    message.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    message
        .attributes
        .push(TcAttribute::Kind("clsact".to_owned()));
    exchange(RouteNetlinkMessage::DelQueueDiscipline(message), false)?;
    Ok(())
}

fn tc_message(ifindex: u32, parent: TcHandle, info: u32) -> TcMessage {
    let header = TcHeader {
        index: ifindex as i32,
        parent,
        info,
        ..TcHeader::default()
    };
    TcMessage::from_parts(header, Vec::new())
}

/// Sends one rtnetlink request and collects the replies: a dump's messages up to
/// NLMSG_DONE, or, for anything else, what the kernel echoes up to its acknowledgement.
fn exchange(message: RouteNetlinkMessage, dump: bool) -> anyhow::Result<Vec<RouteNetlinkMessage>> {
    let socket = netlink::open(NETLINK_ROUTE, "rtnetlink")?;
    let flags = NLM_F_REQUEST
        | if dump {
            NLM_F_DUMP
        } else {
            NLM_F_ACK | NLM_F_ECHO
        };
    netlink::send(&socket, flags, message, "an rtnetlink request")?;
    let mut replies = Vec::new();
    let mut buffer = Vec::new();
    netlink::receive(&socket, &mut buffer, "rtnetlink", |reply| {
        replies.push(reply)
    })?;
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_says_owner_qdisc_and_slot() {
        let handle = FilterHandle {
            owner: 0x1234,
            seqwatch_qdisc: true,
            slot: 2,
        };
        assert_eq!(handle.encode(), 0x1234_8002);
        assert_eq!(FilterHandle::decode(0x1234_8002), Some(handle));
        assert_eq!(
            FilterHandle::decode(0x0001_0001).map(|h| (h.owner, h.seqwatch_qdisc, h.slot)),
            Some((1, false, 1))
        );
        // What tc or the kernel gives by default is not a seqwatch handle.
        for foreign in [0, 1, 0x8000, 0x0001_0000, 0x0001_8000] {
            assert_eq!(FilterHandle::decode(foreign), None, "0x{foreign:x}");
        }
    }

    fn ownership(number: u16) -> Ownership {
        Ownership {
            number,
            _held: UnixDatagram::unbound().unwrap(),
            classifiers: vec!["synack_egress".into(), "synack_ingress".into()],
            seqwatch_qdiscs: BTreeSet::new(),
        }
    }

    fn filter(priority: u16, handle: u32, program: Option<&str>) -> Filter {
        Filter {
            priority,
            handle,
            program: program.map(str::to_owned),
        }
    }

    #[test]
    fn only_seqwatch_programs_at_seqwatch_priority_with_its_handles_are_seqwatch_filters() {
        let ours = ownership(3);
        let egress = Direction::Egress;
        let mine = [(egress, 0x0003_0001)];
        let whose = |f: Filter| ours.whose(&f, egress, &mine);
        assert_eq!(
            whose(filter(PRIORITY, 0x0003_0001, Some("synack_egress"))),
            Whose::Mine
        );
        assert_eq!(
            whose(filter(PRIORITY, 0x0003_8001, Some("synack_egress"))),
            Whose::MyNumberStale
        );
        assert_eq!(
            whose(filter(PRIORITY, 0x0007_0001, Some("synack_egress"))),
            Whose::Numbered(7)
        );
        // The same handle on the other hook is not that attachment.
        assert_eq!(
            ours.whose(
                &filter(PRIORITY, 0x0003_0001, Some("synack_egress")),
                Direction::Ingress,
                &mine
            ),
            Whose::MyNumberStale
        );
        for foreign in [
            filter(49152, 0x0007_0001, Some("synack_egress")),
            filter(PRIORITY, 0x0007_0001, Some("cilium_egress")),
            filter(PRIORITY, 0x0007_0001, None),
            filter(PRIORITY, 1, Some("synack_egress")),
        ] {
            assert_eq!(whose(foreign.clone()), Whose::Foreign, "{foreign:?}");
        }
    }

    #[test]
    fn the_qdisc_bit_is_learnt_only_from_seqwatch_filters() {
        let mut ours = ownership(1);
        ours.learn_qdisc(5, &[filter(49152, 0x0002_8001, Some("synack_egress"))]);
        ours.learn_qdisc(5, &[filter(PRIORITY, 0x0002_8001, Some("other"))]);
        assert!(!ours.seqwatch_qdiscs.contains(&5));
        ours.learn_qdisc(5, &[filter(PRIORITY, 0x0002_8001, Some("synack_ingress"))]);
        assert!(ours.seqwatch_qdiscs.contains(&5));
    }

    #[test]
    fn an_owner_number_is_held_until_its_socket_closes() {
        // A number no test daemon takes (they count up from 1).
        let number = 0xfff1;
        let held = hold(number).unwrap().expect("free");
        assert!(hold(number).unwrap().is_none(), "held twice");
        drop(held);
        assert!(hold(number).unwrap().is_some(), "free again");
    }
}
