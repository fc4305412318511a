//! Traffic and per-namespace state in a lab: listeners (one whose process exits once it
//! accepts too), connections (TCP Fast Open ones too), crafted segments and the routes that
//! make spoofed ones land, TcpExt counters and sysctls of one namespace.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Mutex,
        atomic::{AtomicU8, Ordering},
    },
    thread,
    time::Duration,
};

use nix::{
    sys::{
        signal::{Signal, kill},
        socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket,
            sockopt::TcpFastOpenConnect,
        },
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Pid, fork},
};
use seqwatch::lab::{Crafter, Lab, LabOptions, Segment};

/// Forking copies every open descriptor: a listener of one test must not end up in the child
/// of another, or it would stay open after its own child exits.
static FORK: Mutex<()> = Mutex::new(());

/// A real listener in `ns` owned by a child process that exits as soon as it accepts a
/// connection (the only copy of the listener is the child's, so its exit closes it).
pub fn serve_once_then_exit(lab: &Lab, ns: &str, addr: SocketAddr) -> OnceServer {
    let _fork = FORK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let listener = lab
        .run_in(ns, || TcpListener::bind(addr))
        .expect("bind the child's listener");
    // SAFETY: the child calls only accept(2) and _exit(2), both async-signal-safe.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => unsafe {
            libc::accept(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            libc::_exit(1)
        },
        ForkResult::Parent { child } => OnceServer {
            pid: child,
            reaped: false,
        },
    }
}

/// The child of [`serve_once_then_exit`]; killed and reaped on drop if it has not exited.
pub struct OnceServer {
    pub pid: Pid,
    reaped: bool,
}

