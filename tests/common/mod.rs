#![allow(dead_code)]
pub mod stress;
pub mod testbed;
pub mod worker;
