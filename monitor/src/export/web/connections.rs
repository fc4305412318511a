//! The HTTP server's connections: at most a fixed number at once, sized so that the rest of
//! the daemon keeps descriptors to work with, each with deadlines for its TLS handshake, its
//! request headers (which also ends an idle keep-alive connection) and the data it is sent.
//! When every slot is taken, a new connection closes the one that has waited longest without
//! a request in progress, so that idle connections cannot lock a scraper out; only when every
//! connection is in the middle of a request is the new one refused, at once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::Request};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::sys::{
    resource::{Resource, getrlimit, setrlimit},
    socket::{setsockopt, sockopt::TcpUserTimeout},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::{HttpMetrics, WebSecurity};
use crate::util::lock;

/// Connections served at once, at most (fewer when descriptors are short: [`connection_cap`]).
pub const MAX_CONNECTIONS: usize = 256;
/// The cap however short descriptors are.
const MIN_CONNECTIONS: usize = 8;
/// Descriptors kept for the rest of the daemon beyond those open when the server starts: the
/// socket table reader's netlink socket, the /proc and cgroup walks, the links of interfaces
/// that appear later, log files.
const RESERVED_DESCRIPTORS: usize = 256;
/// Connections closed to make room whose sockets their tasks have not closed yet, at most;
/// beyond it new connections are refused.
const CLOSING_MAX: usize = 16;
/// A client has this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client has this long to send a request's headers, counted from when the server starts
/// waiting for them: after accepting (and the handshake), and after each response, so an idle
/// keep-alive connection is closed after this too.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Data the client leaves unacknowledged this long, a zero window included, ends the connection
/// (TCP_USER_TIMEOUT): a client that stops reading cannot hold a connection.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's buffer per connection, at most (hyper's minimum): requests here are a few hundred
/// bytes of headers.
const BUFFER_MAX: usize = 8 * 1024;

/// The client's address, added to every request for the basic-auth check.
#[derive(Clone, Copy, Debug)]
pub(super) struct ClientAddr(pub SocketAddr);

/// The connection cap of this process: [`MAX_CONNECTIONS`], or what the open-files limit leaves
/// after the descriptors open now and [`RESERVED_DESCRIPTORS`]. The soft limit is raised to the
/// hard one first. The choice is logged.
pub fn connection_cap() -> usize {
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                log::warn!("cannot raise the open-files limit from {soft} to {hard}: {err}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(err) => {
            log::warn!(
                "cannot read the open-files limit ({err}): serving {MIN_CONNECTIONS} HTTP connections at most"
            );
            return MIN_CONNECTIONS;
        }
    };
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    let spare = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(open + RESERVED_DESCRIPTORS + CLOSING_MAX + 1);
    let cap = spare.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS);
    let message = format!(
        "HTTP: at most {cap} connections ({open} descriptors open, open-files limit {limit}, \
         {RESERVED_DESCRIPTORS} kept for the rest of the daemon)"
    );
    if cap < MAX_CONNECTIONS {
        log::warn!("{message}: raise the open-files limit (LimitNOFILE) for {MAX_CONNECTIONS}");
    } else {
        log::info!("{message}");
    }
    cap
}

/// The connections being served.
pub(super) struct Connections {
    live: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    cap: usize,
    /// One permit per socket still open, closing ones included.
    sockets: Arc<Semaphore>,
    started: Instant,
    metrics: HttpMetrics,
}

/// What the server knows of one connection.
struct Connection {
    /// Requests in the handlers now (hyper serves one at a time).
    busy: AtomicUsize,
    /// When a request last started or ended (or the connection was accepted), in nanoseconds
    /// since the server started: the oldest idle connection is closed first.
    last_active: AtomicU64,
    close: Notify,
}

/// A connection's place in [`Connections`], given back on drop.
struct Slot {
    id: u64,
    connection: Arc<Connection>,
    connections: Arc<Connections>,
    _socket: OwnedSemaphorePermit,
}

/// How a connection ended.
enum Ended {
    Closed,
    TimedOut,
    Failed,
}

