//! How a call to SCM can fail, sorted by what the caller should do next, and how an HTTP
//! answer becomes one of those failures.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde_json::Value;
use url::Url;

/// Sectigo error code for "Such domain already exists".
pub const CODE_DOMAIN_EXISTS: i64 = -700;
/// Sectigo error code for "The domain ''{0}'' does not exist." (DCV on an unknown name).
pub const CODE_DOMAIN_UNKNOWN: i64 = -727;

// Errors

/// What kind of temporary failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransientKind {
    /// The request (or reading the response) took longer than the configured timeout.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The connection broke: reset, closed before a full response, TLS failure mid-way.
    Network,
    /// SCM answered 5xx (or 408).
    Server,
    /// SCM answered 429.
    RateLimited,
}

impl fmt::Display for TransientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransientKind::Timeout => "timeout",
            TransientKind::Connect => "cannot connect",
            TransientKind::Network => "connection broken",
            TransientKind::Server => "server error",
            TransientKind::RateLimited => "rate limited",
        })
    }
}

/// Every way a call to SCM can fail, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum SectigoError {
    /// Try again later (with backoff; at least `retry_after` if SCM said so).
    #[error("Sectigo is temporarily unavailable ({kind}{}): {detail}; retry later", status_suffix(*.status))]
    Transient {
        /// The kind of failure.
        kind: TransientKind,
        /// HTTP status, when SCM answered at all.
        status: Option<u16>,
        /// Parsed `Retry-After`, when present.
        retry_after: Option<Duration>,
        /// What happened, for the operator.
        detail: String,
    },
    /// SCM refused the credentials (401). Nothing else will work until an operator fixes
    /// `[sectigo.auth]` or the admin account/API key in SCM.
    #[error(
        "Sectigo rejected certline's credentials (HTTP 401{}); check [sectigo.auth] and that the admin or API key is active in SCM",
        code_description_suffix(*.code, .description.as_deref())
    )]
    Unauthorized {
        /// Sectigo's error code (e.g. -16), if the body had one.
        code: Option<i64>,
        /// Sectigo's description (e.g. "Unknown user"), if the body had one.
        description: Option<String>,
    },
    /// SCM refused this request (a 4xx other than 401/408/429). Final for this step; keep the
    /// code and description and show them.
    #[error("Sectigo refused the request (HTTP {status}{}): {description}", code_suffix(*.code))]
    Api {
        /// HTTP status.
        status: u16,
        /// Sectigo's (negative) error code, when the body carried one.
        code: Option<i64>,
        /// Sectigo's description, or a note that the body had none.
        description: String,
    },
    /// A successful status whose body is not what SCM documents (truncated or malformed
    /// JSON, a 201 without `Location`). Seen with broken proxies and interrupted responses;
    /// retryable.
    #[error("Sectigo's response to {what} could not be understood ({detail}); retry later")]
    Decode {
        /// Which call.
        what: &'static str,
        /// The parser's complaint (position, not content).
        detail: String,
    },
    /// SCM answered with a redirect. certline never follows one (the credentials would go
    /// along), and SCM's API does not redirect: the base URL is wrong. Final.
    #[error(
        "Sectigo answered {url} with HTTP {status} (redirect to {location}); sectigo.base_url is probably wrong: \
         it must be the API root including /api, over https://, on your instance's host \
         (e.g. https://cert-manager.com/api or https://admin.enterprise.sectigo.com/api)"
    )]
    Redirect {
        /// HTTP status (301, 302, 307, 308, ...).
        status: u16,
        /// The URL that was requested (no credentials are ever in it).
        url: String,
        /// Where SCM pointed, or `nowhere` without a `Location` header.
        location: String,
    },
    /// The client could not be built (TLS backend, invalid header value in the login).
    #[error("cannot set up the Sectigo client: {0}")]
    Setup(String),
}

fn status_suffix(status: Option<u16>) -> String {
    status.map(|s| format!(", HTTP {s}")).unwrap_or_default()
}

fn code_suffix(code: Option<i64>) -> String {
    code.map(|c| format!(", code {c}")).unwrap_or_default()
}

fn code_description_suffix(code: Option<i64>, description: Option<&str>) -> String {
    match (code, description) {
        (Some(c), Some(d)) => format!(", code {c}: {d}"),
        (Some(c), None) => format!(", code {c}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}

impl SectigoError {
    /// Whether the same request may succeed later without anyone changing anything:
    /// transient failures and undecodable responses.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SectigoError::Transient { .. } | SectigoError::Decode { .. }
        )
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SectigoError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Sectigo's error code, if the response carried one.
    pub fn code(&self) -> Option<i64> {
        match self {
            SectigoError::Api { code, .. } | SectigoError::Unauthorized { code, .. } => *code,
            _ => None,
        }
    }

    /// "Such domain already exists" (-700): for a create, the desired state is reached.
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            SectigoError::Api {
                code: Some(CODE_DOMAIN_EXISTS),
                ..
            }
        )
    }

    /// "The domain does not exist" (-727), the answer of DCV calls for names SCM lacks.
    pub fn is_unknown_domain(&self) -> bool {
        matches!(
            self,
            SectigoError::Api {
                code: Some(CODE_DOMAIN_UNKNOWN),
                ..
            }
        )
    }
}

