//! TLS and basic auth for the HTTP endpoints, configured by a web-config YAML file in
//! Prometheus exporter-toolkit's schema (`tls_server_config`, `basic_auth_users`), served with
//! rustls. Without a file: plain HTTP, no auth. Connections are capped and timed out
//! ([`connections`]).

mod connections;

use std::{
    collections::BTreeMap,
    fmt,
    hash::{Hash as _, Hasher as _},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use prometheus::{IntGauge, Registry};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::Deserialize;
use tokio::net::TcpListener;

use connections::Connections;
pub use connections::{MAX_CONNECTIONS, connection_cap};

use crate::{daemon::lock, metrics::register};

/// bcrypt costs accepted in `basic_auth_users`: below 10 a stolen hash is cheap to crack;
/// each step doubles the work, and at 14 one check already takes about a second of CPU.
const BCRYPT_COSTS: RangeInclusive<u32> = 10..=14;

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

/// What the server needs at run time: TLS and users as last read from the web-config file.
/// Like exporter-toolkit, the file (and the certificates and keys it names) is read again when
/// it changes, so certificates and passwords rotate without a restart; a change that does not
/// load keeps the previous settings, with an error in the log.
#[derive(Clone)]
pub struct WebSecurity {
    live: Arc<Mutex<Loaded>>,
    /// Fixed at start: a listener cannot switch between plain HTTP and TLS.
    tls: bool,
}

/// One loaded web config, and what its files looked like then.
struct Loaded {
    path: Option<PathBuf>,
    files: Vec<PathBuf>,
    stamps: Vec<Option<FileStamp>>,
    tls: Option<Arc<ServerConfig>>,
    users: Arc<BTreeMap<String, String>>,
}

/// A hash of a file's contents: modification times can be too coarse to see a quick rewrite,
/// and the files are small (a scrape every few seconds reads them again, as exporter-toolkit
/// does).
type FileStamp = u64;

fn stamps(files: &[PathBuf]) -> Vec<Option<FileStamp>> {
    files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(file).ok()?;
            let mut hasher = std::hash::DefaultHasher::new();
            bytes.hash(&mut hasher);
            Some(hasher.finish())
        })
        .collect()
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
            check_user_name(user)
                .map_err(|message| error(format!("basic_auth_users: {message}")))?;
            let parts = hash.parse::<bcrypt::HashParts>().map_err(|err| {
                error(format!(
                    "basic_auth_users.{user}: not a bcrypt hash ({err})"
                ))
            })?;
            let cost = parts.get_cost();
            if !BCRYPT_COSTS.contains(&cost) {
                return Err(error(format!(
                    "basic_auth_users.{user}: bcrypt cost {cost} is out of range: expected {} to \
                     {} (below, a stolen hash is cheap to crack; above, each check takes seconds \
                     of CPU)",
                    BCRYPT_COSTS.start(),
                    BCRYPT_COSTS.end()
                )));
            }
        }
        config.loaded(path).map_err(|err| error(err.0))?;
        Ok(config)
    }

    /// The server settings of a config read from `path`.
    fn loaded(&self, path: &Path) -> Result<Loaded, WebConfigError> {
        let tls = match &self.tls_server_config {
            Some(tls) => Some(Arc::new(tls.server_config()?)),
            None => None,
        };
        let mut files = vec![path.to_owned()];
        if let Some(tls) = &self.tls_server_config {
            files.extend([tls.cert_file.clone(), tls.key_file.clone()]);
            files.extend(tls.client_ca_file.clone());
        }
        Ok(Loaded {
            path: Some(path.to_owned()),
            stamps: stamps(&files),
            files,
            tls,
            users: Arc::new(self.basic_auth_users.clone()),
        })
    }
}

