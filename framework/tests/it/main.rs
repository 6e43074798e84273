//! End-to-end tests of the `framework` binary, linked once.

mod bad_input;
mod common;
mod concurrent;
mod crash;
mod dags;
mod gateway;
mod gold;
mod kafka;
mod lake;
mod modes;
mod nested;
mod pii;
mod quality;
mod s3;
mod validate;
