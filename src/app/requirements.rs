//! Settings that are each valid but, together, leave certline waiting for something that can
//! never happen.
//!
//! [`Config::validate`] checks each section on its own. The traps are between sections: the
//! default `require_confirmed_key = true` needs someone to confirm keys, which needs the
//! admin listener; `[smtp]` mails links that only work if their recipients can reach them; a
//! DNS-validation method needs either a hook or an operator who reads the records. Such a
//! configuration starts, answers every host with `ok`, and then parks their domains for ever.
//! [`unmet_requirements`] finds every such combination, and both `certline check-config` and
//! `certline serve` refuse a configuration that has one, saying both ways out.
//!
//! It is a pure function of the parsed [`Config`] (no files, no environment, no network), so
//! a configuration reload can run it before swapping anything in.

use super::config::Config;
use crate::bridge::config::DcvMethod;
use std::fmt;
use std::net::IpAddr;
use url::Host;

/// One requirement the configuration can never meet, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// A stable name for the combination (for tests, logs and the README's list).
    pub rule: Rule,
    /// What can never happen and the ways out, naming the keys to change.
    pub message: &'static str,
}

/// The combinations [`unmet_requirements`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `require_confirmed_key` with nothing that can confirm a key.
    ConfirmationNeedsAdmin,
    /// `[smtp]` with no admin listener to serve the links it mails.
    SmtpNeedsAdmin,
    /// `[smtp]` mails links under a loopback or unspecified address.
    SmtpLinksUnreachable,
    /// DNS validation with neither a hook to publish records nor an operator to see them.
    DcvNeedsHookOrAdmin,
    /// A DNS hook that never runs because DNS validation is off.
    DcvHookNeverRuns,
}

impl Rule {
    /// Every rule, in the order [`unmet_requirements`] reports them.
    pub const ALL: [Rule; 5] = [
        Rule::ConfirmationNeedsAdmin,
        Rule::SmtpNeedsAdmin,
        Rule::SmtpLinksUnreachable,
        Rule::DcvNeedsHookOrAdmin,
        Rule::DcvHookNeverRuns,
    ];

    /// The message for this rule. Static on purpose: README.md quotes each one verbatim
    /// (tests/first_run.rs checks that), so an operator can search for what they saw.
    pub fn message(self) -> &'static str {
        match self {
            Rule::ConfirmationNeedsAdmin => {
                "sectigo.require_confirmed_key is true (the default) but there is no [admin] section, so no key can ever be confirmed and no domain would ever reach Sectigo. Either add [admin] (confirm links are then mailed with [smtp] or logged, and `certline confirm KEY-ID` confirms a key by hand), or set sectigo.require_confirmed_key = false to forward the domains of unconfirmed keys too."
            }
            Rule::SmtpNeedsAdmin => {
                "[smtp] needs an [admin] section: the confirm and revoke links it mails are served by the admin listener. Either add [admin] (with admin.public_url set to the address users reach it at), or remove [smtp]."
            }
            Rule::SmtpLinksUnreachable => {
                "[smtp] mails links under admin.public_url, which is a loopback or unspecified address (without public_url it is http://<admin.listen>), so no recipient can open them. Either set admin.public_url to the address users reach the admin listener at (e.g. https://certline.example.org, through a TLS proxy), or remove [smtp]: the links are then logged for the operator, and `certline confirm KEY-ID` confirms a key by hand."
            }
            Rule::DcvNeedsHookOrAdmin => {
                "sectigo.dcv_method asks certline to validate domains by DNS, but there is no sectigo.dcv_hook to publish the records and no [admin] section where an operator would see them, so domains would wait in dcv_action_required for ever. Either set sectigo.dcv_hook to a program that publishes the record, or add [admin] so that `certline domains --needs-action` lists the records to publish (or set sectigo.dcv_method = \"none\")."
            }
            Rule::DcvHookNeverRuns => {
                "sectigo.dcv_hook is set but sectigo.dcv_method is \"none\", so the hook never runs and certline never starts a DNS validation. Either set sectigo.dcv_method = \"cname\" or \"txt\", or remove sectigo.dcv_hook."
            }
        }
    }
}

impl Unmet {
    fn new(rule: Rule) -> Self {
        Self {
            rule,
            message: rule.message(),
        }
    }
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

/// Every requirement `config` can never meet, in [`Rule::ALL`]'s order; empty when none.
pub fn unmet_requirements(config: &Config) -> Vec<Unmet> {
    let has_admin = config.admin.is_some();
    let mut unmet = Vec::new();
    if let Some(sectigo) = &config.sectigo
        && sectigo.require_confirmed_key
        && !has_admin
    {
        unmet.push(Unmet::new(Rule::ConfirmationNeedsAdmin));
    }
    if config.smtp.is_some() {
        match &config.admin {
            None => unmet.push(Unmet::new(Rule::SmtpNeedsAdmin)),
            Some(admin) if !reachable_from_elsewhere(&admin.public_url(admin.listen)) => {
                unmet.push(Unmet::new(Rule::SmtpLinksUnreachable));
            }
            Some(_) => {}
        }
    }
    if let Some(sectigo) = &config.sectigo {
        let dcv_on = sectigo.dcv_method != DcvMethod::None;
        if dcv_on && sectigo.dcv_hook.is_none() && !has_admin {
            unmet.push(Unmet::new(Rule::DcvNeedsHookOrAdmin));
        }
        if !dcv_on && sectigo.dcv_hook.is_some() {
            unmet.push(Unmet::new(Rule::DcvHookNeverRuns));
        }
    }
    unmet
}

/// Whether a browser on another machine could possibly open `url`: not a loopback or
/// unspecified address, not `localhost`. (Whether a firewall lets it through is beyond us.)
fn reachable_from_elsewhere(url: &url::Url) -> bool {
    let ip = match url.host() {
        None => return false,
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            return name != "localhost" && !name.ends_with(".localhost");
        }
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
    };
    let ip = ip.to_canonical();
    !(ip.is_loopback() || ip.is_unspecified())
}

