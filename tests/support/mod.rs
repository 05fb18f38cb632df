//! Shared test support: servers and fakes that integration tests run against.

pub mod scm_sim;
