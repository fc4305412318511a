//! TLS and basic auth for the HTTP endpoints, configured by a web-config YAML file in
//! Prometheus exporter-toolkit's schema (`tls_server_config`, `basic_auth_users`), served with
//! rustls. Without a file: plain HTTP, no auth. Connections are capped and timed out
//! ([`connections`]); bcrypt runs on one thread at a time, behind a cache of verified
//! credentials and a short queue, so that wrong passwords cannot take more than one core.

mod connections;

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    hash::{Hash as _, Hasher as _},
    net::{IpAddr, Ipv6Addr},
    num::NonZeroUsize,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
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
use lru::LruCache;
use prometheus::{IntCounterVec, IntGauge};
use ring::hmac;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::Deserialize;
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};

use connections::{ClientAddr, Connections};
pub use connections::{MAX_CONNECTIONS, connection_cap};

use crate::{export::metrics::Registry, util::lock};

/// bcrypt costs accepted in `basic_auth_users`: below 10 a stolen hash is cheap to crack;
/// each step doubles the work, and at 14 one check already takes about a second of CPU.
const BCRYPT_COSTS: RangeInclusive<u32> = 10..=14;
/// Verified credentials remembered (as keyed hashes, never the passwords), so that a scraper
/// pays for bcrypt once; the least recently used are forgotten first.
const VERIFIED_CACHE: usize = 64;
/// bcrypt checks waiting for the bcrypt thread, at most, beyond the one it runs; a client
/// address (an IPv6 /64) has one waiting or running at a time.
const BCRYPT_QUEUE: usize = 8;
/// How long a check waits for the bcrypt thread at most before the request gets a 503.
const BCRYPT_WAIT: Duration = Duration::from_secs(5);

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
    auth: Arc<Authenticator>,
}

/// One loaded web config, and what its files looked like then.
struct Loaded {
    path: Option<PathBuf>,
    files: Vec<PathBuf>,
    stamps: Vec<Option<FileStamp>>,
    tls: Option<Arc<ServerConfig>>,
    users: Arc<Users>,
}

/// The configured users, and what an unknown user's password is checked against: a configured
/// hash of the most common cost, so that its 401 takes as long as a known user's.
#[derive(Default)]
struct Users {
    hashes: BTreeMap<String, String>,
    decoy: Option<String>,
}

impl Users {
    fn new(hashes: BTreeMap<String, String>) -> Users {
        let mut costs: BTreeMap<u32, usize> = BTreeMap::new();
        for hash in hashes.values() {
            if let Ok(parts) = hash.parse::<bcrypt::HashParts>() {
                *costs.entry(parts.get_cost()).or_default() += 1;
            }
        }
        // The most common cost; of equally common ones, the highest.
        let cost = costs
            .iter()
            .max_by_key(|&(cost, count)| (count, cost))
            .map(|(&cost, _)| cost);
        let decoy = hashes
            .values()
            .find(|hash| {
                hash.parse::<bcrypt::HashParts>()
                    .is_ok_and(|parts| Some(parts.get_cost()) == cost)
            })
            .cloned();
        Users { hashes, decoy }
    }
}

/// A hash of a file's contents: modification times can be too coarse to see a quick rewrite,
/// and the files are small (a scrape every few seconds reads them again, as exporter-toolkit
/// does).
type FileStamp = u64;