/// A configuration refused because of [`unmet_requirements`]: every problem, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub Vec<Unmet>);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this configuration can never do what it asks ({} problem(s); `certline check-config FILE` lists them too)",
            self.0.len()
        )?;
        for unmet in &self.0 {
            write!(f, "\n  - {unmet}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// `Ok` when every requirement can be met, else every one that cannot.
pub fn check(config: &Config) -> Result<(), Refused> {
    let unmet = unmet_requirements(config);
    if unmet.is_empty() {
        Ok(())
    } else {
        Err(Refused(unmet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTIGO: &str = r#"
        [sectigo]
        allowed_suffixes = ["example.edu"]
        [sectigo.auth]
        mode = "headers"
        login = "api"
        customer_uri = "example"
        password_env = "UNUSED"
    "#;
    const ADMIN: &str = "[admin]\ntoken_env = \"UNUSED\"\n";
    const SMTP: &str = "[smtp]\nhost = \"m\"\nfrom = \"c@example.org\"\n";

    fn rules(text: &str) -> Vec<Rule> {
        let config = Config::from_toml(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        unmet_requirements(&config)
            .into_iter()
            .map(|u| u.rule)
            .collect()
    }

    fn sectigo(settings: &str) -> String {
        SECTIGO.replace("[sectigo.auth]", &format!("{settings}\n[sectigo.auth]"))
    }

    #[test]
    fn defaults_and_no_bridge_meet_everything() {
        assert_eq!(rules(""), []);
        assert_eq!(rules(ADMIN), []);
        assert_eq!(
            rules(&sectigo("require_confirmed_key = false")),
            [],
            "without confirmation nothing waits"
        );
        assert_eq!(rules(&format!("{}{ADMIN}", sectigo(""))), []);
    }

    #[test]
    fn require_confirmed_key_needs_admin() {
        assert_eq!(rules(&sectigo("")), [Rule::ConfirmationNeedsAdmin]);
        assert_eq!(
            rules(&sectigo("require_confirmed_key = true")),
            [Rule::ConfirmationNeedsAdmin]
        );
    }

    #[test]
    fn smtp_needs_admin_and_a_reachable_public_url() {
        assert_eq!(rules(SMTP), [Rule::SmtpNeedsAdmin]);
        assert_eq!(
            rules(&format!("{ADMIN}{SMTP}")),
            [Rule::SmtpLinksUnreachable],
            "default listen is loopback"
        );
        let with = |extra: &str| rules(&format!("{ADMIN}{extra}\n{SMTP}"));
        for unreachable in [
            "public_url = \"http://127.0.0.1:10080\"",
            "public_url = \"http://localhost:10080/certline\"",
            "public_url = \"https://Certline.LOCALHOST.\"",
            "public_url = \"http://[::1]:8080\"",
            "listen = \"0.0.0.0:10080\"",
            "listen = \"[::]:10080\"",
            "listen = \"[::ffff:127.0.0.1]:10080\"",
        ] {
            assert_eq!(
                with(unreachable),
                [Rule::SmtpLinksUnreachable],
                "{unreachable}"
            );
        }
        for reachable in [
            "public_url = \"https://certline.example.org\"",
            "listen = \"192.0.2.7:10080\"",
            "listen = \"127.0.0.1:10080\"\npublic_url = \"http://10.1.2.3:10080\"",
        ] {
            assert_eq!(with(reachable), [], "{reachable}");
        }
    }

    #[test]
    fn dns_validation_needs_a_hook_or_an_operator() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook");
        std::fs::write(&hook, "#!/bin/sh\n").unwrap();
        let hook = format!("dcv_hook = {:?}", hook.display().to_string());
        let base = "require_confirmed_key = false";
        for method in ["cname", "txt"] {
            let dcv = format!("{base}\ndcv_method = \"{method}\"");
            assert_eq!(rules(&sectigo(&dcv)), [Rule::DcvNeedsHookOrAdmin]);
            assert_eq!(rules(&format!("{}{ADMIN}", sectigo(&dcv))), []);
            assert_eq!(rules(&sectigo(&format!("{dcv}\n{hook}"))), []);
        }
        assert_eq!(
            rules(&sectigo(&format!("{base}\n{hook}"))),
            [Rule::DcvHookNeverRuns]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_in_order() {
        let text = format!("{SMTP}{}", sectigo("dcv_method = \"txt\""));
        let config = Config::from_toml(&text).unwrap();
        let refused = check(&config).unwrap_err();
        assert_eq!(
            refused.0.iter().map(|u| u.rule).collect::<Vec<_>>(),
            [
                Rule::ConfirmationNeedsAdmin,
                Rule::SmtpNeedsAdmin,
                Rule::DcvNeedsHookOrAdmin
            ]
        );
        let shown = refused.to_string();
        assert!(shown.contains("3 problem(s)"), "{shown}");
        for u in &refused.0 {
            assert!(shown.contains(&format!("\n  - {}", u.message)), "{shown}");
        }
    }

    #[test]
    fn every_message_names_two_ways_out() {
        for rule in Rule::ALL {
            let m = rule.message();
            assert!(
                m.contains("Either ") && m.contains(", or "),
                "{rule:?}: {m}"
            );
        }
    }
}
