//! The addresses of a network namespace's interfaces, through a `NETLINK_ROUTE` socket
//! (`RTM_GETADDR` dump): like sock_diag's, the socket reads the namespace it was opened in,
//! wherever the thread that reads it is, so one opened inside another namespace and kept
//! tells that namespace's addresses without entering it again.

use std::net::IpAddr;

use anyhow::Context as _;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
};
use netlink_sys::{Socket as NetlinkSocket, SocketAddr as NetlinkAddr, protocols::NETLINK_ROUTE};

/// Addresses read from one dump at most: the rest of a namespace with more is not read.
const MAX_ADDRESSES: usize = 1024;

/// A route netlink socket that dumps its namespace's interface addresses.
pub struct AddressSocket(NetlinkSocket);

impl AddressSocket {
    /// A socket of the calling thread's network namespace.
    pub fn open() -> anyhow::Result<AddressSocket> {
        let mut socket = NetlinkSocket::new(NETLINK_ROUTE).context("route netlink socket")?;
        socket
            .bind_auto()
            .context("binding the route netlink socket")?;
        socket
            .connect(&NetlinkAddr::new(0, 0))
            .context("connecting the route netlink socket")?;
        Ok(AddressSocket(socket))
    }

    /// Every address of the namespace's interfaces (IPv4 and IPv6), at most
    /// [`MAX_ADDRESSES`]. After an error, what is left of the dump may still be queued:
    /// close the socket.
    pub fn dump(&self) -> anyhow::Result<Vec<IpAddr>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let mut packet = NetlinkMessage::new(header, request.into());
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.0
            .send(&buffer, 0)
            .context("sending the address dump request")?;
        self.receive()
    }

    /// Reads the dump's messages up to NLMSG_DONE.
    fn receive(&self) -> anyhow::Result<Vec<IpAddr>> {
        let mut addresses = Vec::new();
        let mut buffer = vec![0; 32 << 10];
        loop {
            let size = self
                .0
                .recv(&mut &mut buffer[..], 0)
                .context("reading the address dump")?;
            let mut offset = 0;
            while offset < size {
                let message =
                    <NetlinkMessage<RouteNetlinkMessage>>::deserialize(&buffer[offset..size])
                        .context("decoding an address message")?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(address)) => {
                        if addresses.len() < MAX_ADDRESSES {
                            addresses.extend(local_address(&address));
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(addresses),
                    NetlinkPayload::Error(err) => anyhow::bail!("address dump failed: {err:?}"),
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
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
