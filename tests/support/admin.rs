//! Helpers for tests of the admin API: a config section with a token file, and an HTTP
//! client that sends the token.

use std::net::SocketAddr;
use std::path::Path;

/// The admin token the tests use.
pub const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// An `[admin]` section on a free loopback port, its token in a file under `dir`.
pub fn admin_toml(dir: &Path) -> String {
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        token_file.display()
    )
}

/// A reqwest client for one admin listener.
pub struct Admin {
    pub base: String,
    pub http: reqwest::Client,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    /// `GET path` with the token; returns status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("admin GET");
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// `GET path` with the token, parsed as JSON (must be 200).
    pub async fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// `POST path` with the token and an optional JSON body.
    pub async fn post(&self, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.expect("admin POST");
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Every domain `GET /api/domains?query` lists, following `next_cursor` page by page.
    pub async fn domains(&self, query: &str) -> Vec<serde_json::Value> {
        self.all_pages("/api/domains", query, "domains").await
    }

    /// Every item of a paged listing (`items` names the array in each page).
    pub async fn all_pages(&self, path: &str, query: &str, items: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{path}?{query}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = self.json(&url).await;
            out.extend(page[items].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }
}

/// Names of a domain list.
pub fn names(domains: &[serde_json::Value]) -> Vec<String> {
    domains
        .iter()
        .map(|d| d["domain"].as_str().unwrap().to_owned())
        .collect()
}
