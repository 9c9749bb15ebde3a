//! Bench modules.

pub mod data;
