//! One netlink exchange, whatever the family (sock_diag, rtnetlink): a socket of the calling
//! thread's network namespace, a request sent on it, and its replies read up to the end of a
//! dump or the kernel's acknowledgement.

use anyhow::{Context as _, bail};
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

/// A socket of `protocol` (`NETLINK_SOCK_DIAG`, `NETLINK_ROUTE`), bound and connected to the
/// kernel; it keeps speaking to the namespace it was opened in. `what` names it in errors.
pub fn open(protocol: isize, what: &str) -> anyhow::Result<Socket> {
    let mut socket = Socket::new(protocol).with_context(|| format!("{what} socket"))?;
    socket
        .bind_auto()
        .with_context(|| format!("binding the {what} socket"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .with_context(|| format!("connecting the {what} socket"))?;
    Ok(socket)
}

/// Sends one request with the header flags `flags` (`NLM_F_REQUEST` and the rest).
pub fn send<M: NetlinkSerializable>(
    socket: &Socket,
    flags: u16,
    message: M,
    what: &str,
) -> anyhow::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut buffer = vec![0; packet.buffer_len()];
    packet.serialize(&mut buffer);
    socket
        .send(&buffer, 0)
        .with_context(|| format!("sending {what}"))?;
    Ok(())
}

/// Hands every reply to `each` up to NLMSG_DONE (a dump) or the acknowledgement (an error
/// message without a code); a kernel error is returned. `buffer` is received into without
/// being zeroed first (its spare capacity), and can be kept for the next exchange. After an
/// error, what is left of the replies may still be queued: close the socket.
pub fn receive<M: NetlinkDeserializable>(
    socket: &Socket,
    buffer: &mut Vec<u8>,
    what: &str,
    mut each: impl FnMut(M),
) -> anyhow::Result<()> {
    if buffer.capacity() == 0 {
        buffer.reserve(64 << 10);
    }
    loop {
        buffer.clear();
        let size = socket
            .recv(buffer, 0)
            .with_context(|| format!("reading {what}"))?
            .min(buffer.len());
        let mut offset = 0;
        while offset < size {
            let message = <NetlinkMessage<M>>::deserialize(&buffer[offset..size])
                .with_context(|| format!("decoding {what}"))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(inner) => each(inner),
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(err) if err.code.is_none() => return Ok(()),
                NetlinkPayload::Error(err) => {
                    return Err(anyhow::Error::from(err.to_io()).context(format!("{what} failed")));
                }
                _ => {}
            }
            if length == 0 {
                bail!("{what}: a message of length 0");
            }
            offset += length;
        }
    }
}