impl Connections {
    pub(super) fn new(cap: usize, metrics: HttpMetrics) -> Arc<Connections> {
        metrics.connections_max.set(cap as i64);
        Arc::new(Connections {
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            cap,
            sockets: Arc::new(Semaphore::new(cap + CLOSING_MAX)),
            started: Instant::now(),
            metrics,
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A slot for a new connection: a free one, or the one of the connection idle longest,
    /// which is told to close. None when every connection is busy (or too many are closing).
    fn admit(self: &Arc<Self>) -> Option<(Slot, bool)> {
        let socket = self.sockets.clone().try_acquire_owned().ok()?;
        let mut live = lock(&self.live);
        let mut evicted = false;
        if live.len() >= self.cap {
            let idlest = live
                .iter()
                .filter(|(_, connection)| connection.busy.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, connection)| connection.last_active.load(Ordering::Relaxed))
                .map(|(&id, _)| id)?;
            if let Some(connection) = live.remove(&idlest) {
                connection.close.notify_one();
                self.metrics.connections_evicted.inc();
                evicted = true;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            busy: AtomicUsize::new(0),
            last_active: AtomicU64::new(self.now()),
            close: Notify::new(),
        });
        live.insert(id, connection.clone());
        self.metrics.connections.set(live.len() as i64);
        let slot = Slot {
            id,
            connection,
            connections: self.clone(),
            _socket: socket,
        };
        Some((slot, evicted))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut live = lock(&self.connections.live);
        live.remove(&self.id);
        self.connections.metrics.connections.set(live.len() as i64);
    }
}

/// Marks a connection busy while a request is in the handlers.
struct Busy {
    connection: Arc<Connection>,
    connections: Arc<Connections>,
}

impl Busy {
    fn start(connection: &Arc<Connection>, connections: &Arc<Connections>) -> Busy {
        connection.busy.fetch_add(1, Ordering::Relaxed);
        connection
            .last_active
            .store(connections.now(), Ordering::Relaxed);
        Busy {
            connection: connection.clone(),
            connections: connections.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.connection
            .last_active
            .store(self.connections.now(), Ordering::Relaxed);
        self.connection.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections on `listener` and serves `app` on each, behind TLS when configured.
pub(super) fn accept_loop(
    listener: TcpListener,
    app: Router,
    security: WebSecurity,
    connections: Arc<Connections>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(BUFFER_MAX);
    tokio::spawn(async move {
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    log::warn!("accepting a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some((slot, evicted)) = connections.admit() else {
                connections.metrics.connections_refused.inc();
                continue; // the stream is dropped: closed at once
            };
            let served = serve(
                stream,
                client,
                slot,
                app.clone(),
                security.clone(),
                http.clone(),
            );
            tokio::spawn(served);
            if evicted {
                // Lets the evicted connection's task close its socket before the next accept.
                tokio::task::yield_now().await;
            }
        }
    });
}

/// Serves one connection until it ends, times out or is told to close.
async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    slot: Slot,
    app: Router,
    security: WebSecurity,
    http: http1::Builder,
) {
    let send_timeout = u32::try_from(SEND_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    if let Err(err) = setsockopt(&stream, TcpUserTimeout, &send_timeout) {
        log::debug!("TCP_USER_TIMEOUT on the connection from {client}: {err}");
    }
    let connection = slot.connection.clone();
    let ended = tokio::select! {
        () = connection.close.notified() => Ended::Closed,
        ended = async {
            match security.tls_config() {
                None => serve_http(stream, client, &slot, app, &http).await,
                Some(tls) => {
                    let handshake = TlsAcceptor::from(tls).accept(stream);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => serve_http(stream, client, &slot, app, &http).await,
                        Ok(Err(err)) => {
                            log::debug!("TLS handshake with {client}: {err}");
                            Ended::Failed
                        }
                        Err(_) => Ended::TimedOut,
                    }
                }
            }
        } => ended,
    };
    if let Ended::TimedOut = ended {
        slot.connections.metrics.timeouts.inc();
    }
}

/// HTTP/1.1 on an established connection (plain or TLS).
async fn serve_http<I>(
    io: I,
    client: SocketAddr,
    slot: &Slot,
    app: Router,
    http: &http1::Builder,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (connection, connections) = (slot.connection.clone(), slot.connections.clone());
    let service = service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ClientAddr(client));
        let busy = Busy::start(&connection, &connections);
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(busy);
            response
        }
    });
    match http.serve_connection(TokioIo::new(io), service).await {
        Ok(()) => Ended::Closed,
        Err(err) if err.is_timeout() || timed_out_sending(&err) => Ended::TimedOut,
        Err(err) => {
            log::debug!("HTTP connection from {client}: {err}");
            Ended::Failed
        }
    }
}

/// Whether the kernel ended the connection because the client acknowledged nothing for
/// [`SEND_TIMEOUT`] (ETIMEDOUT).
fn timed_out_sending(err: &hyper::Error) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|err| err.kind() == std::io::ErrorKind::TimedOut)
}