impl OnceServer {
    /// Reaps the child once it exits, within `limit`; after it, kills and reaps it and
    /// returns false (a handshake that never completed leaves it waiting).
    pub fn reap_within(&mut self, limit: Duration) -> bool {
        let exited = crate::wait_for(limit, || {
            !matches!(
                waitpid(self.pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        // Reaped by the wait if it exited: its pid may be another process's by now.
        self.reaped |= exited;
        self.kill();
        exited
    }

    fn kill(&mut self) {
        if !std::mem::replace(&mut self.reaped, true) {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

impl Drop for OnceServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real listener in `ns` that accepts and closes every connection, until the process ends.
pub fn listen(lab: &Lab, ns: &str, addr: SocketAddr) {
    let listener = lab
        .run_in(ns, || TcpListener::bind(addr))
        .expect("bind the test listener");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            drop(stream);
        }
    });
}

/// A listener in the lab's server namespace that keeps every accepted connection open until
/// the process ends, so a completed handshake stays so.
pub fn listen_and_hold(lab: &Lab, addr: SocketAddr) {
    let listener = lab
        .run_in(&lab.server_ns, || TcpListener::bind(addr))
        .expect("bind the holding listener");
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
}

/// A listener in `ns` whose accept queue holds `backlog` (+1, as Linux counts) connections;
/// nothing accepts from it until the caller does. Close-on-exec, as std's sockets are: a
/// daemon started later must not hold it (and its namespace).
pub fn backlog_listener(lab: &Lab, ns: &str, addr: SocketAddrV4, backlog: i32) -> TcpListener {
    use nix::sys::socket::{Backlog, bind, listen};
    lab.run_in(ns, || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).expect("bind the backlog listener");
        listen(&fd, Backlog::new(backlog).expect("a valid backlog")).expect("listen");
        fd.into()
    })
}

/// `count` complete TCP handshakes from `ns` to `to`, one after another.
pub fn connect_many(lab: &Lab, ns: &str, to: SocketAddr, count: usize) {
    lab.run_in(ns, || {
        for i in 0..count {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .unwrap_or_else(|err| panic!("connection {i} to {to}: {err}"));
        }
    });
}

/// One crafted segment, without TCP options.
pub fn send_crafted(
    crafter: &Crafter,
    (from, to): (SocketAddr, SocketAddr),
    flags: u8,
    (seq, ack): (u32, u32),
    payload: &[u8],
) {
    let segment = Segment {
        from,
        to,
        flags,
        seq,
        ack,
        options: &[],
        payload,
    };
    crafter.send_segment(&segment).unwrap();
}

/// Routes `spoofed` out of the server's veth; with `via`, to that MAC address (a permanent
/// neighbour entry: the client namespace drops what is sent to an address it does not have,
/// so a spoofed client never answers), without, it stays unresolved and nothing is sent.
pub fn route_spoofed(lab: &Lab, spoofed: Ipv4Addr, via: Option<[u8; 6]>) {
    let server_if = lab.server_if.as_str();
    let route = format!("{spoofed}/32");
    ip(
        lab,
        &lab.server_ns,
        &["route", "add", &route, "dev", server_if],
    );
    if let Some(mac) = via {
        set_neighbour(lab, &lab.server_ns, (spoofed, mac), server_if);
    }
}

/// A permanent neighbour entry in `ns`: frames to the address go to the MAC address at
/// once, without ARP.
pub fn set_neighbour(lab: &Lab, ns: &str, (address, mac): (Ipv4Addr, [u8; 6]), dev: &str) {
    let (address, mac) = (
        address.to_string(),
        mac.map(|b| format!("{b:02x}")).join(":"),
    );
    ip(
        lab,
        ns,
        &[
            "neigh",
            "replace",
            &address,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    );
}

/// A lab whose client and server namespaces are joined by a router namespace.
pub fn routed_lab() -> Lab {
    Lab::create(&LabOptions {
        routed: true,
        ..LabOptions::default()
    })
    .expect("create the routed lab")
}

/// An address of the routed lab's server namespace's own, routed to it by the router. Labs
/// run side by side share the lab's addresses, and an address two followed namespaces use names
/// neither (`--netns all`): each call gives another one, `10.<213 + n>.<this process's id>`.
pub fn route_own_server_address(lab: &Lab) -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let router = lab.router.as_ref().expect("a routed lab");
    let pid = std::process::id();
    let block = 213 + NEXT.fetch_add(1, Ordering::Relaxed);
    let own = Ipv4Addr::new(10, block, (pid >> 8) as u8, pid as u8);
    let route = format!("{own}/32");
    let server = (lab.server_ns.as_str(), lab.server_if.as_str());
    ip(lab, server.0, &["addr", "add", &route, "dev", server.1]);
    ip(
        lab,
        &router.ns,
        &["route", "add", &route, "dev", &router.server_if],
    );
    own
}

/// `ip ARGS` in `ns`, which must succeed.
pub fn ip(lab: &Lab, ns: &str, args: &[&str]) {
    let status = lab.command_in(ns, "ip").args(args).status();
    assert!(status.unwrap().success(), "ip {args:?} in {ns}");
}

/// The counters of `ns`'s /proc/net/netstat, named as nstat names them (`TcpExtListenDrops`).
pub fn netstat(lab: &Lab, ns: &str) -> HashMap<String, u64> {
    // /proc/net is the namespace of the process's main thread; thread-self is this thread's.
    let text = lab.run_in(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/netstat").expect("read netstat")
    });
    seqwatch::host::netstat::parse(&text)
}

/// A sysctl as `nsenter --net` would see it in `ns` (or in this process's namespace).
pub fn read_sysctl(ns: Option<(&Lab, &str)>, name: &str) -> String {
    let path = sysctl_path(name);
    let read = move || std::fs::read_to_string(&path).expect("read a sysctl");
    match ns {
        Some((lab, ns)) => lab.run_in(ns, read),
        None => read(),
    }
}

/// Sets a per-namespace sysctl in `ns` only (the namespace dies with the lab).
pub fn write_sysctl(lab: &Lab, ns: &str, name: &str, value: &str) {
    let path = sysctl_path(name);
    lab.run_in(ns, || std::fs::write(&path, value))
        .unwrap_or_else(|err| panic!("setting {name} in {ns}: {err}"));
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(
        words(&read_sysctl(Some((lab, ns)), name)),
        value,
        "{name} in {ns}"
    );
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// The port of [`fast_open_exchanges`]'s echo server (not a TLS port: it speaks plain bytes).
const TFO_PORT: u16 = 8088;
/// How many Fast Open requests [`fast_open_exchanges`] makes.
pub const TFO_CONNECTIONS: usize = 20;

/// [`TFO_CONNECTIONS`] Fast Open requests from the client to an echo server (Fast Open on in
/// both namespaces); returns how many SYNs carried data, which the server took.
pub fn fast_open_exchanges(lab: &Lab) -> u64 {
    for ns in [&lab.client_ns, &lab.server_ns] {
        // Client and server TFO on, in the lab's namespaces only.
        write_sysctl(lab, ns, "net.ipv4.tcp_fastopen", "3");
    }
    let server = SocketAddr::new(lab.server_v4.into(), TFO_PORT);
    let listener = lab.run_in(&lab.server_ns, || fast_open_listener(server));
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 5];
            if stream.read_exact(&mut request).is_ok() {
                let _ = stream.write_all(&request);
            }
        }
    });
    lab.run_in(&lab.client_ns, || {
        for i in 0..TFO_CONNECTIONS {
            let echoed = fast_open_request(server, b"hello")
                .unwrap_or_else(|err| panic!("TFO connection {i}: {err}"));
            assert_eq!(&echoed, b"hello");
        }
    });
    let client = netstat(lab, &lab.client_ns);
    let server_counters = netstat(lab, &lab.server_ns);
    // The first connection only fetches a cookie; the others carry data in their SYN.
    let sent_with_data = client["TcpExtTCPFastOpenActive"];
    assert_eq!(sent_with_data, TFO_CONNECTIONS as u64 - 1, "{client:?}");
    assert_eq!(server_counters["TcpExtTCPFastOpenPassive"], sent_with_data);
    sent_with_data
}

/// A listener that accepts data in SYNs (a Fast Open queue of 16).
fn fast_open_listener(addr: SocketAddr) -> TcpListener {
    let listener = TcpListener::bind(addr).expect("bind the TFO listener");
    let queue: libc::c_int = 16;
    // SAFETY: a valid socket and a c_int option of the right size.
    let set = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&raw const queue).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "TCP_FASTOPEN: {}", std::io::Error::last_os_error());
    listener
}

/// Sends `request` with TCP_FASTOPEN_CONNECT (in the SYN once a cookie is cached) and reads
/// as many bytes back.
fn fast_open_request(server: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let SocketAddr::V4(server) = server else {
        panic!("an IPv4 server")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, TcpFastOpenConnect, &true)?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(server))?;
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request)?;
    let mut reply = vec![0u8; request.len()];
    stream.read_exact(&mut reply)?;
    Ok(reply)
}
