//! The simulator's ACME account API (sectigo-scm-api.md §7 and §7a), a child module of
//! [`super`] so it shares the simulator's state, authentication, faults and counters.
//!
//! Rules, each from the reference (harshest reading where it is unconfirmed):
//! - `GET /api/acme/v1/server` lists the configured servers (§7).
//! - `GET /api/acme/v2/account` needs `organizationId` (HMEDU's mock: 400 `-1001`), pages
//!   with `size` ≤ 200 (default 10, so a client that does not page misses accounts, PCM #178),
//!   sets `X-Total-Count`, filters `name` as a case-insensitive substring (PCM's mock) and
//!   `acmeServer` exactly. Items carry `id`, `accountId` = `macId`, `macKey`, … (§7).
//! - `POST /api/acme/v2/account` needs `organizationId` ≥ 1, `name` 1..128, `acmeServer`
//!   naming a known server (OAS); answers 201 + `Location`, no body; names need not be
//!   unique (nothing documents a uniqueness rule), so a careless retry makes a twin. Status
//!   starts `pending`. The EAB pair comes from the pool a test gives ([`ScmSim::set_eab_pool`]);
//!   an empty pool is a 400.
//! - `GET|DELETE /api/acme/v2/account/{id}`: 404 with an error body for unknown ids (OAS);
//!   DELETE → 204, empty.
//! - `POST|DELETE /api/acme/v2/account/{id}/domain` (singular: the plural `/domains` is v1,
//!   PCM PR #183, and is a 404 on v2) with `{"domains":[{"name":…}]}`: a name is added only
//!   when it is in the inventory, active, delegated (ACTIVE, SSL) to the account's
//!   organisation and DCV `VALIDATED` (§7a "safe model"); others come back in
//!   `notAddedDomains` in a 200. Re-adding a mapped name is accepted. Remove answers
//!   `notRemovedDomains` for names the account does not hold.
//! - `GET /api/acme/v2/account/{id}/domain` pages like the account list; items have `name`,
//!   `validUntil`, `stickyUntil` (add time + 1 year), `validationId`.

use super::{Resp, State, empty, error, json_response, page_bounds};
use hyper::Method;
use hyper::header::HeaderValue;
use serde_json::{Value, json};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// One ACME server as `GET /api/acme/v1/server` lists it.
#[derive(Debug, Clone)]
pub struct SimAcmeServer {
    pub url: String,
    pub name: String,
    pub ca_id: u64,
    pub validation_type: &'static str,
}

#[derive(Debug, Clone)]
struct SimAccount {
    id: u64,
    name: String,
    acme_server: String,
    organization_id: u64,
    mac_id: String,
    mac_key: String,
    /// Name → when it was added (for `validUntil`).
    domains: BTreeMap<String, chrono::DateTime<chrono::Utc>>,
}

/// The ACME part of the simulator's state.
#[derive(Debug)]
pub(super) struct AcmeState {
    servers: Vec<SimAcmeServer>,
    accounts: BTreeMap<u64, SimAccount>,
    next_id: u64,
    eab_pool: VecDeque<(String, String)>,
    /// The next account creation takes effect but its answer is lost, and from then on every
    /// ACME request fails with 503: certline cannot learn the id (for the kill -9 test).
    freeze_after_create: bool,
    frozen: bool,
    /// This many creations take effect but lose their answer (connection reset).
    lose_create_answers: u32,
    /// Per name: how many times it went into an account where it was not before.
    mapped: HashMap<String, u64>,
}

impl Default for AcmeState {
    fn default() -> Self {
        Self {
            servers: vec![SimAcmeServer {
                url: "https://acme.sectigo.com/v2/OV".into(),
                name: "OV ACME Server".into(),
                ca_id: 40485,
                validation_type: "OV",
            }],
            accounts: BTreeMap::new(),
            next_id: 24_280,
            eab_pool: VecDeque::new(),
            freeze_after_create: false,
            frozen: false,
            lose_create_answers: 0,
            mapped: HashMap::new(),
        }
    }
}

/// An ACME route (`/api/acme/...`).
pub(super) enum AcmeRoute {
    Servers,
    ListAccounts,
    CreateAccount,
    Account(u64),
    DeleteAccount(u64),
    RenameAccount(u64),
    AddDomains(u64),
    RemoveDomains(u64),
    ListDomains(u64),
    NotFound,
}

