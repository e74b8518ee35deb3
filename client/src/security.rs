//! What a client presents to a cluster that runs TLS or API tokens (README "TLS and tokens"):
//! [`Credentials`] in [`crate::ClientOptions::credentials`], and [`SecurityArgs`], the command-line
//! flags `cartctl`, `cart-bench` and `cart-jepsen` share.

use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;

/// The header a bearer token travels in.
pub const AUTHORIZATION: &str = "authorization";

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
        Ok(ClientTls {
            ca_pem,
            identity,
            domain: None,
        })
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
        match &self.tls {
            None => Endpoint::from_shared(uri).map_err(invalid),
            Some(tls) => {
                let uri = match uri.strip_prefix("http://") {
                    Some(rest) => format!("https://{rest}"),
                    None => uri,
                };
                Endpoint::from_shared(uri)
                    .map_err(invalid)?
                    .tls_config(tls.config())
                    .map_err(invalid)
            }
        }
    }

    /// Adds the token (if any) to a request's metadata.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(token) = &self.token {
            request.metadata_mut().insert(AUTHORIZATION, token.clone());
        }
    }
}

/// The flags of every cartdb client tool for TLS and tokens (each also read from the
/// environment, so a token need not be on the command line).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// Talk TLS to the nodes, trusting this CA certificate (PEM).
    #[arg(long, global = true, env = "CARTDB_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present, for clusters that ask for one; needs --tls-key.
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
    /// File holding the bearer token (its first line).
    #[arg(long, global = true, env = "CARTDB_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
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
                Some(text.lines().next().unwrap_or("").trim().to_owned())
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
