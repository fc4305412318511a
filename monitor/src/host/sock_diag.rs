//! The kernel's own socket table, through sock_diag (inet_diag) netlink: every TCP socket of
//! this network namespace, IPv4 and IPv6, with its owner (uid, cgroup id, socket inode) and,
//! for a listener, its accept queue (`idiag_rqueue`), backlog (`idiag_wqueue`) and drop
//! counter (`SK_MEMINFO_DROPS`, which the kernel's `tcp_listendrop` bumps for every SYN or
//! handshake the listener drops, SYN queue or accept queue). Request sockets (a listener's
//! SYN queue, `TCP_NEW_SYN_RECV`) are dumped too and come back in state `SYN_RECV`.

use std::net::SocketAddr;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, Nla as _};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket as NetlinkSocket, protocols::NETLINK_SOCK_DIAG};

use super::netlink;

/// `TCP_NEW_SYN_RECV` (include/net/tcp_states.h): request sockets, dumped as SYN_RECV.
const TCP_NEW_SYN_RECV: u32 = 12;
/// `INET_DIAG_CGROUP_ID` (5.7+): the socket's cgroup v2 id, sent unasked.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// TCP states as inet_diag reports them (include/net/tcp_states.h).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_RECV: u8 = 3;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LISTEN: u8 = 10;
}

/// One socket of the dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The owner's uid (the creator's fsuid; 0 for TIME_WAIT and request sockets).
    pub uid: u32,
    /// 0 until the socket has a file: request sockets, connections still in an accept queue,
    /// TIME_WAIT and orphans.
    pub inode: u32,
    /// A listener: connections in its accept queue. Otherwise: unread bytes.
    pub rqueue: u32,
    /// A listener: its backlog (the accept queue holds one more). Otherwise: unsent bytes.
    pub wqueue: u32,
    /// The socket's cgroup v2 id, where the kernel reports it.
    pub cgroup_id: Option<u64>,
    /// SYNs and handshakes dropped (listeners), where the kernel reports it.
    pub drops: Option<u32>,
}

/// Every TCP socket of this process's network namespace, IPv4 then IPv6.
pub fn dump_tcp() -> anyhow::Result<Vec<TcpSocket>> {
    DiagSocket::open()?.dump_tcp()
}

/// The addresses TCP sockets of this namespace listen on (the kernel walks only its
/// listening sockets).
pub fn dump_listeners() -> anyhow::Result<Vec<SocketAddr>> {
    let listeners = dump(StateFlags::LISTEN)?;
    Ok(listeners.into_iter().map(|socket| socket.local).collect())
}

fn dump(states: StateFlags) -> anyhow::Result<Vec<TcpSocket>> {
    DiagSocket::open()?.dump(states)
}

/// A sock_diag socket: it reads the table of the network namespace it was opened in, wherever
/// the thread that reads it is.
pub struct DiagSocket(NetlinkSocket);

impl DiagSocket {
    /// A socket of the calling thread's network namespace.
    pub fn open() -> anyhow::Result<DiagSocket> {
        netlink::open(NETLINK_SOCK_DIAG, "sock_diag").map(DiagSocket)
    }

    /// Every TCP socket of the socket's namespace, as [`dump_tcp`]. After an error, what is
    /// left of the dump may still be queued: close the socket.
    pub fn dump_tcp(&self) -> anyhow::Result<Vec<TcpSocket>> {
        self.dump(StateFlags::from_bits_retain(
            StateFlags::all().bits() | 1 << TCP_NEW_SYN_RECV,
        ))
    }

    /// The listeners only: the kernel then walks its listening hash table alone, not the
    /// established one (a table of the whole host, as large as its memory allows, unless the
    /// namespace was made with its own: `net.ipv4.tcp_child_ehash_entries`), which it walks
    /// bucket by bucket for any other state, whatever the namespace holds.
    pub fn dump_listening(&self) -> anyhow::Result<Vec<TcpSocket>> {
        self.dump(StateFlags::LISTEN)
    }

    /// What waits on listeners: request sockets (SYN queues) and the connections established
    /// or closing but not accepted yet (which have no inode), among every other connection in
    /// those states.
    pub fn dump_handshakes(&self) -> anyhow::Result<Vec<TcpSocket>> {
        self.dump(StateFlags::from_bits_retain(
            (StateFlags::SYN_RECV | StateFlags::ESTABLISHED | StateFlags::CLOSE_WAIT).bits()
                | 1 << TCP_NEW_SYN_RECV,
        ))
    }

    fn dump(&self, states: StateFlags) -> anyhow::Result<Vec<TcpSocket>> {
        let mut sockets = Vec::new();
        // Received into without being zeroed first (its spare capacity).
        let mut buffer = Vec::with_capacity(64 << 10);
        for family in [AF_INET, AF_INET6] {
            request(&self.0, family, states.clone())?;
            receive(&self.0, &mut buffer, &mut sockets)?;
        }
        Ok(sockets)
    }
}

fn request(socket: &NetlinkSocket, family: u8, states: StateFlags) -> anyhow::Result<()> {
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::SKMEMINFO,
        states,
        socket_id: if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        },
    });
    netlink::send(
        socket,
        NLM_F_REQUEST | NLM_F_DUMP,
        request,
        "the sock_diag dump request",
    )
}

/// Reads the dump's messages up to NLMSG_DONE.
fn receive(
    socket: &NetlinkSocket,
    buffer: &mut Vec<u8>,
    sockets: &mut Vec<TcpSocket>,
) -> anyhow::Result<()> {
    netlink::receive(socket, buffer, "the sock_diag dump", |message| {
        if let SockDiagMessage::InetResponse(response) = message {
            sockets.push(TcpSocket::from_response(&response));
        }
    })
}

impl TcpSocket {
    fn from_response(response: &InetResponse) -> TcpSocket {
        let header = &response.header;
        let id = &header.socket_id;
        let mut socket = TcpSocket {
            state: header.state,
            local: SocketAddr::new(id.source_address, id.source_port),
            remote: SocketAddr::new(id.destination_address, id.destination_port),
            uid: header.uid,
            inode: header.inode,
            rqueue: header.recv_queue,
            wqueue: header.send_queue,
            cgroup_id: None,
            drops: None,
        };
        for nla in &response.nlas {
            match nla {
                Nla::MemInfo(meminfo) => socket.drops = Some(meminfo.drops),
                Nla::Other(other) if other.kind() == INET_DIAG_CGROUP_ID => {
                    let mut value = [0u8; 8];
                    if other.value_len() == value.len() {
                        other.emit_value(&mut value);
                        socket.cgroup_id = Some(u64::from_ne_bytes(value));
                    }
                }
                _ => {}
            }
        }
        socket
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn a_listener_of_this_process_is_in_the_dump_with_its_owner() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sockets = dump_tcp().unwrap();
        let found = sockets
            .iter()
            .find(|s| s.state == state::LISTEN && s.local.port() == port)
            .expect("the listener");
        assert_eq!(found.uid, nix::unistd::geteuid().as_raw());
        assert_ne!(found.inode, 0);
        assert_eq!(found.rqueue, 0);
        assert_eq!(found.wqueue, 128, "std's backlog");
        assert_eq!(found.drops, Some(0));
        assert!(
            dump_listeners()
                .unwrap()
                .contains(&listener.local_addr().unwrap())
        );
    }
}