/// The route for `/api/<seg…>` when it is an ACME path.
pub(super) fn route(method: &Method, seg: &[&str]) -> Option<AcmeRoute> {
    let id = |s: &str| s.parse::<u64>().ok();
    Some(match (seg, method) {
        (["acme", "v1", "server"], &Method::GET) => AcmeRoute::Servers,
        (["acme", "v2", "account"], &Method::GET) => AcmeRoute::ListAccounts,
        (["acme", "v2", "account"], &Method::POST) => AcmeRoute::CreateAccount,
        (["acme", "v2", "account", i], m) => match (id(i), m) {
            (Some(i), &Method::GET) => AcmeRoute::Account(i),
            (Some(i), &Method::DELETE) => AcmeRoute::DeleteAccount(i),
            (Some(i), &Method::PUT) => AcmeRoute::RenameAccount(i),
            _ => AcmeRoute::NotFound,
        },
        (["acme", "v2", "account", i, "domain"], m) => match (id(i), m) {
            (Some(i), &Method::POST) => AcmeRoute::AddDomains(i),
            (Some(i), &Method::DELETE) => AcmeRoute::RemoveDomains(i),
            (Some(i), &Method::GET) => AcmeRoute::ListDomains(i),
            _ => AcmeRoute::NotFound,
        },
        (["acme", ..], _) => AcmeRoute::NotFound,
        _ => return None,
    })
}

/// Answers an authenticated ACME request.
pub(super) fn dispatch(s: &mut State, route: &AcmeRoute, query: &str, body: &[u8]) -> Resp {
    if s.acme.frozen {
        return error(503, -2, "Service temporarily unavailable.");
    }
    let unknown = || error(404, -1, "Entity not found.");
    match route {
        AcmeRoute::Servers => {
            let list: Vec<Value> = s
                .acme
                .servers
                .iter()
                .map(|v| {
                    json!({"url": v.url, "caId": v.ca_id, "name": v.name,
                           "singleProductId": 1, "multiProductId": 2, "wcProductId": 3,
                           "certValidationType": v.validation_type})
                })
                .collect();
            json_response(200, &Value::Array(list))
        }
        AcmeRoute::ListAccounts => list_accounts(s, query),
        AcmeRoute::CreateAccount => create_account(s, body),
        AcmeRoute::Account(id) => match s.acme.accounts.get(id) {
            Some(a) => json_response(200, &account_json(a)),
            None => unknown(),
        },
        AcmeRoute::DeleteAccount(id) => match s.acme.accounts.remove(id) {
            Some(_) => empty(204),
            None => unknown(),
        },
        AcmeRoute::RenameAccount(id) => {
            let name = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("name").and_then(Value::as_str).map(String::from));
            match (s.acme.accounts.get_mut(id), name) {
                (None, _) => unknown(),
                (Some(_), None) => error(400, -7, "name is required but missing."),
                (Some(a), Some(n)) => {
                    a.name = n;
                    empty(200)
                }
            }
        }
        AcmeRoute::AddDomains(id) => {
            let Some(names) = body_names(body) else {
                return error(400, -7, "domains is required but missing.");
            };
            let Some(org) = s.acme.accounts.get(id).map(|a| a.organization_id) else {
                return unknown();
            };
            let mut not_added = Vec::new();
            let now = chrono::Utc::now();
            for name in names {
                let lower = name.trim_end_matches('.').to_ascii_lowercase();
                if may_map(s, &lower, org) {
                    let a = s.acme.accounts.get_mut(id).expect("checked");
                    if let Entry::Vacant(slot) = a.domains.entry(lower.clone()) {
                        slot.insert(now);
                        *s.acme.mapped.entry(lower).or_default() += 1;
                    }
                } else {
                    not_added.push(name);
                }
            }
            if not_added.is_empty() {
                json_response(200, &json!({}))
            } else {
                json_response(200, &json!({"notAddedDomains": not_added}))
            }
        }
        AcmeRoute::RemoveDomains(id) => {
            let Some(names) = body_names(body) else {
                return error(400, -7, "domains is required but missing.");
            };
            let Some(a) = s.acme.accounts.get_mut(id) else {
                return unknown();
            };
            let not_removed: Vec<String> = names
                .into_iter()
                .filter(|n| {
                    a.domains
                        .remove(&n.trim_end_matches('.').to_ascii_lowercase())
                        .is_none()
                })
                .collect();
            if not_removed.is_empty() {
                json_response(200, &json!({}))
            } else {
                json_response(200, &json!({"notRemovedDomains": not_removed}))
            }
        }
        AcmeRoute::ListDomains(id) => {
            let Some(a) = s.acme.accounts.get(id) else {
                return unknown();
            };
            let items: Vec<Value> = a
                .domains
                .iter()
                .map(|(name, added)| {
                    let until = (*added + chrono::Duration::days(365))
                        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                        .to_string();
                    json!({"name": name, "validUntil": until, "stickyUntil": until,
                           "validationId": format!("v-{id}")})
                })
                .collect();
            page(query, items)
        }
        AcmeRoute::NotFound => error(404, -1, "Unknown error."),
    }
}