/// Sectigo's error body: `{"code":-16,"description":"Unknown user"}`; the OpenAPI spec adds
/// optional `items` and `details`. Parsed leniently, field by field, so a body whose `items`
/// is `null` or holds numbers (or whose `code` is a string) still yields its code and
/// description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiErrorBody {
    /// Negative error code.
    pub code: Option<i64>,
    /// Human-readable description.
    pub description: Option<String>,
    /// Extra items (OpenAPI only), each as text.
    pub items: Vec<String>,
    /// Extra details (OpenAPI only).
    pub details: Option<String>,
}

impl ApiErrorBody {
    /// Reads an error body; `None` when it is not a JSON object at all.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let Value::Object(map) = serde_json::from_slice::<Value>(body).ok()? else {
            return None;
        };
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        };
        let code = map.get("code").and_then(|c| match c {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        let items = match map.get("items") {
            Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
            Some(Value::Null) | None => Vec::new(),
            Some(other) => text(other).into_iter().collect(),
        };
        Some(ApiErrorBody {
            code,
            description: map.get("description").and_then(text),
            items,
            details: map.get("details").and_then(text),
        })
    }

    /// The description with `details` and `items` appended, for the operator.
    fn full_description(&self) -> Option<String> {
        let mut parts: Vec<String> = self.description.iter().cloned().collect();
        if let Some(d) = &self.details {
            parts.push(d.clone());
        }
        if !self.items.is_empty() {
            parts.push(self.items.join(", "));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Status vocabularies

pub(super) fn transport_error(e: &reqwest::Error) -> SectigoError {
    let kind = if e.is_timeout() {
        TransientKind::Timeout
    } else if e.is_connect() {
        TransientKind::Connect
    } else {
        TransientKind::Network
    };
    SectigoError::Transient {
        kind,
        status: None,
        retry_after: None,
        detail: error_chain(e),
    }
}

/// The error and its causes on one line ("error sending request ...: connection closed
/// before message completed"), since the top-level reqwest message alone hides the cause.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

pub(super) fn classify_failure(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    url: &Url,
) -> SectigoError {
    let parsed = ApiErrorBody::parse(body);
    let code = parsed.as_ref().and_then(|p| p.code);
    let description = parsed
        .as_ref()
        .and_then(ApiErrorBody::full_description)
        .map(|d| truncate(&d, 500));
    match status.as_u16() {
        300..=399 => SectigoError::Redirect {
            status: status.as_u16(),
            url: url.to_string(),
            location: headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| truncate(l, 200))
                .unwrap_or_else(|| "nowhere".into()),
        },
        401 => SectigoError::Unauthorized { code, description },
        408 | 429 | 500..=599 => SectigoError::Transient {
            kind: if status == StatusCode::TOO_MANY_REQUESTS {
                TransientKind::RateLimited
            } else {
                TransientKind::Server
            },
            status: Some(status.as_u16()),
            retry_after: retry_after(headers),
            detail: match (code, description) {
                (Some(c), Some(d)) => format!("code {c}: {d}"),
                (None, Some(d)) => d,
                _ => format!("HTTP {}", status.canonical_reason().unwrap_or("error")),
            },
        },
        s => SectigoError::Api {
            status: s,
            code,
            description: description.unwrap_or_else(|| {
                // Never echo a non-JSON body: it could be anything, e.g. a proxy page.
                let ctype = headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no content type");
                format!(
                    "no Sectigo error body ({} bytes, {})",
                    body.len(),
                    truncate(ctype, 60)
                )
            }),
        },
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((when - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

pub(super) fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("17"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(17)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn failures_are_classified_by_status_and_body() {
        let h = HeaderMap::new();
        let u = Url::parse("https://scm.example/api/domain/v1").unwrap();
        let e = classify_failure(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"code":-732,"description":"Invalid domain name."}"#,
            &u,
        );
        assert!(
            matches!(&e, SectigoError::Api { status: 400, code: Some(-732), description } if description == "Invalid domain name.")
        );
        assert!(!e.is_retryable());
        let e = classify_failure(StatusCode::UNAUTHORIZED, &h, b"", &u);
        assert!(matches!(
            e,
            SectigoError::Unauthorized {
                code: None,
                description: None
            }
        ));
        let e = classify_failure(StatusCode::NOT_FOUND, &h, b"<html>secret-ish</html>", &u);
        assert!(!e.to_string().contains("secret-ish"), "{e}");
        let e = classify_failure(StatusCode::BAD_GATEWAY, &h, b"", &u);
        assert!(e.is_retryable());
        let e = classify_failure(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"code":-700,"description":"Such domain already exists"}"#,
            &u,
        );
        assert!(e.is_already_exists());
        // items null or non-strings, code as a string: code and description survive.
        let e = classify_failure(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"code":"-723","description":"x is not a high-level domain.","items":null}"#,
            &u,
        );
        assert_eq!(e.code(), Some(-723));
        assert!(e.to_string().contains("not a high-level domain"), "{e}");
        let e = classify_failure(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"code":-1601,"description":"Field invalid.","items":[1,null,"size"],"details":null}"#,
            &u,
        );
        assert_eq!(e.code(), Some(-1601));
        assert!(e.to_string().contains("Field invalid.; 1, size"), "{e}");
        // A redirect names the URL and what to check.
        let mut moved = HeaderMap::new();
        moved.insert(
            reqwest::header::LOCATION,
            HeaderValue::from_static("https://cert-manager.com/customer/x"),
        );
        let e = classify_failure(StatusCode::MOVED_PERMANENTLY, &moved, b"", &u);
        let text = e.to_string();
        assert!(text.contains("https://scm.example/api/domain/v1"), "{text}");
        assert!(text.contains("base_url"), "{text}");
        assert!(!e.is_retryable());
    }
}