fn stamps(files: &[PathBuf]) -> Vec<Option<FileStamp>> {
    files
        .iter()
        .map(|file| {
            let bytes = crate::util::files::read_bounded(file).ok()?;
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
        let text = crate::util::files::read_bounded(path)
            .and_then(|bytes| String::from_utf8(bytes).map_err(std::io::Error::other))
            .map_err(|err| error(format!("cannot read: {err}")))?;
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
            users: Arc::new(Users::new(self.basic_auth_users.clone())),
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
        let key_pem = crate::util::files::read_bounded(&self.key_file).map_err(|err| {
            WebConfigError(format!("key_file {}: {err}", self.key_file.display()))
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| {
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
    let pem = crate::util::files::read_bounded(path)
        .map_err(|err| WebConfigError(format!("{key} {}: {err}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
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
            auth: Arc::new(Authenticator::new()),
        }
    }

    /// Loads the web-config file, which is then watched for changes.
    pub fn from_file(path: &Path) -> Result<WebSecurity, WebConfigError> {
        let loaded = WebConfig::load(path)?.loaded(path)?;
        Ok(WebSecurity {
            tls: loaded.tls.is_some(),
            live: Arc::new(Mutex::new(loaded)),
            auth: Arc::new(Authenticator::new()),
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The TLS settings and users now in force, read again first if a file changed.
    fn current(&self) -> (Option<Arc<ServerConfig>>, Arc<Users>) {
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
        let auth = AuthState {
            security: self.clone(),
            metrics: metrics.clone(),
        };
        let app = app.layer(middleware::from_fn_with_state(auth, require_basic_auth));
        let connections = Connections::new(max_connections, metrics);
        connections::accept_loop(listener, app, self.clone(), connections);
    }
}

/// The HTTP server's metrics: connections and basic-auth checks.
#[derive(Clone)]
pub struct HttpMetrics {
    connections: IntGauge,
    connections_max: IntGauge,
    connections_refused: prometheus::IntCounter,
    connections_evicted: prometheus::IntCounter,
    timeouts: prometheus::IntCounter,
    auth: IntCounterVec,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let gauge = |name: &str, help: &str| registry.gauge(name, help);
        let counter =
            |name: &str, help: &str| registry.register(prometheus::IntCounter::new(name, help)?);
        let auth = registry.counters(
            "seqwatch_http_auth_total",
            "Basic-auth checks by outcome: cached (accepted without bcrypt), verified \
                     (accepted by bcrypt), denied (401), throttled (429: the client already has \
                     a check waiting), busy (503: the bcrypt queue is full).",
            &["outcome"],
        )?;
        for outcome in AuthOutcome::ALL {
            auth.with_label_values(&[outcome.as_str()]);
        }
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
            auth,
        })
    }
}

/// What the basic-auth check needs.
#[derive(Clone)]
struct AuthState {
    security: WebSecurity,
    metrics: HttpMetrics,
}

/// How a basic-auth check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthOutcome {
    Cached,
    Verified,
    Denied,
    Throttled,
    Busy,
}

impl AuthOutcome {
    const ALL: [AuthOutcome; 5] = [
        AuthOutcome::Cached,
        AuthOutcome::Verified,
        AuthOutcome::Denied,
        AuthOutcome::Throttled,
        AuthOutcome::Busy,
    ];

    fn as_str(self) -> &'static str {
        match self {
            AuthOutcome::Cached => "cached",
            AuthOutcome::Verified => "verified",
            AuthOutcome::Denied => "denied",
            AuthOutcome::Throttled => "throttled",
            AuthOutcome::Busy => "busy",
        }
    }

    fn response(self) -> Option<Response> {
        let retry_later = |status: StatusCode| {
            (status, [(header::RETRY_AFTER, "1")], "Try again later\n").into_response()
        };
        match self {
            AuthOutcome::Cached | AuthOutcome::Verified => None,
            AuthOutcome::Denied => Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Basic realm=\"seqwatch\"")],
                    "Unauthorized\n",
                )
                    .into_response(),
            ),
            AuthOutcome::Throttled => Some(retry_later(StatusCode::TOO_MANY_REQUESTS)),
            AuthOutcome::Busy => Some(retry_later(StatusCode::SERVICE_UNAVAILABLE)),
        }
    }
}

/// Checks passwords as exporter-toolkit does, with bcrypt's work bounded: verified credentials
/// are remembered under a keyed hash of user, configured hash and password; everything else
/// costs one bcrypt check of the configured cost (an unknown user's too), run on its own
/// thread, one at a time, after a short queue with one place per client address.
struct Authenticator {
    key: hmac::Key,
    verified: Mutex<LruCache<[u8; 32], ()>>,
    /// Client addresses with a check waiting or running.
    queued: Arc<Mutex<HashSet<IpAddr>>>,
    bcrypt: Arc<Semaphore>,
}

