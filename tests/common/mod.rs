#![allow(dead_code)]
pub mod acceptance;
pub mod faults;
pub mod stress;
pub mod testbed;
pub mod worker;
