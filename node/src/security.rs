//! Security on the wire: TLS (rustls, through tonic) on the one gRPC port that serves the public,
//! admin and replica APIs, mutual TLS between peers, and bearer tokens for the public and admin
//! APIs.
//!
//! - `[tls]` names PEM files: this node's certificate chain and key, and the CA that signed the
//!   nodes' certificates. Peers dial each other over `https` and verify the certificate against
//!   that CA (the name checked is the host of the member's address). With `peer_mtls = true` a
//!   peer must also present a certificate the CA signed; storefront clients need not (client
//!   authentication is optional on the port, and required by the replica API).
//! - `[auth]` tokens (or `CARTDB_API_TOKENS` / `CARTDB_API_TOKENS_FILE`): when any is set, every
//!   public and admin call carries `authorization: Bearer TOKEN`. Only SHA-256 digests of the
//!   tokens are kept; a presented token is hashed and compared with every digest in constant
//!   time. Health and reflection stay open (load balancers and Kubernetes probes carry no token).
//! - Refusals are `UNAUTHENTICATED` and counted per credential (`cartdb_unauthenticated_total`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use cart_proto::AUTHORIZATION_HEADER;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::metrics::{Credential, Metrics};

/// API tokens from the environment, comma-separated (instead of `[auth] tokens`).
pub const TOKENS_ENV: &str = "CARTDB_API_TOKENS";
/// A file of API tokens, one per line (instead of `[auth] tokens`).
pub const TOKENS_FILE_ENV: &str = "CARTDB_API_TOKENS_FILE";
/// Shortest token accepted: a guessable token is no protection.
pub const TOKEN_MIN_CHARS: usize = 16;
/// How long a connection may take to finish its TLS handshake (a connection that never sends
/// one is dropped, not kept).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads an environment variable (`std::env::var_os` for real; tests pass their own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<std::ffi::OsString>;

/// The process environment.
pub fn process_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name)
}

/// A setting that may come from the environment instead of the config file: the value of `var`,
/// else the contents of the file `file_var` names; with the variable's name (for messages).
/// `None` when neither is set. A value that is not UTF-8, or a file that cannot be read, is an
/// error naming the variable.
pub fn from_env(env: Env, var: &'static str, file_var: &'static str) -> Result<Option<(String, &'static str)>, String> {
    let text = |name: &str, value: std::ffi::OsString| value.into_string().map_err(|_| format!("{name} is not UTF-8"));
    if let Some(value) = env(var) {
        return Ok(Some((text(var, value)?, var)));
    }
    match env(file_var) {
        None => Ok(None),
        Some(path) => {
            let path = text(file_var, path)?;
            let contents = std::fs::read_to_string(&path).map_err(|e| format!("{file_var} = {path:?}: {e}"))?;
            Ok(Some((contents, file_var)))
        }
    }
}

/// This node's TLS material, read once at start.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSettings {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    /// Peers must present a certificate signed by the CA.
    pub peer_mtls: bool,
    /// The files, for messages.
    pub cert_file: PathBuf,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert_file", &self.cert_file)
            .field("peer_mtls", &self.peer_mtls)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Reads and checks the three PEM files (the error names the setting and the file).
    pub fn load(cert_file: &Path, key_file: &Path, ca_file: &Path, peer_mtls: bool) -> Result<Self, String> {
        let read = |name: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("[tls] {name} = {:?}: {e}", path.display().to_string()))
        };
        let settings = TlsSettings {
            cert_pem: read("cert_file", cert_file)?,
            key_pem: read("key_file", key_file)?,
            ca_pem: read("ca_file", ca_file)?,
            peer_mtls,
            cert_file: cert_file.to_owned(),
        };
        for (name, path, pem) in [
            ("cert_file", cert_file, &settings.cert_pem),
            ("ca_file", ca_file, &settings.ca_pem),
        ] {
            if !has_pem_certificate(pem) {
                return Err(format!(
                    "[tls] {name} = {:?}: no PEM certificate in the file",
                    path.display().to_string()
                ));
            }
        }
        // Build both sides once so a bad key fails the start, not the first connection.
        tonic::transport::Server::builder()
            .tls_config(settings.server())
            .map_err(|e| format!("[tls] cert_file / key_file / ca_file: {e}"))?;
        Endpoint::from_static("https://check.invalid:1")
            .tls_config(settings.peer_client())
            .map_err(|e| format!("[tls] ca_file / cert_file / key_file: {e}"))?;
        Ok(settings)
    }

    /// The served side: this node's identity; the CA for client certificates (optional on the
    /// port; the replica API requires one when `peer_mtls`).
    pub fn server(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if self.peer_mtls {
            config
                .client_ca_root(Certificate::from_pem(&self.ca_pem))
                .client_auth_optional(true)
        } else {
            config
        }
    }

    /// The dialling side, towards peers: trust the CA; present this node's certificate when
    /// peers require one.
    pub fn peer_client(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if self.peer_mtls {
            config.identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
        } else {
            config
        }
    }
}

