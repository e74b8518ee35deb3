//! What a client presents to a cluster that runs TLS or API tokens (README "TLS and tokens"):
//! [`Credentials`] in [`crate::ClientOptions::credentials`], and [`SecurityArgs`], the command-line
//! flags `cartctl`, `cart-bench` and `cart-jepsen` share.

use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;

/// TLS towards the nodes: the CA that signed their certificates, and optionally this client's
/// own certificate (for a cluster that asks clients for one).
#[derive(Clone)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl ClientTls {
    /// Reads the CA file (PEM) and, when both are given, a client certificate and key.
    pub fn from_files(ca_file: &Path, cert_and_key: Option<(&Path, &Path)>) -> Result<Self, ClientError> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path).map_err(|e| ClientError::Usage {
                reason: format!("{flag} {}: {e}", path.display()),
            })
        };
        let ca_pem = read("--tls-ca", ca_file)?;
        if !String::from_utf8_lossy(&ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ClientError::Usage {
                reason: format!("--tls-ca {}: no PEM certificate in the file", ca_file.display()),
            });
        }
        let identity = match cert_and_key {
            None => None,
            Some((cert, key)) => Some((read("--tls-cert", cert)?, read("--tls-key", key)?)),
        };
        let tls = ClientTls {
            ca_pem,
            identity,
            domain: None,
        };
        // Build it once: a bad certificate or key fails here, naming the flags.
        Endpoint::from_static("https://check.invalid:1")
            .tls_config(tls.config())
            .map_err(|e| ClientError::Usage {
                reason: format!("--tls-ca / --tls-cert / --tls-key: {e}"),
            })?;
        Ok(tls)
    }

    /// Checks the nodes' certificates for this name instead of each endpoint's host (endpoints
    /// given as IP addresses, certificates issued for DNS names).
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    pub(crate) fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}

/// TLS settings and the bearer token a client presents; the default presents nothing (plain
/// HTTP/2, no token). The token never prints.
#[derive(Clone, Default)]
pub struct Credentials {
    pub tls: Option<ClientTls>,
    token: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Credentials {
    /// Every call carries `authorization: Bearer TOKEN`.
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| ClientError::Usage {
                reason: "the token must be printable ASCII".into(),
            })?;
        self.token = Some(value);
        Ok(self)
    }

    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The endpoint of `address` (`HOST:PORT` or a URI): `https` with these TLS settings, else
    /// `http`. Clients key addresses by their `http://` form (membership addresses are HOST:PORT).
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, ClientError> {
        let invalid = |e: tonic::transport::Error| ClientError::InvalidEndpoint {
            endpoint: address.to_owned(),
            reason: e.to_string(),
        };
        let uri = crate::client::uri_of(address);
        let Some(tls) = &self.tls else {
            return Endpoint::from_shared(uri).map_err(invalid);
        };
        // With TLS, `http://` (any case) becomes `https://`; any other scheme is refused rather
        // than dialled in plain text.
        let (scheme, rest) = uri.split_once("://").unwrap_or(("", &uri));
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(ClientError::InvalidEndpoint {
                endpoint: address.to_owned(),
                reason: format!("scheme {scheme:?}: with --tls-ca an endpoint is HOST:PORT or https://HOST:PORT"),
            });
        }
        Endpoint::from_shared(format!("https://{rest}"))
            .map_err(invalid)?
            .tls_config(tls.config())
            .map_err(invalid)
    }

    /// Adds the token (if any) to a request's metadata.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert(cart_proto::AUTHORIZATION_HEADER, token.clone());
        }
    }
}

