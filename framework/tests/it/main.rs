//! End-to-end tests of the `framework` binary, linked once.

mod common;
mod crash;
mod dags;
mod gold;
mod kafka;
mod lake;
mod quality;
mod s3;
mod validate;