/// Whether `pem` holds a PEM certificate block.
pub fn has_pem_certificate(pem: &[u8]) -> bool {
    String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----")
}

/// The endpoint a node dials a peer (or a join seed) at: `http://ADDR`, or `https://ADDR` with
/// the peer TLS settings.
pub fn peer_endpoint(addr: &str, tls: Option<&TlsSettings>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| format!("{addr}: {e}"))?;
    match tls {
        None => Ok(endpoint),
        Some(tls) => endpoint
            .tls_config(tls.peer_client())
            .map_err(|e| format!("{addr}: {e}")),
    }
}

/// The API tokens this node accepts (none: the public and admin APIs are open), as SHA-256
/// digests.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiTokens(Arc<Vec<[u8; 32]>>);

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} tokens)", self.0.len())
    }
}

impl ApiTokens {
    /// Digests `tokens`; each must be printable ASCII without spaces, at least
    /// [`TOKEN_MIN_CHARS`] long (`origin` names where they came from, for the error).
    pub fn new<I, S>(tokens: I, origin: &str) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut digests = Vec::new();
        for (i, token) in tokens.into_iter().enumerate() {
            let token = token.as_ref();
            if token.len() < TOKEN_MIN_CHARS || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{origin}: token {} must be at least {TOKEN_MIN_CHARS} printable ASCII characters without spaces",
                    i + 1
                ));
            }
            digests.push(digest(token.as_bytes()));
        }
        Ok(ApiTokens(Arc::new(digests)))
    }

    /// The tokens the environment names (`CARTDB_API_TOKENS`, comma-separated, or
    /// `CARTDB_API_TOKENS_FILE`, one per line, blank lines and `#` comments skipped), else
    /// `[auth] tokens_file` (the same format), else `[auth] tokens`. A source that is named must
    /// give a token: an empty variable or file would otherwise leave the API open unnoticed.
    pub fn from_config(configured: Option<&[String]>, file: Option<&Path>, env: Env) -> Result<Self, String> {
        let lines = |text: &str| -> Vec<String> {
            let kept = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'));
            kept.map(str::to_owned).collect()
        };
        let (tokens, origin): (Vec<String>, &str) = match from_env(env, TOKENS_ENV, TOKENS_FILE_ENV)? {
            Some((list, TOKENS_ENV)) => {
                let tokens = list.split(',').map(str::trim).filter(|t| !t.is_empty());
                (tokens.map(str::to_owned).collect(), TOKENS_ENV)
            }
            Some((text, origin)) => (lines(&text), origin),
            None => match (file, configured) {
                (Some(path), _) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("[auth] tokens_file = {:?}: {e}", path.display().to_string()))?;
                    (lines(&text), "[auth] tokens_file")
                }
                (None, Some(tokens)) => (tokens.to_vec(), "[auth] tokens"),
                (None, None) => return Ok(ApiTokens::default()),
            },
        };
        if tokens.is_empty() {
            return Err(format!(
                "{origin} gives no token: list at least one, or remove it to leave the API open"
            ));
        }
        Self::new(tokens, origin)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `presented` is one of the tokens. Every digest is compared, each in constant time.
    pub fn admits(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        self.0
            .iter()
            .fold(false, |found, known| found | constant_time_eq(known, &presented))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Equality without an early exit (the time does not tell how many leading bytes matched); the
/// length is not secret (callers compare digests or the cluster secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The interceptor of the public and admin APIs: with tokens configured, a call needs
/// `authorization: Bearer TOKEN` with one of them.
pub fn check_token(
    tokens: ApiTokens,
    metrics: Arc<Metrics>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        if tokens.is_empty() {
            return Ok(request);
        }
        let presented = request
            .metadata()
            .get(AUTHORIZATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match presented {
            Some(token) if tokens.admits(token.as_bytes()) => Ok(request),
            Some(_) => {
                metrics.refused(Credential::Token);
                Err(Status::unauthenticated(
                    "authorization: the bearer token is not one this cluster accepts",
                ))
            }
            None => {
                metrics.refused(Credential::Token);
                Err(Status::unauthenticated(
                    "authorization: this cluster needs a bearer token (`authorization: Bearer TOKEN`; cartctl --token)",
                ))
            }
        }
    }
}

/// Whether the call came over TLS with a client certificate (verified against the CA by the
/// handshake: an unverifiable certificate ends the connection before any call).
pub fn has_peer_certificate<T>(request: &Request<T>) -> bool {
    request.peer_certs().is_some_and(|certs| !certs.is_empty())
}

/// A throwaway certificate authority and node certificates, for `cartd dev --tls` and tests:
/// `DIR/ca.pem`, and `DIR/NODE.pem` + `DIR/NODE.key` for each node, valid for `hosts` (IP
/// addresses or DNS names). Production clusters use their own PKI (README "TLS").
pub fn write_dev_pki(dir: &Path, nodes: &[&str], hosts: &[&str]) -> Result<DevPki, String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    std::fs::create_dir_all(dir).map_err(|e| fail(&dir.display().to_string(), &e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", &e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name.push(DnType::CommonName, "cartdb dev CA");
    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", &e))?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| fail("CA", &e))?;
    let write = |name: String, text: String| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| fail(&path.display().to_string(), &e))?;
        Ok(path)
    };
    let ca_file = write("ca.pem".into(), ca.pem())?;
    let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    for node in nodes {
        let mut params = CertificateParams::new(hosts.clone()).map_err(|e| fail(node, &e))?;
        params.distinguished_name.push(DnType::CommonName, *node);
        let key = KeyPair::generate().map_err(|e| fail(node, &e))?;
        let cert = params.signed_by(&key, &ca).map_err(|e| fail(node, &e))?;
        write(format!("{node}.pem"), cert.pem())?;
        let key_file = write(format!("{node}.key"), key.serialize_pem())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail(&key_file.display().to_string(), &e))?;
    }
    Ok(DevPki {
        dir: dir.to_owned(),
        ca_file,
    })
}

