//! Who certline is to SCM: the header login, or OAuth2 client credentials with a cached
//! bearer token that is refreshed before it expires and dropped when SCM refuses it.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use super::Secret;
use super::error::{SectigoError, classify_failure, truncate};
use super::response::read_response;

/// The credentials the client presents.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Legacy admin login: `login`, `password`, `customerUri` headers on every request.
    Headers {
        /// Admin login name.
        login: String,
        /// Admin password.
        password: Secret,
        /// Customer URI (e.g. `sunet`).
        customer_uri: String,
    },
    /// OAuth2 client credentials; the client fetches and caches a bearer token.
    OAuth2 {
        /// Token endpoint for the form POST.
        token_url: Url,
        /// API key client id.
        client_id: String,
        /// API key client secret.
        client_secret: Secret,
    },
}

pub(super) enum AuthState {
    Headers(HeaderMap),
    OAuth2 {
        token_url: Url,
        client_id: String,
        client_secret: Secret,
        cache: Mutex<TokenCache>,
    },
}

#[derive(Default)]
pub(super) struct TokenCache {
    current: Option<CachedToken>,
    generation: u64,
}

struct CachedToken {
    header: HeaderValue,
    refresh_at: Instant,
    generation: u64,
}

impl AuthState {
    /// Headers that authenticate one request, and for OAuth2 the generation of the token
    /// used, so a 401 invalidates exactly that token and not a newer one. A new token is
    /// fetched with `http`, the client's own connection pool.
    pub(super) async fn headers(
        &self,
        http: &reqwest::Client,
    ) -> Result<(HeaderMap, Option<u64>), SectigoError> {
        match self {
            AuthState::Headers(h) => Ok((h.clone(), None)),
            AuthState::OAuth2 {
                token_url,
                client_id,
                client_secret,
                cache,
            } => {
                let mut cache = cache.lock().await;
                if let Some(t) = &cache.current
                    && Instant::now() < t.refresh_at
                {
                    let mut h = HeaderMap::new();
                    h.insert(AUTHORIZATION, t.header.clone());
                    return Ok((h, Some(t.generation)));
                }
                let (token, lifetime) =
                    fetch_token(http, token_url, client_id, client_secret).await?;
                // Refresh a little before SCM would refuse the token: a fifth of its life,
                // at most 30 s, early.
                let lead = (lifetime / 5).min(Duration::from_secs(30));
                let mut header =
                    header_value("access token", &format!("Bearer {}", token.expose()), true)?;
                header.set_sensitive(true);
                cache.generation += 1;
                let generation = cache.generation;
                cache.current = Some(CachedToken {
                    header: header.clone(),
                    refresh_at: Instant::now() + lifetime.saturating_sub(lead),
                    generation,
                });
                tracing::debug!(
                    expires_in_secs = lifetime.as_secs(),
                    "obtained a Sectigo OAuth2 access token"
                );
                let mut h = HeaderMap::new();
                h.insert(AUTHORIZATION, header);
                Ok((h, Some(generation)))
            }
        }
    }

    pub(super) async fn forget_token(&self, generation: u64) {
        if let AuthState::OAuth2 { cache, .. } = self {
            let mut cache = cache.lock().await;
            if cache.current.as_ref().map(|t| t.generation) == Some(generation) {
                cache.current = None;
            }
        }
    }
}

/// Asks the OAuth2 token endpoint for an access token and how long it lives.
async fn fetch_token(
    http: &reqwest::Client,
    token_url: &Url,
    client_id: &str,
    client_secret: &Secret,
) -> Result<(Secret, Duration), SectigoError> {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", client_id)
        .append_pair("client_secret", client_secret.expose())
        .finish();
    let request = http
        .post(token_url.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form);
    let (status, headers, body) = read_response(request.send().await).await?;
    tracing::debug!(status = status.as_u16(), "sectigo token endpoint answered");
    if status.is_success() {
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        // The body holds the token: report where parsing failed, never serde's text,
        // which can quote the input.
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| SectigoError::Decode {
            what: "the OAuth2 token request",
            detail: format!(
                "expected JSON with access_token and expires_in; {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ),
        })?;
        if t.access_token.is_empty() {
            return Err(SectigoError::Decode {
                what: "the OAuth2 token request",
                detail: "empty access_token".into(),
            });
        }
        // Without expires_in, assume a short life rather than caching forever.
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(60));
        return Ok((Secret::new(t.access_token), lifetime));
    }
    match status.as_u16() {
        400 | 401 | 403 => {
            #[derive(Deserialize)]
            struct OAuthError {
                #[serde(default)]
                error: Option<String>,
                #[serde(default)]
                error_description: Option<String>,
            }
            let parsed: Option<OAuthError> = serde_json::from_slice(&body).ok();
            let text = parsed
                .map(|e| {
                    [e.error, e.error_description]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": ")
                })
                .filter(|s| !s.is_empty())
                .map(|s| truncate(&s, 200));
            Err(SectigoError::Unauthorized {
                code: None,
                description: Some(format!(
                    "token endpoint refused the client credentials (HTTP {}){}",
                    status.as_u16(),
                    text.map(|t| format!(": {t}")).unwrap_or_default()
                )),
            })
        }
        _ => Err(classify_failure(status, &headers, &body, token_url)),
    }
}

pub(super) fn header_value(
    what: &str,
    value: &str,
    sensitive: bool,
) -> Result<HeaderValue, SectigoError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        SectigoError::Setup(format!(
            "the {what} contains characters that cannot be sent in an HTTP header"
        ))
    })?;
    v.set_sensitive(sensitive);
    Ok(v)
}
