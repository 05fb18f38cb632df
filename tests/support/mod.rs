//! Shared test support: a server harness (in-process and as a child process) and a line client.
#![allow(dead_code)] // each test binary uses a different part of the support code

pub mod acme_setup;
pub mod admin;
pub mod bridge_setup;
pub mod client;
pub mod scm_sim;
pub mod server;
pub mod smtp_sink;