/// A client's place in the bcrypt queue, given back on drop.
struct Queued {
    queued: Arc<Mutex<HashSet<IpAddr>>>,
    client: IpAddr,
}

impl Drop for Queued {
    fn drop(&mut self) {
        lock(&self.queued).remove(&self.client);
    }
}

impl Authenticator {
    fn new() -> Authenticator {
        Authenticator {
            key: hmac::Key::new(hmac::HMAC_SHA256, &rand::random::<[u8; 32]>()),
            verified: Mutex::new(LruCache::new(
                NonZeroUsize::new(VERIFIED_CACHE).expect("non-zero"),
            )),
            queued: Arc::default(),
            bcrypt: Arc::new(Semaphore::new(1)),
        }
    }

    async fn check(
        &self,
        users: &Users,
        (user, password): (String, String),
        client: IpAddr,
    ) -> AuthOutcome {
        let known = users.hashes.get(&user);
        let Some(hash) = known.or(users.decoy.as_ref()) else {
            return AuthOutcome::Denied;
        };
        let tag = self.tag(&user, hash, &password);
        if lock(&self.verified).get(&tag).is_some() && known.is_some() {
            return AuthOutcome::Cached;
        }
        let _queued = match self.enqueue(client) {
            Ok(queued) => queued,
            Err(outcome) => return outcome,
        };
        let acquired = tokio::time::timeout(BCRYPT_WAIT, self.bcrypt.clone().acquire_owned());
        let Ok(Ok(permit)) = acquired.await else {
            return AuthOutcome::Busy;
        };
        match verify_on_own_thread(permit, password, hash.clone()).await {
            Some(true) if known.is_some() => {
                lock(&self.verified).put(tag, ());
                AuthOutcome::Verified
            }
            Some(_) => AuthOutcome::Denied,
            None => AuthOutcome::Busy,
        }
    }

    /// HMAC-SHA256 of the credentials and the hash they are checked against, under a key made
    /// at start: a changed hash or password misses the cache, and the cache holds no password.
    fn tag(&self, user: &str, hash: &str, password: &str) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.key);
        for part in [user, hash] {
            context.update(&(part.len() as u64).to_le_bytes());
            context.update(part.as_bytes());
        }
        context.update(password.as_bytes());
        let mut tag = [0u8; 32];
        tag.copy_from_slice(context.sign().as_ref());
        tag
    }

    /// A place in the bcrypt queue for `client`: 429 if it already has one, 503 if the queue is
    /// full.
    fn enqueue(&self, client: IpAddr) -> Result<Queued, AuthOutcome> {
        let client = client_key(client);
        let mut queued = lock(&self.queued);
        if queued.contains(&client) {
            return Err(AuthOutcome::Throttled);
        }
        if queued.len() > BCRYPT_QUEUE {
            return Err(AuthOutcome::Busy);
        }
        queued.insert(client);
        Ok(Queued {
            queued: self.queued.clone(),
            client,
        })
    }
}

/// A client address as the bcrypt queue counts it: IPv4 as is, IPv6 by its /64 (one host's
/// usual share).
fn client_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// bcrypt on a thread of its own, holding `permit` until done: the async workers never wait on
/// it, and shutting down does not either. None if no thread could be started.
async fn verify_on_own_thread(
    permit: OwnedSemaphorePermit,
    password: String,
    hash: String,
) -> Option<bool> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name("bcrypt".to_owned())
        .spawn(move || {
            let matched = bcrypt::verify(&password, &hash).unwrap_or(false);
            drop(permit);
            let _ = reply.send(matched);
        });
    if let Err(err) = started {
        log::warn!("cannot start a bcrypt thread: {err}");
        return None;
    }
    answer.await.ok()
}

