//! Finding the admin API and talking to it.

use crate::admin::views::ApiErrorBody;
use crate::app::Config;
use crate::config::secret::Secret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use url::Url;

/// A CLI failure, worded as what to do next.
#[derive(Debug, Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "cannot reach the admin API at {url}: {reason}. Is certline running with an [admin] section? Point --admin-url (or CERTLINE_ADMIN_URL) at its admin.listen address"
    )]
    Connect { url: String, reason: String },
    #[error(
        "the admin API rejected the token (401): set CERTLINE_ADMIN_TOKEN (or --admin-token) to the server's admin token (admin.token_env / admin.token_file)"
    )]
    Unauthorized,
    #[error("the admin API answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("writing the output: {0}")]
    Output(std::io::Error),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Where the admin API is, and the token for it.
pub struct Endpoint {
    pub url: Url,
    pub token: Secret,
}

impl Endpoint {
    /// Resolves the URL and token from the flags/environment (`url`, `token`), falling back
    /// to the `[admin]` section of `config`.
    pub fn resolve(
        url: Option<String>,
        token: Option<String>,
        config: Option<&Path>,
    ) -> Result<Self, CliError> {
        let admin = match config {
            Some(path) => {
                let config = Config::from_file(path)
                    .map_err(|e| CliError::Usage(format!("{e}; fix the file or drop --config")))?;
                Some(config.admin.ok_or_else(|| {
                    CliError::Usage(format!(
                        "{} has no [admin] section; add one (see README.md) or give --admin-url and --admin-token",
                        path.display()
                    ))
                })?)
            }
            None => None,
        };
        let url = match (url, &admin) {
            (Some(u), _) => u,
            (None, Some(a)) => {
                let mut addr = a.listen;
                // A wildcard listener is reached on loopback from the same machine.
                if addr.ip().is_unspecified() {
                    addr.set_ip(match addr.ip() {
                        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    });
                }
                format!("http://{addr}")
            }
            (None, None) => {
                return Err(CliError::Usage(
                    "where is the admin API? give --admin-url, set CERTLINE_ADMIN_URL, or pass --config with an [admin] section".into(),
                ));
            }
        };
        let url = Url::parse(&url).map_err(|e| {
            CliError::Usage(format!(
                "--admin-url {url:?} is not a URL ({e}); use e.g. http://127.0.0.1:10080"
            ))
        })?;
        let token = match (token, &admin) {
            (Some(t), _) => Secret::new(t),
            (None, Some(a)) => a.token().map_err(|e| CliError::Usage(e.to_string()))?,
            (None, None) => {
                return Err(CliError::Usage(
                    "no admin token: set CERTLINE_ADMIN_TOKEN (or --admin-token), or pass --config with an [admin] section".into(),
                ));
            }
        };
        Ok(Self { url, token })
    }
}

/// A small typed client for the admin API.
pub struct AdminClient {
    http: reqwest::Client,
    endpoint: Endpoint,
}

impl AdminClient {
    pub fn new(endpoint: Endpoint) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| CliError::Usage(format!("setting up HTTP: {e}")))?;
        Ok(Self { http, endpoint })
    }

    /// The URL of `segments` under the API root; each segment is percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.endpoint.url.clone();
        {
            let mut path = url.path_segments_mut().expect("http URLs have a path");
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    /// `GET` a JSON resource.
    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, CliError> {
        let request = self.http.get(self.url(segments)).query(query);
        self.send(request).await
    }

    /// `POST` with an optional JSON body.
    pub async fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        segments: &[&str],
        body: Option<&B>,
    ) -> Result<T, CliError> {
        let mut request = self.http.post(self.url(segments));
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// `GET` a long streamed answer (no overall timeout: a backup takes as long as the store
    /// is large); the response once its status is a success.
    pub async fn get_stream(&self, segments: &[&str]) -> Result<reqwest::Response, CliError> {
        let request = self
            .http
            .get(self.url(segments))
            .timeout(Duration::from_secs(7 * 24 * 3600));
        self.send_checked(request).await
    }

    /// The base URL, for messages.
    pub fn base_url(&self) -> &Url {
        &self.endpoint.url
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, CliError> {
        let response = self.send_checked(request).await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| CliError::Connect {
            url: self.endpoint.url.to_string(),
            reason: error_chain(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| CliError::Api {
            status: status.as_u16(),
            message: format!(
                "unexpected answer ({e}); is the URL a certline admin API of the same version?"
            ),
        })
    }

    /// Sends with the token; a refusal becomes the [`CliError`] that says what to do.
    async fn send_checked(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CliError> {
        let response = request
            .bearer_auth(self.endpoint.token.expose())
            .send()
            .await
            .map_err(|e| CliError::Connect {
                url: self.endpoint.url.to_string(),
                reason: error_chain(&e),
            })?;
        let status = response.status();
        // Only the bearer check challenges with `WWW-Authenticate`; a 401 without it is the
        // line protocol's "unknown api key" (an import under a key that does not exist).
        if status == reqwest::StatusCode::UNAUTHORIZED
            && response
                .headers()
                .contains_key(reqwest::header::WWW_AUTHENTICATE)
        {
            return Err(CliError::Unauthorized);
        }
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.map_err(|e| CliError::Connect {
            url: self.endpoint.url.to_string(),
            reason: error_chain(&e),
        })?;
        let message = serde_json::from_slice::<ApiErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_owned());
        Err(CliError::Api {
            status: status.as_u16(),
            message,
        })
    }
}

/// An error with its causes, e.g. "error sending request: connection refused".
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
