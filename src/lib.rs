//! certline: a KeyChest-compatible TCP line-protocol registration server that bridges
//! registered domains into Sectigo Certificate Manager.

pub mod bridge;