/// §7a's safe model of what may be mapped: in the inventory, active, delegated (ACTIVE,
/// SSL) to the account's organisation, and DCV validated.
fn may_map(s: &State, name: &str, org: u64) -> bool {
    s.domains.values().any(|d| {
        d.name == name
            && d.active
            && d.dcv.status == "VALIDATED"
            && d.delegations.iter().any(|g| {
                g.org_id == org && g.status == "ACTIVE" && g.cert_types.iter().any(|t| t == "SSL")
            })
    })
}

fn body_names(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let names: Vec<String> = v
        .get("domains")?
        .as_array()?
        .iter()
        .map(|d| d.get("name").and_then(Value::as_str).map(String::from))
        .collect::<Option<_>>()?;
    (!names.is_empty()).then_some(names)
}

fn query_map(query: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// One page of `items` by `position` and `size` (≤ 200, default 10), with `X-Total-Count`.
fn page(query: &str, items: Vec<Value>) -> Resp {
    let q = query_map(query);
    let (position, size) = match page_bounds(&q) {
        Ok(bounds) => bounds,
        Err(message) => return error(400, -1601, message),
    };
    let total = items.len() as u64;
    let page: Vec<Value> = items.into_iter().skip(position).take(size).collect();
    let mut r = json_response(200, &Value::Array(page));
    r.headers_mut()
        .insert("x-total-count", HeaderValue::from(total));
    r
}

fn list_accounts(s: &mut State, query: &str) -> Resp {
    let q = query_map(query);
    let Some(org) = q.get("organizationId").and_then(|o| o.parse::<u64>().ok()) else {
        return error(400, -1001, "Value of 'organizationId' must not be null.");
    };
    let name = q.get("name").map(|n| n.to_ascii_lowercase());
    let server = q.get("acmeServer");
    let items: Vec<Value> = s
        .acme
        .accounts
        .values()
        .filter(|a| a.organization_id == org)
        .filter(|a| {
            name.as_ref()
                .is_none_or(|n| a.name.to_ascii_lowercase().contains(n.as_str()))
        })
        .filter(|a| server.is_none_or(|v| a.acme_server == *v))
        .map(account_json)
        .collect();
    page(query, items)
}

fn create_account(s: &mut State, body: &[u8]) -> Resp {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return error(400, -1, "Unknown error.");
    };
    let Some(org) = v.get("organizationId").and_then(Value::as_u64) else {
        return error(400, -1001, "Value of 'organizationId' must not be null.");
    };
    if org < 1 {
        return error(400, -1601, "Field ''organizationId'' has invalid value.");
    }
    let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() || name.chars().count() > 128 {
        return error(400, -1601, "Field ''name'' has invalid value.");
    }
    let server = v
        .get("acmeServer")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(known) = s
        .acme
        .servers
        .iter()
        .find(|x| x.url == server || x.name == server)
    else {
        return error(400, -1601, "Field ''acmeServer'' has invalid value.");
    };
    let acme_server = known.url.clone();
    let Some((mac_id, mac_key)) = s.acme.eab_pool.pop_front() else {
        return error(
            400,
            -2,
            "Internal error. Please contact Support for details.",
        );
    };
    let id = s.acme.next_id;
    s.acme.next_id += 1;
    s.acme.accounts.insert(
        id,
        SimAccount {
            id,
            name: name.to_owned(),
            acme_server,
            organization_id: org,
            mac_id,
            mac_key,
            domains: BTreeMap::new(),
        },
    );
    if s.acme.freeze_after_create {
        s.acme.freeze_after_create = false;
        s.acme.frozen = true;
        s.acme.lose_create_answers += 1;
    }
    if s.acme.lose_create_answers > 0 {
        s.acme.lose_create_answers -= 1;
        s.faults.resets_after += 1;
    }
    let mut r = empty(201);
    r.headers_mut().insert(
        "location",
        HeaderValue::from_str(&format!("{}/api/acme/v2/account/{id}", s.base_url)).expect("ascii"),
    );
    r
}

