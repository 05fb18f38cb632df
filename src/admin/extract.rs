//! Extractors that answer like every other admin error: `{"error": "..."}` with the right
//! status. axum's own `Json` and `Query` reject with `text/plain` bodies, which a client of a
//! JSON API (and `certline` itself) cannot parse; these wrap them and keep axum's status and
//! message (400 for a bad query or malformed JSON, 415 without `Content-Type: application/json`,
//! 422 for JSON of the wrong shape).

use super::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// A JSON body, or an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A query string, or an [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let hint = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "; send the body with `Content-Type: application/json`"
        }
        _ => "",
    };
    ApiError::new(
        rejection.status(),
        format!("{}{hint}", rejection.body_text()),
    )
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::new(
        rejection.status(),
        format!(
            "{}; see README.md, \"Operating certline\", for the query fields",
            rejection.body_text()
        ),
    )
}
