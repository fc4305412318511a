//! The addresses of a network namespace's interfaces, through a `NETLINK_ROUTE` socket
//! (`RTM_GETADDR` dump): like sock_diag's, the socket reads the namespace it was opened in,
//! wherever the thread that reads it is, so one opened inside another namespace and kept
//! tells that namespace's addresses without entering it again.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
};
use netlink_sys::{Socket as NetlinkSocket, protocols::NETLINK_ROUTE};

use super::netlink;

/// Addresses read from one dump at most: the rest of a namespace with more is not read.
const MAX_ADDRESSES: usize = 1024;

/// A route netlink socket that dumps its namespace's interface addresses.
pub struct AddressSocket(NetlinkSocket);

impl AddressSocket {
    /// A socket of the calling thread's network namespace.
    pub fn open() -> anyhow::Result<AddressSocket> {
        netlink::open(NETLINK_ROUTE, "route netlink").map(AddressSocket)
    }

    /// Every address of the namespace's interfaces (IPv4 and IPv6), at most
    /// [`MAX_ADDRESSES`]. After an error, what is left of the dump may still be queued:
    /// close the socket.
    pub fn dump(&self) -> anyhow::Result<Vec<IpAddr>> {
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let what = "the address dump";
        netlink::send(&self.0, NLM_F_REQUEST | NLM_F_DUMP, request, what)?;
        let mut addresses = Vec::new();
        let mut buffer = Vec::new();
        netlink::receive(&self.0, &mut buffer, what, |message| {
            if let RouteNetlinkMessage::NewAddress(address) = message
                && addresses.len() < MAX_ADDRESSES
            {
                addresses.extend(local_address(&address));
            }
        })?;
        Ok(addresses)
    }
}

/// The interface's own address: `IFA_LOCAL` where given (the peer is `IFA_ADDRESS` on a
/// point-to-point link), else `IFA_ADDRESS`.
fn local_address(message: &AddressMessage) -> Option<IpAddr> {
    let find = |local: bool| {
        message
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                AddressAttribute::Local(ip) if local => Some(*ip),
                AddressAttribute::Address(ip) if !local => Some(*ip),
                _ => None,
            })
    };
    find(true).or_else(|| find(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespaces_loopback_addresses_are_read() {
        let addresses = AddressSocket::open().unwrap().dump().unwrap();
        assert!(
            addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "{addresses:?}"
        );
    }
}