fn account_json(a: &SimAccount) -> Value {
    json!({
        "id": a.id, "accountId": a.mac_id, "macId": a.mac_id, "macKey": a.mac_key,
        "acmeServer": a.acme_server, "name": a.name, "organizationId": a.organization_id,
        "certValidationType": "OV", "status": "pending", "ovOrderNumber": null,
        "ovAnchorID": null, "validationId": null, "contacts": "",
    })
}

/// A simulated ACME account as tests inspect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAccountView {
    pub id: u64,
    pub name: String,
    pub mac_id: String,
    pub mac_key: String,
    pub domains: Vec<String>,
}

impl super::ScmSim {
    /// The EAB pairs (kid, base64url HMAC key) new accounts take, in order.
    pub fn set_eab_pool(&self, pairs: &[(String, String)]) {
        self.st().acme.eab_pool = pairs.iter().cloned().collect();
    }

    /// Makes SCM list another ACME server (an OV server at `url`), e.g. a local Pebble.
    pub fn add_acme_server(&self, url: &str) {
        let mut s = self.st();
        let ca_id = 40_486 + s.acme.servers.len() as u64;
        s.acme.servers.push(SimAcmeServer {
            url: url.into(),
            name: format!("Test ACME Server {ca_id}"),
            ca_id,
            validation_type: "OV",
        });
    }

    /// Every ACME account, in id order.
    pub fn acme_accounts(&self) -> Vec<AcmeAccountView> {
        self.st()
            .acme
            .accounts
            .values()
            .map(|a| AcmeAccountView {
                id: a.id,
                name: a.name.clone(),
                mac_id: a.mac_id.clone(),
                mac_key: a.mac_key.clone(),
                domains: a.domains.keys().cloned().collect(),
            })
            .collect()
    }

    /// Makes an account as an operator would in SCM's UI (for `accounts = "shared"`).
    pub fn add_acme_account(&self, name: &str, org: u64) -> u64 {
        let mut s = self.st();
        let (mac_id, mac_key) = s.acme.eab_pool.pop_front().expect("EAB pool is empty");
        let id = s.acme.next_id;
        s.acme.next_id += 1;
        let server = s.acme.servers[0].url.clone();
        s.acme.accounts.insert(
            id,
            SimAccount {
                id,
                name: name.into(),
                acme_server: server,
                organization_id: org,
                mac_id,
                mac_key,
                domains: BTreeMap::new(),
            },
        );
        id
    }

    /// The next account creation takes effect but its answer is lost (reset), and from then
    /// on every ACME request fails with 503 until [`ScmSim::thaw_acme`].
    pub fn freeze_acme_after_next_create(&self) {
        self.st().acme.freeze_after_create = true;
    }

    /// Ends [`ScmSim::freeze_acme_after_next_create`]'s outage.
    pub fn thaw_acme(&self) {
        let mut s = self.st();
        s.acme.frozen = false;
        s.acme.freeze_after_create = false;
    }

    /// How many times `name` was put into an account that did not hold it.
    pub fn acme_mapped_times(&self, name: &str) -> u64 {
        self.st().acme.mapped.get(name).copied().unwrap_or(0)
    }

    /// Sets every delegation of `name` back to `REQUESTED` (waiting for an MRAO).
    pub fn set_delegation_requested(&self, name: &str) {
        self.set_delegation_status(name, "REQUESTED");
    }

    /// Approves every delegation of `name` (`ACTIVE`).
    pub fn approve_delegations(&self, name: &str) {
        self.set_delegation_status(name, "ACTIVE");
    }

    fn set_delegation_status(&self, name: &str, status: &'static str) {
        let mut s = self.st();
        let id = super::find_by_name(&s, name).expect("unknown domain");
        for g in &mut s.domains.get_mut(&id).expect("found").delegations {
            g.status = status;
        }
    }

    /// The next `n` account creations take effect but their answers are lost (reset).
    pub fn lose_next_create_answers(&self, n: u32) {
        self.st().acme.lose_create_answers = n;
    }
}
