//! Bench modules, one per topic.

pub mod data;
pub mod loss;
pub mod model;
pub mod search;
