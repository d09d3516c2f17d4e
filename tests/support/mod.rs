//! Test support shared by the test binaries.
#![allow(dead_code, unreachable_pub)]

pub mod fake;
