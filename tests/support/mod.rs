//! The one test kit: a server harness (in-process, or the binary as a child process with a
//! start-up timeout), one line client with [`client::list_all`], [`wait::wait_until`] for
//! polling with a deadline, simulators of Sectigo and an SMTP relay, the shell-script
//! helpers, and whole listings of the store ([`store`]).
#![allow(dead_code)] // each test binary uses a different part of the support code

pub mod acme_setup;
pub mod admin;
pub mod bridge_setup;
pub mod client;
pub mod pebble;
pub mod postgres;
pub mod scm_sim;
pub mod scripts;
pub mod server;
pub mod smtp_sink;
pub mod store;
pub mod tcp_proxy;
pub mod wait;
