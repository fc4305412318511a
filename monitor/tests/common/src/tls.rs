//! Real TLS sessions over the lab (rustls, with a certificate for the server's address),
//! among them one whose server writes raw bytes onto its socket mid-session.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::Arc,
    thread,
    time::Duration,
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};
use seqwatch::lab::Lab;

/// What the leaky server writes past TLS: no record header starts like this.
pub const LEAK: &[u8] = b"PLAINTEXT LEAK: HTTP/1.1 200 OK\r\n\r\n";

/// A self-signed certificate for the lab server's IPv4 address (or another of its own).
pub struct Credentials {
    pub cert: rcgen::CertifiedKey<rcgen::KeyPair>,
    server_name: ServerName<'static>,
}

/// The session [`leak_once`] broke.
pub struct LeakedSession {
    pub client: SocketAddr,
    /// Where the leak starts in the server's byte stream (its first payload byte is 0).
    pub offset: usize,
}

impl Credentials {
    pub fn for_server(lab: &Lab) -> Credentials {
        Credentials::for_address(lab.server_v4)
    }

    pub fn for_address(address: Ipv4Addr) -> Credentials {
        let name = address.to_string();
        Credentials {
            cert: rcgen::generate_simple_self_signed(vec![name.clone()]).unwrap(),
            server_name: ServerName::try_from(name).unwrap(),
        }
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert.cert.der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    fn server_config(&self) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            self.cert.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.cert.der().clone()], key)
            .unwrap();
        Arc::new(config)
    }

    /// A client session to the lab server over a fresh connection from the client
    /// namespace, with a bounded read time.
    pub fn connect(&self, lab: &Lab, to: SocketAddrV4) -> StreamOwned<ClientConnection, TcpStream> {
        let socket = connect(lab, to);
        let connection =
            ClientConnection::new(self.client_config(), self.server_name.clone()).unwrap();
        StreamOwned::new(connection, socket)
    }

    /// One TLS 1.3 session to a server on `at` in the lab's server namespace that sends
    /// `before` bytes of application data and then writes [`LEAK`] onto the TCP socket
    /// itself, as a racing TLS stack would. The client fails on it, sends its alert and
    /// closes; so does the server.
    pub fn leak_once(&self, lab: &Lab, at: SocketAddrV4, before: usize) -> LeakedSession {
        let listener = lab
            .run_in(&lab.server_ns, || TcpListener::bind(at))
            .unwrap();
        let config = self.server_config();
        let server = thread::spawn(move || leaky_server(&listener, config, before));
        let socket = connect(lab, at);
        let client = socket.local_addr().unwrap();
        let recording = Recording {
            socket,
            received: Vec::new(),
        };
        let connection =
            ClientConnection::new(self.client_config(), self.server_name.clone()).unwrap();
        let mut tls = StreamOwned::new(connection, recording);
        tls.write_all(b"GET ").unwrap();
        let err = tls
            .read_to_end(&mut Vec::new())
            .expect_err("the leak breaks the session");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        while tls.conn.wants_write() {
            tls.conn.write_tls(&mut tls.sock).unwrap();
        }
        tls.sock.socket.shutdown(std::net::Shutdown::Write).unwrap();
        server.join().unwrap();
        let offset = tls
            .sock
            .received
            .windows(LEAK.len())
            .position(|window| window == LEAK)
            .expect("the leak reached the client");
        LeakedSession { client, offset }
    }
}

fn connect(lab: &Lab, to: SocketAddrV4) -> TcpStream {
    let socket = lab
        .run_in(&lab.client_ns, || TcpStream::connect(to))
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
}

/// The socket a rustls client runs over, keeping every byte received: where the leak
/// sits in it is its offset in the server's byte stream.
struct Recording {
    socket: TcpStream,
    received: Vec<u8>,
}

impl Read for Recording {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.socket.read(buf)?;
        self.received.extend_from_slice(&buf[..read]);
        Ok(read)
    }
}

impl Write for Recording {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

/// Accepts one connection, reads the client's 4-byte request, sends `before` bytes of
/// application data, writes [`LEAK`] past TLS, and closes once the client has gone.
fn leaky_server(listener: &TcpListener, config: Arc<ServerConfig>, before: usize) {
    let (socket, _) = listener.accept().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), socket);
    let mut request = [0u8; 4];
    tls.read_exact(&mut request).unwrap();
    tls.write_all(&vec![0x5a; before]).unwrap();
    tls.flush().unwrap();
    tls.sock.write_all(LEAK).unwrap();
    let mut sink = [0u8; 4096];
    while tls.sock.read(&mut sink).is_ok_and(|read| read > 0) {}
}
