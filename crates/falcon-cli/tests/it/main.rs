//! The `falcon` binary's integration tests, as one test binary so the shared harness in
//! `common` compiles once: the real binary on real sockets, with throwaway Redis, Postgres,
//! nginx and Prometheus where a test needs them.

mod abuse;
mod api;
mod bench;
mod common;
mod connections;
mod deploy;
mod docs;
mod doctor;
mod drills;
mod lifecycle;
mod load;
mod minilm;
mod models;
mod observability;
mod openapi;
mod postgres;
mod redis;
mod request_log;
mod retention;
mod runbook;
mod stack;
mod train;
mod triton;
mod worker;
