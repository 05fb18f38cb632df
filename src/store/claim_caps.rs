//! The claim caps, the KeyChest way (reference/keychest.md §2): how many unconfirmed keys one
//! e-mail address may hold, and how many new addresses one source address may claim a day.
//!
//! The caps exist because `claim` lets anyone tie any address to a key: without them one
//! host could make certline mail thousands of confirmation messages to a victim, or mint
//! thousands of dormant identities. Every backend enforces them inside the claim's own
//! write, so concurrent claims cannot spend one allowance twice.

/// The claim caps (`[claims]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimCaps {
    /// Keys claimed by one address that are neither confirmed nor revoked.
    pub max_unconfirmed_keys_per_email: u32,
    /// Addresses never seen before, claimed from one source address in one UTC day.
    pub max_new_emails_per_address_per_day: u32,
}

impl Default for ClaimCaps {
    /// KeyChest's numbers: 100 unconfirmed keys per user, 5 new accounts per IP and day.
    fn default() -> Self {
        Self {
            max_unconfirmed_keys_per_email: 100,
            max_new_emails_per_address_per_day: 5,
        }
    }
}

/// Which cap refused a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    /// The address already holds the maximum of unconfirmed keys.
    UnconfirmedKeys,
    /// The source address claimed the maximum of new addresses today.
    NewEmails,
}
