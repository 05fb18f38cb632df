//! Which name Sectigo validates for a forwarded domain.
//!
//! SCM runs DCV only on "high-level" domains: a start or submit on `www.dept.example.edu`
//! is refused with `-723 … is not a high-level domain. Only high-level domains can be
//! validated.`, and subdomains inherit their registrable domain's validation
//! (`shared/reference/sectigo-scm-api.md` §2c, §6e). So certline validates each domain at
//! its *registrable* domain, found with the Public Suffix List (the `psl` crate, compiled in
//! and updated with the crate), unless the operator names a validation domain in
//! `dcv_domains` (a private suffix, or a delegated `dept.example.edu` with its own
//! validation in SCM). All subdomains of one validation domain share one DCV run.

use super::config::normalize_suffix;

/// The operator's overrides and the Public Suffix List, as one lookup.
#[derive(Debug, Clone, Default)]
pub struct ValidationDomains {
    /// Normalised `dcv_domains`, longest first so the most specific entry wins.
    overrides: Vec<String>,
}

impl ValidationDomains {
    /// From the configured `dcv_domains`.
    pub fn new(overrides: &[String]) -> Self {
        let mut overrides: Vec<String> = overrides.iter().map(|d| normalize_suffix(d)).collect();
        overrides.sort_by_key(|d| std::cmp::Reverse(d.len()));
        overrides.dedup();
        Self { overrides }
    }

    /// The name to validate for `domain` (lower-case A-label form, no trailing dot): the
    /// longest `dcv_domains` entry it equals or ends in, else its registrable domain, else
    /// the name itself (a bare public suffix or a single label, which SCM would refuse
    /// anyway: the refusal is then shown, not hidden).
    pub fn for_domain(&self, domain: &str) -> String {
        let name = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(o) = self
            .overrides
            .iter()
            .find(|o| name == **o || name.ends_with(&format!(".{o}")))
        {
            return o.clone();
        }
        psl::domain_str(&name).unwrap_or(&name).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_validate_at_their_registrable_domain() {
        let v = ValidationDomains::new(&[]);
        assert_eq!(v.for_domain("www.kth.se"), "kth.se");
        assert_eq!(v.for_domain("kth.se"), "kth.se");
        assert_eq!(v.for_domain("a.b.dept.example.edu."), "example.edu");
        assert_eq!(v.for_domain("www.ox.ac.uk"), "ox.ac.uk");
        assert_eq!(v.for_domain("WWW.Example.COM"), "example.com");
    }

    #[test]
    fn the_longest_override_wins() {
        let v = ValidationDomains::new(&["example.edu".into(), "*.Dept.Example.EDU.".into()]);
        assert_eq!(v.for_domain("www.dept.example.edu"), "dept.example.edu");
        assert_eq!(v.for_domain("dept.example.edu"), "dept.example.edu");
        assert_eq!(v.for_domain("www.other.example.edu"), "example.edu");
        // "xdept.example.edu" does not end in ".dept.example.edu".
        assert_eq!(v.for_domain("xdept.example.edu"), "example.edu");
    }
}