/// Where [`write_dev_pki`] put its files.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub dir: PathBuf,
    pub ca_file: PathBuf,
}

impl DevPki {
    /// The `[tls]` table for these files (`{node_id}` in the paths: one table for every node).
    pub fn tls_toml(&self, peer_mtls: bool) -> String {
        let quote = |p: PathBuf| toml::Value::String(p.display().to_string()).to_string();
        format!(
            "[tls]\ncert_file = {}\nkey_file = {}\nca_file = {}\npeer_mtls = {peer_mtls}\n",
            quote(self.dir.join("{node_id}.pem")),
            quote(self.dir.join("{node_id}.key")),
            quote(self.ca_file.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_admit_only_their_own() {
        let tokens = ApiTokens::new(["storefront-token-0001", "checkout-token-00002"], "test").unwrap();
        assert!(tokens.admits(b"storefront-token-0001"));
        assert!(tokens.admits(b"checkout-token-00002"));
        assert!(!tokens.admits(b"storefront-token-0002"));
        assert!(!tokens.admits(b""));
        assert!(!ApiTokens::default().admits(b"anything-at-all-0001"));
        assert!(ApiTokens::new(["short"], "test").unwrap_err().contains("at least 16"));
        assert!(ApiTokens::new(["has a space in it 0001"], "test").is_err());
        assert_eq!(format!("{tokens:?}"), "ApiTokens(2 tokens)", "tokens never print");
    }

    #[test]
    fn the_token_check_reads_the_bearer_header() {
        let tokens = ApiTokens::new(["storefront-token-0001"], "test").unwrap();
        let metrics = Arc::new(Metrics::new());
        let check = check_token(tokens, metrics);
        let with = |value: Option<&str>| {
            let mut request = Request::new(());
            if let Some(value) = value {
                request
                    .metadata_mut()
                    .insert(AUTHORIZATION_HEADER, value.parse().unwrap());
            }
            check(request)
                .map(|_| ())
                .map_err(|s| (s.code(), s.message().to_owned()))
        };
        assert!(with(Some("Bearer storefront-token-0001")).is_ok());
        assert!(
            with(Some("bearer  storefront-token-0001 ")).is_ok(),
            "scheme case and spaces"
        );
        for refused in [
            None,
            Some("storefront-token-0001"),
            Some("Basic storefront-token-0001"),
            Some("Bearer x"),
        ] {
            let (code, message) = with(refused).unwrap_err();
            assert_eq!(code, tonic::Code::Unauthenticated, "{refused:?}");
            assert!(message.starts_with("authorization"), "{message}");
        }
        let open = check_token(ApiTokens::default(), Arc::new(Metrics::new()));
        assert!(open(Request::new(())).is_ok(), "no tokens configured: open");
    }

    #[test]
    fn tokens_come_from_the_environment_first_and_a_named_source_must_give_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# storefronts\n\nstorefront-token-0001\ncheckout-token-00002\n").unwrap();
        let listed = vec!["listed-token-0000001".to_owned()];
        let env_of = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.into())
        };
        let none = env_of(vec![]);
        assert!(
            ApiTokens::from_config(None, None, &none).unwrap().is_empty(),
            "nothing named: open"
        );
        let from_list = ApiTokens::from_config(Some(&listed), None, &none).unwrap();
        assert!(from_list.admits(b"listed-token-0000001"));
        let from_file = ApiTokens::from_config(Some(&listed), Some(&file), &none).unwrap();
        assert!(from_file.admits(b"checkout-token-00002") && !from_file.admits(b"listed-token-0000001"));
        let var = env_of(vec![(TOKENS_ENV, "env-token-000000001, env-token-000000002".into())]);
        let from_var = ApiTokens::from_config(Some(&listed), Some(&file), &var).unwrap();
        assert!(from_var.admits(b"env-token-000000002") && !from_var.admits(b"storefront-token-0001"));
        let var_file = env_of(vec![(TOKENS_FILE_ENV, file.display().to_string())]);
        assert!(ApiTokens::from_config(None, None, &var_file)
            .unwrap()
            .admits(b"storefront-token-0001"));
        // Named but empty: refused, naming the source, never an open API.
        std::fs::write(dir.path().join("empty"), "# none yet\n").unwrap();
        let empty_file = Some(dir.path().join("empty"));
        let no_tokens: &[String] = &[];
        let cases = [
            (
                env_of(vec![(TOKENS_ENV, String::new())]),
                Some(listed.as_slice()),
                None,
                TOKENS_ENV,
            ),
            (env_of(vec![(TOKENS_ENV, " , ".into())]), None, None, TOKENS_ENV),
            (env_of(vec![]), Some(no_tokens), None, "[auth] tokens"),
            (env_of(vec![]), None, empty_file, "[auth] tokens_file"),
        ];
        for (env, configured, file, origin) in cases {
            let err = ApiTokens::from_config(configured, file.as_deref(), &env).unwrap_err();
            assert!(err.starts_with(origin) && err.contains("no token"), "{err}");
        }
    }

    #[test]
    fn dev_pki_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = write_dev_pki(dir.path(), &["n1"], &["127.0.0.1", "localhost"]).unwrap();
        let (cert, key) = (dir.path().join("n1.pem"), dir.path().join("n1.key"));
        let tls = TlsSettings::load(&cert, &key, &pki.ca_file, true).unwrap();
        assert!(tls.peer_mtls);
        assert!(peer_endpoint("127.0.0.1:7001", Some(&tls)).is_ok());
        // A key in place of the certificate, and a missing file, fail the start with the setting named.
        let err = TlsSettings::load(&key, &key, &pki.ca_file, false).unwrap_err();
        assert!(err.contains("cert_file"), "{err}");
        let err = TlsSettings::load(&cert, &key, &dir.path().join("nope.pem"), false).unwrap_err();
        assert!(err.contains("ca_file") && err.contains("nope.pem"), "{err}");
        let err = TlsSettings::load(&cert, &key, &key, true).unwrap_err();
        assert!(
            err.starts_with("[tls] ca_file") && err.contains("no PEM certificate"),
            "{err}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key files are the owner's only: {mode:o}");
    }
}
