//! SCM's ACME account API (`/api/acme/v2/account…`, sectigo-scm-api.md §7), on top of the
//! bridge's [`SectigoClient`] so it shares its authentication, limits and error sorting.
//!
//! What the reference warns about, and what this does about it:
//! - create is not idempotent and names need not be unique: [`AcmeApi::find_accounts`]
//!   pages through the name-filtered list and compares names exactly;
//! - `notAddedDomains` / `notRemovedDomains` come in a 200, and `{}` means "all done";
//! - v2 add/remove use the singular `/domain` path, and DELETE carries a JSON body;
//! - the account's `macKey` is a credential: it is never part of an error text.

use crate::bridge::sectigo::client::{decode, id_from_location, to_json, total_count};
use crate::bridge::sectigo::{MAX_PAGE_SIZE, SectigoClient, SectigoError};
use crate::config::Secret;
use reqwest::Method;
use serde::{Deserialize, Serialize};

/// One account as `GET /api/acme/v2/account[/{id}]` describes it. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcmeAccount {
    /// SCM's numeric id: the `{id}` in every account path.
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub acme_server: Option<String>,
    #[serde(default)]
    pub organization_id: Option<u64>,
    #[serde(default)]
    pub status: Option<String>,
    /// The EAB kid (equal to `accountId` in every example).
    #[serde(default)]
    pub mac_id: Option<String>,
    /// The EAB HMAC key, base64url without padding.
    #[serde(default)]
    pub mac_key: Option<Secret>,
}

/// The EAB pair of an account.
#[derive(Debug, Clone)]
pub struct Eab {
    pub kid: String,
    pub hmac: Secret,
}

impl AcmeAccount {
    /// The account's EAB pair, when SCM sent both halves.
    pub fn eab(&self) -> Option<Eab> {
        match (&self.mac_id, &self.mac_key) {
            (Some(kid), Some(hmac)) if !kid.is_empty() && !hmac.expose().is_empty() => Some(Eab {
                kid: kid.clone(),
                hmac: hmac.clone(),
            }),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateAccount<'a> {
    acme_server: &'a str,
    name: &'a str,
    organization_id: u64,
}

#[derive(Serialize)]
struct DomainNames<'a> {
    domains: Vec<DomainName<'a>>,
}

#[derive(Serialize)]
struct DomainName<'a> {
    name: &'a str,
}

/// The answer to adding or removing names: `{}` when all were done.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DomainChange {
    #[serde(default)]
    not_added_domains: Vec<String>,
    #[serde(default)]
    not_removed_domains: Vec<String>,
}

#[derive(Deserialize)]
struct AccountDomain {
    name: String,
}

/// The ACME part of the SCM API.
#[derive(Debug, Clone)]
pub struct AcmeApi {
    client: SectigoClient,
}

impl AcmeApi {
    pub fn new(client: SectigoClient) -> Self {
        Self { client }
    }

    /// Every account in `organization_id` on `server` whose name is exactly `name`, in id
    /// order. SCM's `name` filter is undocumented (a substring match in python-cert_manager's
    /// mock), so every page is read and names are compared here.
    pub async fn find_accounts(
        &self,
        name: &str,
        organization_id: u64,
        server: &str,
    ) -> Result<Vec<AcmeAccount>, SectigoError> {
        let mut found = Vec::new();
        let mut position = 0u64;
        loop {
            let query = [
                ("organizationId", organization_id.to_string()),
                ("name", name.to_string()),
                ("acmeServer", server.to_string()),
                ("size", MAX_PAGE_SIZE.to_string()),
                ("position", position.to_string()),
            ];
            let reply = self
                .client
                .send(Method::GET, "acme/v2/account", &query, None)
                .await?;
            let page: Vec<AcmeAccount> = decode_accounts(&reply.body, "the ACME account list")?;
            let n = page.len() as u64;
            found.extend(page.into_iter().filter(|a| a.name == name));
            position += n;
            let past_total = total_count(&reply.headers).is_some_and(|t| position >= t);
            if n < u64::from(MAX_PAGE_SIZE) || past_total {
                found.sort_by_key(|a| a.id);
                return Ok(found);
            }
        }
    }

