//! What one exchange with SCM returned, before any parsing, and how a sent request becomes
//! one. Both the API calls ([`super::client`]) and the OAuth2 token request
//! ([`super::auth`]) read their answers here, so neither needs the other for it.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::error::{SectigoError, transport_error};

/// What a successful exchange returned, before any parsing.
pub struct ScmResponse {
    /// Response headers (`Location`, `X-Total-Count`, ...).
    pub headers: HeaderMap,
    /// The raw body; parse it with [`decode`](super::client::decode) only where SCM documents one.
    pub body: bytes::Bytes,
}

/// Reads the status, headers and whole body of a sent request; a failure to send or to read
/// the body is a transient transport error.
pub(super) async fn read_response(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<(StatusCode, HeaderMap, bytes::Bytes), SectigoError> {
    let response = sent.map_err(|e| transport_error(&e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|e| transport_error(&e))?;
    Ok((status, headers, body))
}