/// A name that basic auth can carry: not empty, no ':' (the header splits user and password at
/// the first one) and no control characters.
fn check_user_name(user: &str) -> Result<(), String> {
    if user.is_empty() {
        Err("a user name is empty: no one can log in as it".to_owned())
    } else if user.contains(':') {
        Err(format!(
            "user name {user:?} contains ':', where basic auth splits user from password: no \
             one can log in as it"
        ))
    } else if user.chars().any(char::is_control) {
        Err(format!("user name {user:?} contains a control character"))
    } else {
        Ok(())
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
            live: Arc::new(Mutex::new(Loaded {
                path: None,
                files: Vec::new(),
                stamps: Vec::new(),
                tls: None,
                users: Arc::default(),
            })),
            tls: false,
        }
    }

    /// Loads the web-config file, which is then watched for changes.
    pub fn from_file(path: &Path) -> Result<WebSecurity, WebConfigError> {
        let loaded = WebConfig::load(path)?.loaded(path)?;
        Ok(WebSecurity {
            tls: loaded.tls.is_some(),
            live: Arc::new(Mutex::new(loaded)),
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The TLS settings and users now in force, read again first if a file changed.
    fn current(&self) -> (Option<Arc<ServerConfig>>, Arc<BTreeMap<String, String>>) {
        let mut loaded = lock(&self.live);
        let now = stamps(&loaded.files);
        if now != loaded.stamps {
            loaded.stamps = now;
            if let Some(path) = loaded.path.clone() {
                self.reload(&mut loaded, &path);
            }
        }
        (loaded.tls.clone(), loaded.users.clone())
    }

    /// The TLS settings for a new connection; None for plain HTTP.
    fn tls_config(&self) -> Option<Arc<ServerConfig>> {
        if self.tls { self.current().0 } else { None }
    }

    fn reload(&self, loaded: &mut Loaded, path: &Path) {
        match WebConfig::load(path).and_then(|config| config.loaded(path)) {
            Ok(new) if new.tls.is_some() == self.tls => {
                *loaded = new;
                log::info!("{}: reloaded", path.display());
            }
            Ok(_) => log::error!(
                "{}: switching between plain HTTP and TLS needs a restart; keeping the \
                 previous settings",
                path.display()
            ),
            Err(err) => log::error!("{err}; keeping the previous settings"),
        }
    }

    /// Serves `app` on `listener` in the background, behind TLS and basic auth as configured,
    /// at most `max_connections` at once (see [`connection_cap`]).
    pub fn serve(
        &self,
        listener: TcpListener,
        app: Router,
        max_connections: usize,
        metrics: HttpMetrics,
    ) {
        let app = app.layer(middleware::from_fn_with_state(
            self.clone(),
            require_basic_auth,
        ));
        let connections = Connections::new(max_connections, metrics);
        connections::accept_loop(listener, app, self.clone(), connections);
    }
}

/// The HTTP server's metrics.
#[derive(Clone)]
pub struct HttpMetrics {
    connections: IntGauge,
    connections_max: IntGauge,
    connections_refused: prometheus::IntCounter,
    connections_evicted: prometheus::IntCounter,
    timeouts: prometheus::IntCounter,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let gauge = |name: &str, help: &str| register(registry, IntGauge::new(name, help)?);
        let counter =
            |name: &str, help: &str| register(registry, prometheus::IntCounter::new(name, help)?);
        Ok(HttpMetrics {
            connections: gauge("seqwatch_http_connections", "HTTP connections open now.")?,
            connections_max: gauge(
                "seqwatch_http_connections_max",
                "HTTP connections served at once at most, from the open-files limit.",
            )?,
            connections_refused: counter(
                "seqwatch_http_connections_refused_total",
                "HTTP connections closed as soon as accepted: every connection had a request \
                 in progress.",
            )?,
            connections_evicted: counter(
                "seqwatch_http_connections_evicted_total",
                "Idle HTTP connections closed to make room for a new one.",
            )?,
            timeouts: counter(
                "seqwatch_http_timeouts_total",
                "HTTP connections closed because the TLS handshake or the request headers did \
                 not arrive in time, or the client stopped acknowledging data.",
            )?,
        })
    }
}

/// 401 unless the request carries a user and password whose bcrypt hash is configured, when
/// users are configured.
async fn require_basic_auth(
    State(security): State<WebSecurity>,
    request: Request,
    next: Next,
) -> Response {
    let users = security.current().1;
    if users.is_empty() {
        return next.run(request).await;
    }
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