    /// `POST /api/acme/v2/account`; returns the new account's id from `Location`.
    pub async fn create_account(
        &self,
        name: &str,
        organization_id: u64,
        server: &str,
    ) -> Result<u64, SectigoError> {
        let body = to_json(&CreateAccount {
            acme_server: server,
            name,
            organization_id,
        })?;
        let reply = self
            .client
            .send(Method::POST, "acme/v2/account", &[], Some(body))
            .await?;
        id_from_location(&reply.headers)
    }

    /// `GET /api/acme/v2/account/{id}` (holds the EAB pair).
    pub async fn account(&self, id: u64) -> Result<AcmeAccount, SectigoError> {
        let reply = self
            .client
            .send(Method::GET, &format!("acme/v2/account/{id}"), &[], None)
            .await?;
        decode_accounts(&reply.body, "the ACME account")
    }

    /// `DELETE /api/acme/v2/account/{id}`. An account that is already gone (404) counts as
    /// deleted.
    pub async fn delete_account(&self, id: u64) -> Result<(), SectigoError> {
        match self
            .client
            .send(Method::DELETE, &format!("acme/v2/account/{id}"), &[], None)
            .await
        {
            Ok(_) | Err(SectigoError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The names in an account (`GET …/{id}/domain`, every page), lower-cased.
    pub async fn account_domains(&self, id: u64) -> Result<Vec<String>, SectigoError> {
        let mut names = Vec::new();
        let mut position = 0u64;
        loop {
            let query = [
                ("size", MAX_PAGE_SIZE.to_string()),
                ("position", position.to_string()),
            ];
            let reply = self
                .client
                .send(
                    Method::GET,
                    &format!("acme/v2/account/{id}/domain"),
                    &query,
                    None,
                )
                .await?;
            let page: Vec<AccountDomain> = decode(&reply, "the ACME account's domains")?;
            let n = page.len() as u64;
            names.extend(page.into_iter().map(|d| d.name.to_ascii_lowercase()));
            position += n;
            let past_total = total_count(&reply.headers).is_some_and(|t| position >= t);
            if n < u64::from(MAX_PAGE_SIZE) || past_total {
                return Ok(names);
            }
        }
    }

    /// `POST …/{id}/domain`: returns the names SCM did not add (`notAddedDomains`).
    pub async fn add_domains(
        &self,
        id: u64,
        names: &[String],
    ) -> Result<Vec<String>, SectigoError> {
        let answer = self.change_domains(Method::POST, id, names).await?;
        Ok(answer.not_added_domains)
    }

    /// `DELETE …/{id}/domain` with the names in the body: returns `notRemovedDomains`
    /// (names the account did not hold).
    pub async fn remove_domains(
        &self,
        id: u64,
        names: &[String],
    ) -> Result<Vec<String>, SectigoError> {
        let answer = self.change_domains(Method::DELETE, id, names).await?;
        Ok(answer.not_removed_domains)
    }

    /// Adds (POST) or removes (DELETE) names; `{}` or an empty body mean all were done. A
    /// body that is not JSON (a cut-off answer) is an error and is retried: both are
    /// idempotent.
    async fn change_domains(
        &self,
        method: Method,
        id: u64,
        names: &[String],
    ) -> Result<DomainChange, SectigoError> {
        let body = to_json(&DomainNames {
            domains: names.iter().map(|n| DomainName { name: n }).collect(),
        })?;
        let path = format!("acme/v2/account/{id}/domain");
        let reply = self.client.send(method, &path, &[], Some(body)).await?;
        if reply.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(DomainChange::default());
        }
        decode_accounts(&reply.body, "the ACME account's domain change")
    }
}

/// Decodes account JSON without ever quoting it: the body holds EAB HMAC keys, and serde's
/// messages can include the offending input.
fn decode_accounts<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    what: &'static str,
) -> Result<T, SectigoError> {
    serde_json::from_slice(body).map_err(|e| SectigoError::Decode {
        what,
        detail: format!(
            "unexpected JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    })
}