/// The flags of every cartdb client tool for TLS and tokens (each also read from the
/// environment, so a token need not be on the command line). Its `Debug` hides the token.
#[derive(Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// Talk TLS to the nodes, trusting this CA certificate (PEM).
    #[arg(long, global = true, env = "CARTDB_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present when the server side (a proxy in front of the nodes,
    /// say) asks for one; needs --tls-key. The nodes ask only their peers.
    #[arg(
        long,
        global = true,
        env = "CARTDB_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Key of --tls-cert (PEM).
    #[arg(
        long,
        global = true,
        env = "CARTDB_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Name the nodes' certificates are checked against (default: each endpoint's host).
    #[arg(long, global = true, env = "CARTDB_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
    /// Bearer token for clusters with `[auth]` tokens.
    #[arg(
        long,
        global = true,
        env = "CARTDB_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bearer token (its first line that is not blank or a `#` comment).
    #[arg(long, global = true, env = "CARTDB_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for SecurityArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityArgs")
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_domain", &self.tls_domain)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl SecurityArgs {
    /// The credentials these flags describe (files read now: a wrong path fails here).
    pub fn credentials(&self) -> Result<Credentials, ClientError> {
        let mut credentials = Credentials::default();
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), cert, key) => {
                let mut tls = ClientTls::from_files(ca, cert.as_deref().zip(key.as_deref()))?;
                if let Some(domain) = &self.tls_domain {
                    tls = tls.with_domain(domain);
                }
                credentials = credentials.with_tls(tls);
            }
            (None, None, None) if self.tls_domain.is_none() => {}
            (None, ..) => {
                return Err(ClientError::Usage {
                    reason: "--tls-cert, --tls-key and --tls-domain need --tls-ca".into(),
                })
            }
        }
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| ClientError::Usage {
                    reason: format!("--token-file {}: {e}", path.display()),
                })?;
                // The first token line (blank lines and `#` comments skipped, as the nodes do).
                let mut lines = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'));
                Some(lines.next().unwrap_or("").to_owned())
            }
            (None, None) => None,
        };
        match token {
            Some(token) if token.is_empty() => Err(ClientError::Usage {
                reason: "the token is empty".into(),
            }),
            Some(token) => credentials.with_token(&token),
            None => Ok(credentials),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_file(dir: &Path) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let path = dir.join("ca.pem");
        std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
        path
    }

    #[test]
    fn with_tls_every_endpoint_is_https_and_other_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Credentials::default().with_tls(ClientTls::from_files(&ca_file(dir.path()), None).unwrap());
        for given in [
            "10.0.0.1:7001",
            "http://10.0.0.1:7001",
            "HTTP://10.0.0.1:7001",
            "https://10.0.0.1:7001",
        ] {
            let endpoint = tls.endpoint(given).unwrap();
            assert_eq!(endpoint.uri().scheme_str(), Some("https"), "{given}");
        }
        let err = tls.endpoint("grpc://10.0.0.1:7001").unwrap_err();
        assert!(err.to_string().contains("scheme"), "{err}");
        let plain = Credentials::default().endpoint("10.0.0.1:7001").unwrap();
        assert_eq!(plain.uri().scheme_str(), Some("http"));
    }

    #[test]
    fn flags_read_files_name_problems_and_never_print_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "# the storefront's\n\n  storefront-token-0001  \n").unwrap();
        let args = SecurityArgs {
            tls_ca: Some(ca_file(dir.path())),
            token_file: Some(token_file),
            ..SecurityArgs::default()
        };
        let credentials = args.credentials().unwrap();
        let mut request = tonic::Request::new(());
        credentials.authorize(&mut request);
        let header = request.metadata().get(cart_proto::AUTHORIZATION_HEADER).unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer storefront-token-0001");
        let shown = format!(
            "{credentials:?} {:?}",
            SecurityArgs {
                token: Some("storefront-token-0001".into()),
                ..SecurityArgs::default()
            }
        );
        assert!(!shown.contains("storefront-token-0001"), "{shown}");
        // A key in place of a CA, a missing file, a certificate without its CA: refused by name.
        let not_a_ca = SecurityArgs {
            tls_ca: Some(dir.path().join("token")),
            ..SecurityArgs::default()
        };
        assert!(not_a_ca.credentials().unwrap_err().to_string().contains("--tls-ca"));
        let no_ca = SecurityArgs {
            tls_domain: Some("cart-a.internal".into()),
            ..SecurityArgs::default()
        };
        assert!(no_ca.credentials().unwrap_err().to_string().contains("need --tls-ca"));
    }
}
