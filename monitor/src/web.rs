//! TLS and basic auth for the HTTP endpoints, configured by a web-config YAML file in
//! Prometheus exporter-toolkit's schema (`tls_server_config`, `basic_auth_users`), served with
//! rustls. Without a file: plain HTTP, no auth.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock},
    time::Duration,
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::Deserialize;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// A client has this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The web-config file: exporter-toolkit's keys that Seqwatch implements.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: ClientAuth,
    #[serde(default)]
    min_version: MinVersion,
}

/// exporter-toolkit's names; `RequestClientCert` and `RequireAnyClientCert` (certificates
/// accepted unverified) are not offered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ClientAuth {
    #[default]
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// rustls speaks TLS 1.2 and 1.3 only.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
enum MinVersion {
    #[default]
    TLS12,
    TLS13,
}

/// A web config that cannot be used; the message names the file and the problem.
#[derive(Debug)]
pub struct WebConfigError(String);

impl fmt::Display for WebConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for WebConfigError {}

/// What the server needs at run time, built once at start-up.
pub struct WebSecurity {
    tls: Option<Arc<ServerConfig>>,
    users: Arc<BTreeMap<String, String>>,
}

impl WebConfig {
    /// Reads and checks the file: YAML keys, bcrypt hashes, certificates and keys.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let error = |message: String| WebConfigError(format!("{}: {message}", path.display()));
        let text =
            std::fs::read_to_string(path).map_err(|err| error(format!("cannot read: {err}")))?;
        let mut config: WebConfig = if text.trim().is_empty() {
            WebConfig::default()
        } else {
            serde_norway::from_str(&text).map_err(|err| error(err.to_string()))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(tls) = &mut config.tls_server_config {
            for file in [&mut tls.cert_file, &mut tls.key_file]
                .into_iter()
                .chain(tls.client_ca_file.as_mut())
            {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        for (user, hash) in &config.basic_auth_users {
            hash.parse::<bcrypt::HashParts>().map_err(|err| {
                error(format!(
                    "basic_auth_users.{user}: not a bcrypt hash ({err})"
                ))
            })?;
        }
        config.security().map_err(|err| error(err.0))?;
        Ok(config)
    }

    pub fn security(&self) -> Result<WebSecurity, WebConfigError> {
        let tls = match &self.tls_server_config {
            Some(tls) => Some(Arc::new(tls.server_config()?)),
            None => None,
        };
        Ok(WebSecurity {
            tls,
            users: Arc::new(self.basic_auth_users.clone()),
        })
    }
}

impl TlsServerConfig {
    fn server_config(&self) -> Result<ServerConfig, WebConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version {
            MinVersion::TLS12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::TLS13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|err| WebConfigError(format!("tls_server_config: {err}")))?;
        let builder = match (self.client_auth_type, &self.client_ca_file) {
            (ClientAuth::NoClientCert, None) => builder.with_no_client_auth(),
            (ClientAuth::NoClientCert, Some(_)) => {
                return Err(WebConfigError(
                    "tls_server_config: client_ca_file is set but client_auth_type is \
                     NoClientCert: expected VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                        .to_owned(),
                ));
            }
            (_, None) => {
                return Err(WebConfigError(
                    "tls_server_config: client_auth_type verifies client certificates, \
                     which needs client_ca_file"
                        .to_owned(),
                ));
            }
            (auth, Some(ca_file)) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca_file, "client_ca_file")? {
                    roots.add(cert).map_err(|err| {
                        WebConfigError(format!("client_ca_file {}: {err}", ca_file.display()))
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
                let verifier = if auth == ClientAuth::VerifyClientCertIfGiven {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|err| WebConfigError(format!("client_ca_file: {err}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let certs = read_certs(&self.cert_file, "cert_file")?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|err| {
            WebConfigError(format!(
                "key_file {}: no PEM private key ({err})",
                self.key_file.display()
            ))
        })?;
        let mut config = builder.with_single_cert(certs, key).map_err(|err| {
            WebConfigError(format!("cert_file and key_file do not make a pair: {err}"))
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| WebConfigError(format!("{key} {}: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(WebConfigError(format!(
            "{key} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

impl WebSecurity {
    pub fn plain() -> WebSecurity {
        WebSecurity {
            tls: None,
            users: Arc::default(),
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serves `app` on `listener` in the background, behind TLS and basic auth as configured.
    pub fn serve(&self, listener: TcpListener, app: Router) {
        let app = if self.users.is_empty() {
            app
        } else {
            app.layer(middleware::from_fn_with_state(
                self.users.clone(),
                require_basic_auth,
            ))
        };
        let tls = self.tls.clone();
        tokio::spawn(async move {
            let served = match tls {
                None => axum::serve(listener, app).await,
                Some(tls) => axum::serve(TlsListener::start(listener, tls), app).await,
            };
            if let Err(err) = served {
                log::error!("http server stopped: {err}");
            }
        });
    }
}

/// Completed TLS connections, handshaken in their own tasks so that a slow client holds up
/// nobody else.
struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: std::io::Result<SocketAddr>,
}

impl TlsListener {
    fn start(listener: TcpListener, tls: Arc<ServerConfig>) -> TlsListener {
        let local_addr = listener.local_addr();
        let (sender, connections) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        log::warn!("accepting a connection: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => log::debug!("TLS handshake with {peer}: {err}"),
                        Err(_) => log::debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        TlsListener {
            connections,
            local_addr,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop never ends, so neither does this.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local_addr {
            Ok(addr) => Ok(*addr),
            Err(err) => Err(std::io::Error::new(err.kind(), err.to_string())),
        }
    }
}

/// 401 unless the request carries a user and password whose bcrypt hash is configured.
async fn require_basic_auth(
    State(users): State<Arc<BTreeMap<String, String>>>,
    request: Request,
    next: Next,
) -> Response {
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(basic_credentials);
    let authorized = match credentials {
        Some((user, password)) => {
            // bcrypt is deliberately slow: keep it off the async workers.
            tokio::task::spawn_blocking(move || password_matches(&users, &user, &password))
                .await
                .unwrap_or(false)
        }
        None => false,
    };
    if authorized {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"seqwatch\"")],
            "Unauthorized\n",
        )
            .into_response()
    }
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// An unknown user costs a bcrypt check too, so that timing does not tell which users exist.
fn password_matches(users: &BTreeMap<String, String>, user: &str, password: &str) -> bool {
    static UNKNOWN_USER_HASH: LazyLock<String> =
        LazyLock::new(|| bcrypt::hash("", bcrypt::DEFAULT_COST).unwrap_or_default());
    match users.get(user) {
        Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        None => {
            let _ = bcrypt::verify(password, &UNKNOWN_USER_HASH);
            false
        }
    }
}
