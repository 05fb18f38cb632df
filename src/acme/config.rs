//! The `[sectigo.acme]` section: which SCM ACME server certline maps domains for, and how
//! accounts relate to API keys. Absent means off.

use crate::config::ConfigError;
use serde::Deserialize;

/// How SCM ACME accounts relate to certline's API keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountModel {
    /// One account per API key, created by certline, holding exactly that key's eligible
    /// domains; deleted when the key is revoked. A host's EAB then reaches only its own names.
    #[default]
    PerKey,
    /// Every eligible domain goes into one existing account (`account_id`), as a small site
    /// does by hand. Every host that gets its EAB can obtain certificates for every name in it.
    Shared,
}

/// The `[sectigo.acme]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The ACME server as SCM names it in `GET /api/acme/v1/server` and in the accounts'
    /// `acmeServer`, e.g. `https://acme.sectigo.com/v2/OV`. Also the `server=` handed to hosts.
    pub acme_server: String,

    /// The organisation the accounts belong to (`organizationId`; SCM requires it). Defaults
    /// to `[sectigo].org_id`.
    #[serde(default)]
    pub org_id: Option<u64>,

    /// `per_key` (default) or `shared`.
    #[serde(default)]
    pub accounts: AccountModel,

    /// The existing account every domain goes into when `accounts = "shared"` (SCM's numeric
    /// id from the account list, not the ACME `accountId`).
    #[serde(default)]
    pub account_id: Option<u64>,

    /// Per-key account names are this prefix plus the key id (12 hex digits of the key's
    /// SHA-256), never the key itself.
    #[serde(default = "default_account_name_prefix")]
    pub account_name_prefix: String,

    /// Answer `command acme apikey K` with the account's EAB (kid and HMAC key). Off by
    /// default because the line port is plain TCP: anyone on the path sees the HMAC key.
    /// With it on, certline also keeps each account's EAB in its store.
    #[serde(default)]
    pub hand_out_eab: bool,

    /// How often a key with registered but not yet eligible domains is looked at again
    /// (DCV may complete in Sectigo at any time).
    #[serde(default = "default_pending_recheck_secs")]
    pub pending_recheck_secs: u64,

    /// How often a fully mapped key is compared with SCM again (someone may have changed the
    /// account by hand).
    #[serde(default = "default_recheck_hours")]
    pub recheck_hours: u64,
}

fn default_account_name_prefix() -> String {
    "certline-".into()
}

fn default_pending_recheck_secs() -> u64 {
    300
}

fn default_recheck_hours() -> u64 {
    24
}

/// The longest account name SCM accepts (OAS: `name` 1..128).
const MAX_ACCOUNT_NAME: usize = 128;

impl AcmeConfig {
    /// Checks the section; `bridge_org_id` is `[sectigo].org_id`.
    pub fn validate(&self, bridge_org_id: Option<u64>) -> Result<(), ConfigError> {
        let server = self.acme_server.trim();
        if server.is_empty() || server.len() > 1024 {
            return Err(ConfigError::invalid(
                "sectigo.acme.acme_server",
                "must name the ACME server as SCM lists it (GET /api/acme/v1/server), \
                 e.g. \"https://acme.sectigo.com/v2/OV\"; 1 to 1024 characters",
            ));
        }
        if server.chars().any(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "sectigo.acme.acme_server",
                "must not contain spaces: hosts receive it as one token (server=...)",
            ));
        }
        if self.org_id.or(bridge_org_id).is_none() {
            return Err(ConfigError::invalid(
                "sectigo.acme.org_id",
                "SCM needs an organizationId for ACME accounts: set sectigo.acme.org_id \
                 or sectigo.org_id",
            ));
        }
        match (self.accounts, self.account_id) {
            (AccountModel::Shared, None) => {
                return Err(ConfigError::invalid(
                    "sectigo.acme.account_id",
                    "accounts = \"shared\" needs the SCM id of the existing account \
                     (the numeric `id` in GET /api/acme/v2/account)",
                ));
            }
            (AccountModel::PerKey, Some(_)) => {
                return Err(ConfigError::invalid(
                    "sectigo.acme.account_id",
                    "only used with accounts = \"shared\"; remove it or set accounts = \"shared\"",
                ));
            }
            _ => {}
        }
        let prefix = &self.account_name_prefix;
        if prefix.is_empty()
            || prefix.len() + 12 > MAX_ACCOUNT_NAME
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::invalid(
                "sectigo.acme.account_name_prefix",
                "1 to 116 characters of letters, digits, '-', '_' and '.'",
            ));
        }
        if self.pending_recheck_secs == 0 || self.recheck_hours == 0 {
            return Err(ConfigError::invalid(
                "sectigo.acme.pending_recheck_secs",
                "pending_recheck_secs and recheck_hours must be at least 1",
            ));
        }
        Ok(())
    }

    /// The organisation accounts are created in.
    pub fn organization(&self, bridge_org_id: Option<u64>) -> u64 {
        self.org_id.or(bridge_org_id).unwrap_or_default()
    }

    /// The SCM account name for a key: the prefix and the key id, never the key.
    pub fn account_name(&self, key_id: &str) -> String {
        format!("{}{key_id}", self.account_name_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> AcmeConfig {
        toml::from_str(toml_text).expect("valid [sectigo.acme]")
    }

    #[test]
    fn defaults_are_per_key_and_no_eab_on_the_wire() {
        let c = parse(r#"acme_server = "https://acme.sectigo.com/v2/OV""#);
        assert_eq!(c.accounts, AccountModel::PerKey);
        assert!(!c.hand_out_eab);
        assert_eq!(c.account_name("0123456789ab"), "certline-0123456789ab");
        assert!(c.validate(Some(7)).is_ok());
        assert_eq!(c.organization(Some(7)), 7);
    }

    #[test]
    fn refuses_combinations_that_cannot_work() {
        let c = parse(r#"acme_server = "https://acme.sectigo.com/v2/OV""#);
        let e = c.validate(None).unwrap_err().to_string();
        assert!(e.contains("organizationId"), "{e}");

        let c = parse("acme_server = \"x\"\naccounts = \"shared\"");
        let e = c.validate(Some(1)).unwrap_err().to_string();
        assert!(e.contains("sectigo.acme.account_id"), "{e}");

        let c = parse("acme_server = \"x\"\naccount_id = 5");
        assert!(c.validate(Some(1)).is_err(), "account_id without shared");

        let c = parse("acme_server = \"a b\"");
        assert!(c.validate(Some(1)).is_err(), "a space in the server");

        let c = parse("acme_server = \"x\"\naccount_name_prefix = \"a key\"");
        assert!(c.validate(Some(1)).is_err());

        let c = parse("acme_server = \"x\"\naccounts = \"shared\"\naccount_id = 9");
        assert!(c.validate(Some(1)).is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<AcmeConfig>("acme_server = \"x\"\nhandout_eab = true").is_err());
    }
}
