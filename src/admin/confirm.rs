//! The claim confirmation links (`crate::confirm`): `/link/confirm/{token}` and
//! `/link/revoke/{token}`. The token is the credential; no bearer token is needed.
//!
//! `GET` only shows a page with a button; the `POST` it sends does the work. Mail scanners
//! and link previews fetch every link in a message, and a `GET` that revoked would let them
//! revoke keys nobody meant to.

use super::AdminState;
use crate::confirm::token_hash;
use crate::store::{LinkAction, LinkOutcome};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::Html;
use std::net::SocketAddr;
use std::sync::Arc;

type Page = (StatusCode, Html<String>);

/// `GET /link/confirm/{token}`.
pub async fn confirm_page(Path(token): Path<String>) -> Page {
    form(LinkAction::Confirm, &token)
}

/// `GET /link/revoke/{token}`.
pub async fn revoke_page(Path(token): Path<String>) -> Page {
    form(LinkAction::Revoke, &token)
}

/// `POST /link/confirm/{token}`.
pub async fn confirm(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
) -> Page {
    follow(&state, peer, LinkAction::Confirm, &token).await
}

/// `POST /link/revoke/{token}`.
pub async fn revoke(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
) -> Page {
    follow(&state, peer, LinkAction::Revoke, &token).await
}

fn well_formed(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

fn form(action: LinkAction, token: &str) -> Page {
    if !well_formed(token) {
        return page(
            StatusCode::NOT_FOUND,
            "Unknown link",
            "This link is not valid.",
        );
    }
    let (title, button) = match action {
        LinkAction::Confirm => ("Confirm your certline API key", "Confirm the key"),
        LinkAction::Revoke => ("Revoke a certline API key", "Revoke the key"),
    };
    let body = format!(
        "<p>Press the button to go on. The link works once.</p>\
         <form method=\"post\"><button type=\"submit\">{button}</button></form>"
    );
    (StatusCode::OK, Html(html(title, &body)))
}

async fn follow(state: &AdminState, peer: SocketAddr, action: LinkAction, token: &str) -> Page {
    if !well_formed(token) {
        return page(
            StatusCode::NOT_FOUND,
            "Unknown link",
            "This link is not valid.",
        );
    }
    let now = chrono::Utc::now().timestamp();
    let outcome = match state
        .store
        .use_link(&token_hash(token), action, peer.ip(), now)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "claim link: storage failure");
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Try again later",
                "The server could not store this. Nothing changed; try the link again later.",
            );
        }
    };
    if matches!(
        outcome,
        LinkOutcome::Confirmed { .. } | LinkOutcome::Revoked { .. }
    ) && let Err(e) = state.store.commit().await
    {
        tracing::error!(error = %e, "claim link: commit failed");
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Try again later",
            "The server could not store this. Try the link again later.",
        );
    }
    match outcome {
        LinkOutcome::Confirmed { key_id, requeued } => {
            tracing::info!(key = %key_id, requeued, ip = %peer.ip(), "key confirmed by its e-mail link");
            page(
                StatusCode::OK,
                "Key confirmed",
                &format!("The API key {key_id} is confirmed. Its domains go on to Sectigo."),
            )
        }
        LinkOutcome::Revoked { key_id } => {
            tracing::info!(key = %key_id, ip = %peer.ip(), "key revoked by its e-mail link");
            page(
                StatusCode::OK,
                "Key revoked",
                &format!(
                    "The API key {key_id} is revoked. Hosts using it are refused from now on."
                ),
            )
        }
        LinkOutcome::AlreadyUsed => page(
            StatusCode::GONE,
            "Link already used",
            "This link was used before; each link works once.",
        ),
        LinkOutcome::Expired => page(
            StatusCode::GONE,
            "Link expired",
            "This link has expired. Claim the key again to get a new message, or ask the operator.",
        ),
        LinkOutcome::KeyRevoked => page(
            StatusCode::CONFLICT,
            "Key revoked",
            "This key was revoked, so it cannot be confirmed. Get a new key.",
        ),
        LinkOutcome::Unknown => page(
            StatusCode::NOT_FOUND,
            "Unknown link",
            "This link is not valid.",
        ),
    }
}

fn page(status: StatusCode, title: &str, text: &str) -> Page {
    (status, Html(html(title, &format!("<p>{text}</p>"))))
}

/// Every value placed here is ours (titles, key ids in hex), never the visitor's input.
fn html(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1>{body}</body></html>\n"
    )
}