/// Lets the request through if no users are configured or it carries a user and password whose
/// bcrypt hash is configured; otherwise 401, or 429/503 when bcrypt is busy.
async fn require_basic_auth(
    State(state): State<AuthState>,
    request: Request,
    next: Next,
) -> Response {
    let users = state.security.current().1;
    if users.hashes.is_empty() {
        return next.run(request).await;
    }
    let client = request
        .extensions()
        .get::<ClientAddr>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |client| client.0.ip());
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(basic_credentials);
    let outcome = match credentials {
        Some(credentials) => state.security.auth.check(&users, credentials, client).await,
        None => AuthOutcome::Denied,
    };
    state
        .metrics
        .auth
        .with_label_values(&[outcome.as_str()])
        .inc();
    match outcome.response() {
        None => next.run(request).await,
        Some(refusal) => refusal,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A cost-10 hash relabelled as `cost`: only its cost is read.
    fn hash_of_cost(base: &str, cost: u32) -> String {
        base.replacen("$10$", &format!("${cost:02}$"), 1)
    }

    #[test]
    fn an_unknown_user_is_checked_against_a_hash_of_the_most_common_cost() {
        let base = bcrypt::hash("x", 10).unwrap();
        let users = |costs: &[(&str, u32)]| {
            let hashes = costs
                .iter()
                .map(|&(user, cost)| (user.to_owned(), hash_of_cost(&base, cost)))
                .collect();
            let decoy = Users::new(hashes).decoy.unwrap();
            decoy.parse::<bcrypt::HashParts>().unwrap().get_cost()
        };
        assert_eq!(users(&[("a", 12), ("b", 10), ("c", 10)]), 10);
        assert_eq!(users(&[("a", 12), ("b", 10)]), 12, "a tie: the higher");
        assert!(Users::new(BTreeMap::new()).decoy.is_none());
    }

    #[test]
    fn ipv6_clients_queue_per_64() {
        let key = |text: &str| client_key(text.parse().unwrap());
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }

    fn credentials(user: &str, password: &str) -> (String, String) {
        (user.to_owned(), password.to_owned())
    }

    #[tokio::test]
    async fn verified_credentials_are_cached_and_bcrypt_is_queued_per_client() {
        let hash = bcrypt::hash("right", 10).unwrap();
        let users = Users::new(BTreeMap::from([("prometheus".to_owned(), hash)]));
        let auth = Authenticator::new();
        let client = IpAddr::from([192, 0, 2, 1]);
        let (first, second) = tokio::join!(
            auth.check(&users, credentials("prometheus", "wrong"), client),
            auth.check(&users, credentials("mallory", "wrong"), client),
        );
        assert_eq!(
            (first, second),
            (AuthOutcome::Denied, AuthOutcome::Throttled)
        );
        let check = |user, password| auth.check(&users, credentials(user, password), client);
        assert_eq!(check("prometheus", "right").await, AuthOutcome::Verified);
        assert_eq!(check("prometheus", "right").await, AuthOutcome::Cached);
        assert_eq!(check("prometheus", "wrong").await, AuthOutcome::Denied);
        // The decoy is prometheus' hash, yet its password does not let an unknown user in.
        assert_eq!(check("mallory", "right").await, AuthOutcome::Denied);
    }

    #[tokio::test]
    async fn a_full_bcrypt_queue_answers_busy_at_once() {
        let hash = bcrypt::hash("right", 10).unwrap();
        let users = Users::new(BTreeMap::from([("prometheus".to_owned(), hash)]));
        let auth = Authenticator::new();
        let checks = (0..=BCRYPT_QUEUE + 1).map(|n| {
            let client = IpAddr::from([192, 0, 2, n as u8]);
            auth.check(&users, credentials("prometheus", "wrong"), client)
        });
        let outcomes = futures_util::future::join_all(checks).await;
        // One runs, BCRYPT_QUEUE wait (each denied, unless the machine is so slow that the
        // wait runs out), the last finds the queue full.
        assert_eq!(outcomes[0], AuthOutcome::Denied);
        assert_eq!(outcomes[BCRYPT_QUEUE + 1], AuthOutcome::Busy);
        assert!(
            outcomes[1..=BCRYPT_QUEUE].iter().all(|outcome| [
                AuthOutcome::Denied,
                AuthOutcome::Busy
            ]
            .contains(outcome)),
            "{outcomes:?}"
        );
    }
}
