//! Which interfaces to watch, and a stream of changes from rtnetlink so that interfaces that
//! appear later are attached and ones that vanish are forgotten.

use std::collections::BTreeMap;

use futures_util::{StreamExt as _, TryStreamExt as _, stream::BoxStream};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{MulticastGroup, new_connection, new_multicast_connection};

/// An interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub loopback: bool,
    /// Its peer is in another network namespace: this host's end of a container's veth.
    pub faces_other_netns: bool,
}

/// Either every up, non-loopback interface, or exactly the named ones.
#[derive(Clone, Debug)]
pub enum Selection {
    AllUp,
    Named(Vec<String>),
}

impl Selection {
    pub fn wants(&self, interface: &Interface) -> bool {
        match self {
            Selection::AllUp => interface.up && !interface.loopback,
            Selection::Named(names) => names.contains(&interface.name),
        }
    }
}

/// Every interface of this network namespace, by index.
pub async fn list() -> anyhow::Result<BTreeMap<u32, Interface>> {
    let (connection, handle, _) = new_connection()?;
    let task = tokio::spawn(connection);
    let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    task.abort();
    Ok(links
        .iter()
        .filter_map(interface_of)
        .map(|interface| (interface.index, interface))
        .collect())
}

/// Link events; each one means "the interface list may have changed".
pub struct LinkEvents {
    events: BoxStream<'static, ()>,
    _connection: tokio::task::JoinHandle<()>,
}

impl LinkEvents {
    /// Subscribe before the first listing, so that nothing between the two is missed.
    pub fn subscribe() -> anyhow::Result<Self> {
        let (connection, _handle, messages) = new_multicast_connection(&[MulticastGroup::Link])?;
        Ok(LinkEvents {
            events: messages.map(|_| ()).boxed(),
            _connection: tokio::spawn(connection),
        })
    }

    /// Waits for the next link event; `None` if the netlink socket closed.
    pub async fn next(&mut self) -> Option<()> {
        self.events.next().await
    }
}

fn interface_of(message: &LinkMessage) -> Option<Interface> {
    let attributes = &message.attributes;
    let name = attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })?;
    let flags = message.header.flags;
    Some(Interface {
        index: message.header.index,
        name,
        up: flags.contains(LinkFlags::Up),
        loopback: flags.contains(LinkFlags::Loopback),
        faces_other_netns: attributes
            .iter()
            .any(|attribute| matches!(attribute, LinkAttribute::LinkNetNsId(_))),
    })
}
