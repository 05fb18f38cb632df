//! The wire format of the line protocol, with no I/O: bytes → request lines ([`frame`]),
//! a line → a typed [`Request`] ([`parse`]), and a [`Reply`] → at most 1000 bytes ([`reply`]).
//!
//! `protocol.md` at the project root is the contract; the doc comments here point into it.

pub mod frame;
pub mod parse;
pub mod reply;

pub use frame::{Frame, LineFramer};
pub use parse::{ParseError, Request, parse_request};
pub use reply::{ErrorCode, MAX_REPLY_BYTES, Reply};
